
/*
 * libFuzzer target for ngx_ahava_core/ngx_ahava_jwt.c: arbitrary bytes as a
 * Bearer token, against a pinned HS256 key, plus ngx_ahava_id.c.  It builds
 * against the nginx headers of the module build (build/), with the few
 * nginx runtime functions the two files call provided below.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_ahava_core.h"

#include <jwt.h>


static ngx_time_t  fuzz_time;

volatile ngx_time_t  *ngx_cached_time = &fuzz_time;


void *
ngx_alloc(size_t size, ngx_log_t *log)
{
    return malloc(size);
}


/* ngx_ahava_id.c's time formatting is linked, never called here */
void
ngx_gmtime(time_t t, ngx_tm_t *tp)
{
    abort();
}


u_char *
ngx_sprintf(u_char *buf, const char *fmt, ...)
{
    abort();
}


/* the verification logs only failures of OpenSSL itself */
void
ngx_log_error_core(ngx_uint_t level, ngx_log_t *log, ngx_err_t err,
    const char *fmt, ...)
{
}


/* RFC 4648 §5 without padding, as nginx's ngx_decode_base64url() */

ngx_int_t
ngx_decode_base64url(ngx_str_t *dst, ngx_str_t *src)
{
    size_t   i, len;
    u_char  *d, c;
    int      v, bits;
    uint32_t acc;

    d = dst->data;
    len = src->len;
    acc = 0;
    bits = 0;

    if (len % 4 == 1) {
        return NGX_ERROR;
    }

    for (i = 0; i < len; i++) {
        c = src->data[i];

        if (c >= 'A' && c <= 'Z') {
            v = c - 'A';

        } else if (c >= 'a' && c <= 'z') {
            v = c - 'a' + 26;

        } else if (c >= '0' && c <= '9') {
            v = c - '0' + 52;

        } else if (c == '-') {
            v = 62;

        } else if (c == '_') {
            v = 63;

        } else {
            return NGX_ERROR;
        }

        acc = (acc << 6) | (uint32_t) v;
        bits += 6;

        if (bits >= 8) {
            bits -= 8;
            *d++ = (u_char) (acc >> bits);
        }
    }

    dst->len = d - dst->data;

    return NGX_OK;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                 uid[NGX_AHAVA_ID_MAX_LEN], *copy;
    ngx_str_t              token, user_id;
    const char            *reason;
    ngx_ahava_main_conf_t  amcf;

    fuzz_time.sec = 1800000000;

    ngx_memzero(&amcf, sizeof(ngx_ahava_main_conf_t));
    ngx_str_set(&amcf.jwt_alg_name, "HS256");
    amcf.jwt_alg = JWT_ALG_HS256;
    ngx_str_set(&amcf.jwt_key, "fuzz-secret");

    /* an exact-size copy, so ASan sees any read past the token */
    copy = malloc(size ? size : 1);
    if (copy == NULL) {
        return 0;
    }

    ngx_memcpy(copy, data, size);

    token.data = copy;
    token.len = size;
    user_id.data = uid;
    user_id.len = 0;

    if (ngx_ahava_jwt_verify(&amcf, &token, &user_id, NULL, &reason)
        == NGX_AHAVA_JWT_OK)
    {
        /* whatever got through is a valid id */
        if (ngx_ahava_valid_id(user_id.data, user_id.len) != NGX_OK) {
            abort();
        }
    }

    (void) ngx_ahava_valid_id(copy, size);

    free(copy);

    return 0;
}
