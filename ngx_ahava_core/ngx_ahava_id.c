
/*
 * Ids (SPEC §2, §4): what a valid one looks like, and new ones in the
 * Node app's cuid shape.
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
    u_char      rnd[16];
    uint64_t    t;
    ngx_uint_t  i;
    ngx_time_t *tp;

    static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";

    tp = ngx_timeofday();
    t = (uint64_t) tp->sec * 1000 + tp->msec;

    id[0] = 'c';

    for (i = 8; i > 0; i--) {
        id[i] = digits[t % 36];
        t /= 36;
    }

    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        for (i = 0; i < sizeof(rnd); i++) {
            rnd[i] = (u_char) ngx_random();
        }
    }

    for (i = 0; i < 16; i++) {
        /* 252 = 7 * 36: the modulo stays uniform enough for ids */
        id[9 + i] = digits[rnd[i] % 36];
    }
}
