
/*
 * Copyright (C) Ahava
 *
 * A thin CLI around ngx_ahava_crypto for the Node interop test:
 *
 *     crypto_cli enc <b64key>              plaintext on stdin -> text + "\n"
 *     crypto_cli dec <b64key> [oldkey...]  text on stdin -> plaintext bytes
 *
 * dec drops one trailing newline from stdin (echo/pipes add one), prints the
 * plaintext exactly, and exits 1 if decryption fails, 2 on usage errors.
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_ahava_crypto.h"


static u_char *
read_all(FILE *f, size_t *len)
{
    size_t   n, size;
    u_char  *buf, *p;

    size = 65536;
    *len = 0;

    buf = malloc(size);
    if (buf == NULL) {
        return NULL;
    }

    for ( ;; ) {
        n = fread(buf + *len, 1, size - *len, f);
        *len += n;

        if (n == 0) {
            break;
        }

        if (*len == size) {
            size *= 2;

            p = realloc(buf, size);
            if (p == NULL) {
                free(buf);
                return NULL;
            }

            buf = p;
        }
    }

    if (ferror(f)) {
        free(buf);
        return NULL;
    }

    return buf;
}


int
main(int argc, char **argv)
{
    int            i, rc, nkeys;
    size_t         len, n;
    u_char        *in, *out;
    const u_char  *keyp[16];
    u_char         keys[16][NGX_AHAVA_KEY_LEN];

    if (argc < 3 || (strcmp(argv[1], "enc") != 0 && strcmp(argv[1], "dec") != 0)
        || (strcmp(argv[1], "enc") == 0 && argc != 3) || argc - 2 > 16)
    {
        fprintf(stderr, "usage: %s enc <b64key>\n"
                        "       %s dec <b64key> [oldkey...]\n",
                argv[0], argv[0]);
        return 2;
    }

    nkeys = argc - 2;

    for (i = 0; i < nkeys; i++) {
        if (ngx_ahava_crypto_key_decode((u_char *) argv[i + 2],
                                        strlen(argv[i + 2]), keys[i])
            != 0)
        {
            fprintf(stderr, "key %d: not base64 of 32 bytes\n", i + 1);
            return 2;
        }

        keyp[i] = keys[i];
    }

    in = read_all(stdin, &len);
    if (in == NULL) {
        perror("stdin");
        return 2;
    }

    rc = 0;

    if (strcmp(argv[1], "enc") == 0) {
        n = ngx_ahava_crypto_encrypted_len(len);

        out = malloc(n + 1);
        if (out == NULL
            || ngx_ahava_crypto_encrypt(keys[0], in, len, out, &n) != 0)
        {
            fprintf(stderr, "encryption failed\n");
            rc = 1;
            goto done;
        }

        out[n++] = '\n';

    } else {
        if (len && in[len - 1] == '\n') {
            len--;

            if (len && in[len - 1] == '\r') {
                len--;
            }
        }

        out = malloc(ngx_ahava_crypto_decrypted_max_len(len) + 1);
        if (out == NULL) {
            rc = 2;
            goto done;
        }

        if (ngx_ahava_crypto_decrypt(keyp, nkeys, in, len, out, &n) != 0) {
            fprintf(stderr, "decryption failed\n");
            rc = 1;
            goto done;
        }
    }

    if (fwrite(out, 1, n, stdout) != n || fflush(stdout) != 0) {
        perror("stdout");
        rc = 2;
    }

done:

    free(in);
    free(out);

    return rc;
}
