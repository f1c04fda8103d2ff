
/*
 * Ids (SPEC §2, §4): what a valid one looks like, and new ones in the
 * Node app's cuid shape; times as the API shows them.
 */


#include "ngx_ahava_core.h"

#include <openssl/rand.h>


/* SPEC §4: ids are 1-64 characters of [A-Za-z0-9_-] */

ngx_int_t
ngx_ahava_valid_id(u_char *p, size_t len)
{
    size_t  i;

    if (len == 0 || len > NGX_AHAVA_ID_MAX_LEN) {
        return NGX_ERROR;
    }

    for (i = 0; i < len; i++) {
        if (!((p[i] >= 'A' && p[i] <= 'Z') || (p[i] >= 'a' && p[i] <= 'z')
              || (p[i] >= '0' && p[i] <= '9') || p[i] == '_' || p[i] == '-'))
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * A 25-character lowercase id starting with 'c' (the Node app's cuid
 * shape): 8 base-36 digits of the time in ms, then 16 random ones.
 */

void
ngx_ahava_id_generate(u_char *id)
{
    u_char       rnd[32];
    uint64_t     t;
    ngx_uint_t   i, n;
    ngx_time_t  *tp;

    static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";

    tp = ngx_timeofday();
    t = (uint64_t) tp->sec * 1000 + tp->msec;

    id[0] = 'c';

    for (i = 8; i > 0; i--) {
        id[i] = digits[t % 36];
        t /= 36;
    }

    /*
     * 16 uniform base-36 digits: random bytes of 252 or more (252 = 7 * 36)
     * are rejected, so every digit is equally likely
     */

    i = 0;

    while (i < 16) {
        if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
            for (n = 0; n < sizeof(rnd); n++) {
                rnd[n] = (u_char) ngx_random();
            }
        }

        for (n = 0; n < sizeof(rnd) && i < 16; n++) {
            if (rnd[n] < 252) {
                id[9 + i++] = digits[rnd[n] % 36];
            }
        }
    }
}


/*
 * A stored file's name: <13 digits of ms>-<24 hex>.<1-4 lowercase letters>
 * (ngx_ahava_upload_module.c makes them); nothing else ever names a file.
 */

ngx_int_t
ngx_ahava_valid_file_name(u_char *n, size_t len)
{
    size_t  i;

    if (len < 40 || len > 13 + 1 + 24 + 1 + 4) {
        return NGX_ERROR;
    }

    for (i = 0; i < len; i++) {
        if (i < 13 ? !(n[i] >= '0' && n[i] <= '9')
            : i == 13 ? n[i] != '-'
            : i < 38 ? !((n[i] >= '0' && n[i] <= '9')
                         || (n[i] >= 'a' && n[i] <= 'f'))
            : i == 38 ? n[i] != '.'
            : !(n[i] >= 'a' && n[i] <= 'z'))
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* /uploads/{images|documents}/<name>: its stored path, "images/<name>" */

ngx_int_t
ngx_ahava_upload_url(u_char *url, size_t len, ngx_str_t *stored)
{
    size_t      dir;
    ngx_uint_t  i;

    static const char  *dirs[] = { "images/", "documents/" };

    if (len < sizeof("/uploads/") - 1
        || ngx_strncmp(url, "/uploads/", sizeof("/uploads/") - 1) != 0)
    {
        return NGX_ERROR;
    }

    url += sizeof("/uploads/") - 1;
    len -= sizeof("/uploads/") - 1;

    for (i = 0; i < 2; i++) {
        dir = ngx_strlen(dirs[i]);

        if (len > dir && ngx_strncmp(url, dirs[i], dir) == 0
            && ngx_ahava_valid_file_name(url + dir, len - dir) == NGX_OK)
        {
            stored->data = url;
            stored->len = len;
            return NGX_OK;
        }
    }

    return NGX_ERROR;
}


/* ISO-8601 UTC with milliseconds, as every answer shows times */

u_char *
ngx_ahava_iso_time(u_char *buf)
{
    ngx_tm_t     tm;
    ngx_time_t  *tp;

    tp = ngx_timeofday();
    ngx_gmtime(tp->sec, &tm);

    return ngx_sprintf(buf, "%4d-%02d-%02dT%02d:%02d:%02d.%03MZ",
                       tm.ngx_tm_year, tm.ngx_tm_mon, tm.ngx_tm_mday,
                       tm.ngx_tm_hour, tm.ngx_tm_min, tm.ngx_tm_sec,
                       tp->msec);
}
