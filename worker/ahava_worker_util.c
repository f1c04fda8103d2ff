
/*
 * Copyright (C) Ahava
 */


/*
 * Small pieces every processor needs, once: ids as SPEC §4 has them, random
 * hex for names and tokens, mkdir -p.
 */


#include "ahava_worker.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/rand.h>


/* SPEC §4: 1-64 of [A-Za-z0-9_-]; safe in a file name and an array literal */
int
ahava_valid_id(const char *s)
{
    size_t  i;

    if (s == NULL) {
        return 0;
    }

    for (i = 0; s[i]; i++) {
        if (i == 64) {
            return 0;
        }

        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z')
              || (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-'))
        {
            return 0;
        }
    }

    return i > 0;
}


/* out must hold 2 * nbytes + 1 characters; nbytes <= 32 */
int
ahava_random_hex(char *out, size_t nbytes)
{
    size_t  i;
    u_char  buf[32];

    if (nbytes > sizeof(buf) || RAND_bytes(buf, (int) nbytes) != 1) {
        return -1;
    }

    for (i = 0; i < nbytes; i++) {
        out[2 * i] = "0123456789abcdef"[buf[i] >> 4];
        out[2 * i + 1] = "0123456789abcdef"[buf[i] & 0x0f];
    }

    out[2 * nbytes] = '\0';

    return 0;
}


/* mkdir -p, 0755: 0 or -1 with errno */
int
ahava_mkdirs(const char *dir)
{
    char    *path, *p;
    int      rc;

    path = strdup(dir);
    if (path == NULL) {
        return -1;
    }

    rc = 0;

    for (p = path + 1; rc == 0; p++) {
        if (*p != '/' && *p != '\0') {
            continue;
        }

        if (p[-1] != '/') {
            char  c = *p;

            *p = '\0';
            if (mkdir(path, 0755) != 0 && errno != EEXIST) {
                rc = -1;
            }
            *p = c;
        }

        if (*p == '\0') {
            break;
        }
    }

    free(path);

    return rc;
}
