
/*
 * Copyright (C) Ahava
 *
 * Strict UTF-8 validation (RFC 3629: no overlongs, no surrogates, nothing
 * above U+10FFFF), incremental so that text arriving in pieces — WebSocket
 * fragments, uploaded files, decrypted fields — is judged as it streams and
 * refused on its first impossible byte.  No nginx dependency: the parsers
 * of raw bytes that use it are unit-tested and fuzzed on their own.
 */


#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ngx_ahava_utf8.h"


void
ngx_ahava_utf8_init(ngx_ahava_utf8_t *u)
{
    u->need = 0;
    u->lo = 0x80;
    u->hi = 0xbf;
    u->bad = 0;
}


int
ngx_ahava_utf8_feed(ngx_ahava_utf8_t *u, const unsigned char *p,
    size_t n)
{
    uint64_t              w;
    unsigned char         c, need, lo, hi;
    const unsigned char  *end;

    if (u->bad) {
        return -1;
    }

    end = p + n;
    need = u->need;
    lo = u->lo;
    hi = u->hi;

    while (p < end) {

        if (need == 0) {

            /* ASCII runs, the common case of JSON text, 8 bytes a step */

            while (end - p >= 8) {
                memcpy(&w, p, 8);

                if (w & 0x8080808080808080ULL) {
                    break;
                }

                p += 8;
            }

            if (p == end) {
                break;
            }
        }

        c = *p++;

        if (need) {
            if (c < lo || c > hi) {
                goto invalid;
            }

            need--;
            lo = 0x80;
            hi = 0xbf;
            continue;
        }

        if (c < 0x80) {
            continue;
        }

        /*
         * The lead byte fixes how many continuation bytes follow and, for
         * E0, ED, F0 and F4, narrows the range of the first one: that is
         * what rules out overlongs, surrogates and > U+10FFFF at once.
         */

        if (c < 0xc2) {
            goto invalid;       /* a continuation, or overlong C0, C1 */
        }

        if (c < 0xe0) {
            need = 1;
            continue;
        }

        if (c < 0xf0) {
            need = 2;
            lo = (c == 0xe0) ? 0xa0 : 0x80;
            hi = (c == 0xed) ? 0x9f : 0xbf;
            continue;
        }

        if (c < 0xf5) {
            need = 3;
            lo = (c == 0xf0) ? 0x90 : 0x80;
            hi = (c == 0xf4) ? 0x8f : 0xbf;
            continue;
        }

        goto invalid;
    }

    u->need = need;
    u->lo = lo;
    u->hi = hi;

    return 0;

invalid:

    u->bad = 1;

    return -1;
}


int
ngx_ahava_utf8_finished(const ngx_ahava_utf8_t *u)
{
    return !u->bad && u->need == 0;
}


int
ngx_ahava_utf8_valid(const unsigned char *p, size_t n)
{
    ngx_ahava_utf8_t  u;

    ngx_ahava_utf8_init(&u);

    return ngx_ahava_utf8_feed(&u, p, n) == 0
           && ngx_ahava_utf8_finished(&u);
}
