
/*
 * Copyright (C) Ahava
 *
 * libFuzzer target: arbitrary bytes as a stored ciphertext value (with a
 * current and an old key, as in key rotation), as a key, and as a plaintext
 * that must survive a round trip.  Beyond the sanitizers it checks the
 * contract: success stays inside decrypted_max_len(), failure leaves the
 * output zeroed.
 *
 * The seeds written by fuzz/Makefile are valid values under these keys
 * (made by Node), so mutations reach the authentication step.
 */


#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_ahava_crypto.h"


/* bytes 0..31 and 32..63: base64 in fuzz/Makefile's seed values */

static const u_char  key_current[NGX_AHAVA_KEY_LEN] = {
     0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14, 15,
    16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31
};

static const u_char  key_old[NGX_AHAVA_KEY_LEN] = {
    32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47,
    48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63
};


static void
check_decrypt(const u_char *const *keys, const uint8_t *data, size_t size,
    const uint8_t *expect, size_t expect_len)
{
    int      rc;
    size_t   i, n, max;
    u_char  *out;

    max = ngx_ahava_crypto_decrypted_max_len(size);

    /* exactly the promised size, so ASan flags any write past it */
    out = malloc(max ? max : 1);
    if (out == NULL) {
        abort();
    }

    memset(out, 0xa5, max);
    n = (size_t) -1;

    rc = ngx_ahava_crypto_decrypt(keys, 2, data, size, out, &n);

    if (rc == 0) {
        if (n > max) {
            __builtin_trap();
        }

        if (expect != NULL
            && (n != expect_len || memcmp(out, expect, n) != 0))
        {
            __builtin_trap();
        }

    } else {
        if (rc != -1 || n != 0 || expect != NULL) {
            __builtin_trap();
        }

        for (i = 0; i < max; i++) {
            if (out[i] != 0) {
                __builtin_trap();
            }
        }
    }

    free(out);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t         n, len;
    u_char        *ct;
    const u_char  *keys[2];
    u_char         key[NGX_AHAVA_KEY_LEN];

    keys[0] = key_current;
    keys[1] = key_old;

    check_decrypt(keys, data, size, NULL, 0);

    (void) ngx_ahava_crypto_key_decode(data, size, key);

    /* the same bytes as plaintext, under the old key: rotation must work */

    len = ngx_ahava_crypto_encrypted_len(size);

    ct = malloc(len);
    if (ct == NULL) {
        abort();
    }

    if (ngx_ahava_crypto_encrypt(key_old, data, size, ct, &n) != 0
        || n != len)
    {
        __builtin_trap();
    }

    check_decrypt(keys, ct, n, data, size);

    free(ct);

    return 0;
}
