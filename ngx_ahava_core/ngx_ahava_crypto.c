
/*
 * Copyright (C) Ahava
 */


#include <stddef.h>
#include <string.h>
#include <sys/types.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "ngx_ahava_crypto.h"


#define NGX_AHAVA_IV_LEN         12
#define NGX_AHAVA_LEGACY_IV_LEN  16
#define NGX_AHAVA_TAG_LEN        16

#define NGX_AHAVA_V2_PREFIX      "v2:"
#define NGX_AHAVA_V2_PREFIX_LEN  3
#define NGX_AHAVA_IV_B64_LEN     16
#define NGX_AHAVA_TAG_B64_LEN    24

/* "v2:" <iv b64> ":" <tag b64> ":" */
#define NGX_AHAVA_V2_HEADER_LEN                                               \
    (NGX_AHAVA_V2_PREFIX_LEN + NGX_AHAVA_IV_B64_LEN + 1                       \
     + NGX_AHAVA_TAG_B64_LEN + 1)

/*
 * Bytes put through the cipher per step.  A multiple of 3, so that every
 * chunk but the last base64-encodes without padding, and small enough that
 * the int lengths of the EVP API can never overflow.
 */
#define NGX_AHAVA_CHUNK          1536

#define NGX_AHAVA_SIZE_MAX       ((size_t) -1)


static u_char *ngx_ahava_b64_encode(u_char *dst, const u_char *src,
    size_t len);
static int ngx_ahava_b64_value(u_char c);
static EVP_CIPHER_CTX *ngx_ahava_crypto_ctx(int enc);


/*
 * nginx's workers are single-threaded; ahava-worker's threads each get
 * their own cipher and contexts (NGX_AHAVA_CRYPTO_THREADS), freed by
 * ngx_ahava_crypto_thread_done() when the thread ends.
 */
#ifdef NGX_AHAVA_CRYPTO_THREADS
#define NGX_AHAVA_CRYPTO_LOCAL  __thread
#else
#define NGX_AHAVA_CRYPTO_LOCAL
#endif

static NGX_AHAVA_CRYPTO_LOCAL EVP_CIPHER      *ngx_ahava_gcm;
static NGX_AHAVA_CRYPTO_LOCAL EVP_CIPHER_CTX  *ngx_ahava_ctx[2];
static int ngx_ahava_b64_decode(u_char *dst, const u_char *src, size_t len,
    size_t *dst_len);
static int ngx_ahava_hex_value(u_char c);
static int ngx_ahava_hex_decode(u_char *dst, const u_char *src, size_t len,
    size_t *dst_len);
static int ngx_ahava_decode_exact(u_char *dst, const u_char *src, size_t len,
    int hex, size_t want);
static int ngx_ahava_crypto_open(const u_char *key, const u_char *iv,
    size_t iv_len, const u_char *tag, const u_char *src, size_t len, int hex,
    u_char *out, size_t *out_len);


int
ngx_ahava_crypto_key_decode(const u_char *b64, size_t len,
    u_char key[NGX_AHAVA_KEY_LEN])
{
    size_t  n;

    if (b64 == NULL) {
        return -1;
    }

    /* key files usually end with a newline; env values may carry blanks */

    while (len && (*b64 == ' ' || *b64 == '\t' || *b64 == '\r'
                   || *b64 == '\n'))
    {
        b64++;
        len--;
    }

    while (len && (b64[len - 1] == ' ' || b64[len - 1] == '\t'
                   || b64[len - 1] == '\r' || b64[len - 1] == '\n'))
    {
        len--;
    }

    /* validate first: 44 characters without padding would be 33 bytes */

    if (ngx_ahava_b64_decode(NULL, b64, len, &n) != 0
        || n != NGX_AHAVA_KEY_LEN)
    {
        return -1;
    }

    return ngx_ahava_b64_decode(key, b64, len, &n);
}


size_t
ngx_ahava_crypto_encrypted_len(size_t plain_len)
{
    size_t  groups;

    groups = plain_len / 3 + (plain_len % 3 != 0);

    if (groups > (NGX_AHAVA_SIZE_MAX - NGX_AHAVA_V2_HEADER_LEN) / 4) {
        return 0;
    }

    return NGX_AHAVA_V2_HEADER_LEN + groups * 4;
}


int
ngx_ahava_crypto_encrypt(const u_char *key, const u_char *plain, size_t len,
    u_char *out, size_t *out_len)
{
    int              n, rc;
    size_t           total, chunk, off;
    u_char          *p;
    EVP_CIPHER_CTX  *ctx;
    u_char           iv[NGX_AHAVA_IV_LEN], tag[NGX_AHAVA_TAG_LEN];
    u_char           buf[NGX_AHAVA_CHUNK];

    *out_len = 0;

    total = ngx_ahava_crypto_encrypted_len(len);

    if (total == 0 || key == NULL || out == NULL
        || (plain == NULL && len != 0))
    {
        return -1;
    }

    /* a repeated IV under one key breaks GCM, so no fallback PRNG here */

    if (RAND_bytes(iv, NGX_AHAVA_IV_LEN) != 1) {
        return -1;
    }

    ctx = ngx_ahava_crypto_ctx(1);
    if (ctx == NULL) {
        return -1;
    }

    rc = -1;

    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, NGX_AHAVA_IV_LEN,
                               NULL) != 1
        || EVP_EncryptInit_ex(ctx, NULL, NULL, key, iv) != 1)
    {
        goto done;
    }

    /* the ciphertext goes after the fixed-size header, written last */

    p = out + NGX_AHAVA_V2_HEADER_LEN;

    for (off = 0; off < len; off += chunk) {
        chunk = len - off < NGX_AHAVA_CHUNK ? len - off : NGX_AHAVA_CHUNK;

        if (EVP_EncryptUpdate(ctx, buf, &n, plain + off, (int) chunk) != 1) {
            goto done;
        }

        /* GCM is a stream mode; anything else would misalign the base64 */

        if ((size_t) n != chunk) {
            goto done;
        }

        p = ngx_ahava_b64_encode(p, buf, chunk);
    }

    if (EVP_EncryptFinal_ex(ctx, buf, &n) != 1 || n != 0
        || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, NGX_AHAVA_TAG_LEN,
                               tag) != 1)
    {
        goto done;
    }

    if ((size_t) (p - out) != total) {
        goto done;
    }

    p = out;
    memcpy(p, NGX_AHAVA_V2_PREFIX, NGX_AHAVA_V2_PREFIX_LEN);
    p += NGX_AHAVA_V2_PREFIX_LEN;
    p = ngx_ahava_b64_encode(p, iv, NGX_AHAVA_IV_LEN);
    *p++ = ':';
    p = ngx_ahava_b64_encode(p, tag, NGX_AHAVA_TAG_LEN);
    *p++ = ':';

    *out_len = total;
    rc = 0;

done:

    /* buf only ever held ciphertext, but it is cheap to be tidy */
    OPENSSL_cleanse(buf, sizeof(buf));

    return rc;
}


size_t
ngx_ahava_crypto_decrypted_max_len(size_t ct_len)
{
    /*
     * Decoded bytes never outnumber the text that encodes them, and
     * returning the length itself cannot overflow.
     */

    return ct_len;
}


int
ngx_ahava_crypto_decrypt(const u_char *const *keys, size_t nkeys,
    const u_char *in, size_t len, u_char *out, size_t *out_len)
{
    int            hex;
    size_t         i, n, iv_len, ct_len;
    const u_char  *p, *last, *c1, *c2;
    u_char         iv[NGX_AHAVA_LEGACY_IV_LEN], tag[NGX_AHAVA_TAG_LEN];

    *out_len = 0;

    if (keys == NULL || in == NULL || out == NULL) {
        goto failed;
    }

    last = in + len;

    if (len >= NGX_AHAVA_V2_PREFIX_LEN
        && memcmp(in, NGX_AHAVA_V2_PREFIX, NGX_AHAVA_V2_PREFIX_LEN) == 0)
    {
        hex = 0;
        p = in + NGX_AHAVA_V2_PREFIX_LEN;

    } else {
        hex = 1;
        p = in;
    }

    /* exactly three parts: neither alphabet contains ':' */

    c1 = memchr(p, ':', last - p);
    if (c1 == NULL) {
        goto failed;
    }

    c2 = memchr(c1 + 1, ':', last - (c1 + 1));
    if (c2 == NULL) {
        goto failed;
    }

    if (memchr(c2 + 1, ':', last - (c2 + 1)) != NULL) {
        goto failed;
    }

    if (hex) {
        /* older Node code used 16-byte IVs; GCM hashes them into a J0 */

        iv_len = (c1 - p) / 2;

        if (iv_len != NGX_AHAVA_IV_LEN && iv_len != NGX_AHAVA_LEGACY_IV_LEN) {
            goto failed;
        }

        if (ngx_ahava_decode_exact(iv, p, c1 - p, 1, iv_len) != 0
            || ngx_ahava_decode_exact(tag, c1 + 1, c2 - (c1 + 1), 1,
                                      NGX_AHAVA_TAG_LEN) != 0
            || ngx_ahava_hex_decode(NULL, c2 + 1, last - (c2 + 1), &ct_len)
               != 0)
        {
            goto failed;
        }

    } else {
        iv_len = NGX_AHAVA_IV_LEN;

        if (ngx_ahava_decode_exact(iv, p, c1 - p, 0, iv_len) != 0
            || ngx_ahava_decode_exact(tag, c1 + 1, c2 - (c1 + 1), 0,
                                      NGX_AHAVA_TAG_LEN) != 0
            || ngx_ahava_b64_decode(NULL, c2 + 1, last - (c2 + 1), &ct_len)
               != 0)
        {
            goto failed;
        }
    }

    for (i = 0; i < nkeys; i++) {
        if (keys[i] == NULL) {
            continue;
        }

        if (ngx_ahava_crypto_open(keys[i], iv, iv_len, tag, c2 + 1,
                                  last - (c2 + 1), hex, out, &n)
            == 0)
        {
            *out_len = n;
            return 0;
        }
    }

failed:

    /* a wrong key or a forgery still wrote unauthenticated bytes */

    if (out != NULL) {
        memset(out, 0, ngx_ahava_crypto_decrypted_max_len(len));
    }

    return -1;
}


static int
ngx_ahava_crypto_open(const u_char *key, const u_char *iv, size_t iv_len,
    const u_char *tag, const u_char *src, size_t len, int hex, u_char *out,
    size_t *out_len)
{
    int              n, rc;
    size_t           step, chunk, raw;
    u_char          *o;
    const u_char    *p, *last;
    EVP_CIPHER_CTX  *ctx;
    u_char           tagbuf[NGX_AHAVA_TAG_LEN];
    u_char           buf[NGX_AHAVA_CHUNK];

    ctx = ngx_ahava_crypto_ctx(0);
    if (ctx == NULL) {
        return -1;
    }

    rc = -1;

    /* EVP_CTRL_AEAD_SET_TAG takes a non-const pointer */
    memcpy(tagbuf, tag, NGX_AHAVA_TAG_LEN);

    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, (int) iv_len,
                               NULL) != 1
        || EVP_DecryptInit_ex(ctx, NULL, NULL, key, iv) != 1
        || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, NGX_AHAVA_TAG_LEN,
                               tagbuf) != 1)
    {
        goto done;
    }

    /*
     * Decode the text a chunk at a time, whole groups per chunk, so that the
     * ciphertext stays intact in the caller's input for the next key.
     */

    step = hex ? 2 * NGX_AHAVA_CHUNK : NGX_AHAVA_CHUNK / 3 * 4;
    o = out;

    for (p = src, last = src + len; p < last; p += chunk) {
        chunk = (size_t) (last - p) < step ? (size_t) (last - p) : step;

        if (hex) {
            if (ngx_ahava_hex_decode(buf, p, chunk, &raw) != 0) {
                goto done;
            }

        } else {
            if (ngx_ahava_b64_decode(buf, p, chunk, &raw) != 0) {
                goto done;
            }
        }

        if (EVP_DecryptUpdate(ctx, o, &n, buf, (int) raw) != 1) {
            goto done;
        }

        o += n;
    }

    if (EVP_DecryptFinal_ex(ctx, o, &n) != 1) {
        goto done;
    }

    o += n;

    *out_len = o - out;
    rc = 0;

done:

    return rc;
}


/*
 * The cipher is fetched once and a context per direction kept for the
 * process (workers are single-threaded): OpenSSL 3 would otherwise look the
 * algorithm up, under a lock, and allocate a context for every field.
 * Each use sets its own IV length, key and IV, and the tag is checked by
 * EVP_DecryptFinal_ex, so nothing of one use reaches the next.
 */

static EVP_CIPHER_CTX *
ngx_ahava_crypto_ctx(int enc)
{
    if (ngx_ahava_gcm == NULL) {
        ngx_ahava_gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
        if (ngx_ahava_gcm == NULL) {
            return NULL;
        }
    }

    if (ngx_ahava_ctx[enc] == NULL) {
        ngx_ahava_ctx[enc] = EVP_CIPHER_CTX_new();
        if (ngx_ahava_ctx[enc] == NULL) {
            return NULL;
        }

        if (EVP_CipherInit_ex(ngx_ahava_ctx[enc], ngx_ahava_gcm, NULL, NULL,
                              NULL, enc)
            != 1)
        {
            EVP_CIPHER_CTX_free(ngx_ahava_ctx[enc]);
            ngx_ahava_ctx[enc] = NULL;
            return NULL;
        }
    }

    return ngx_ahava_ctx[enc];
}


void
ngx_ahava_crypto_thread_done(void)
{
    EVP_CIPHER_CTX_free(ngx_ahava_ctx[0]);
    EVP_CIPHER_CTX_free(ngx_ahava_ctx[1]);
    EVP_CIPHER_free(ngx_ahava_gcm);

    ngx_ahava_ctx[0] = NULL;
    ngx_ahava_ctx[1] = NULL;
    ngx_ahava_gcm = NULL;
}


static int
ngx_ahava_decode_exact(u_char *dst, const u_char *src, size_t len, int hex,
    size_t want)
{
    size_t  n;

    /* validate before writing: the text may decode to more than dst holds */

    if (hex) {
        if (ngx_ahava_hex_decode(NULL, src, len, &n) != 0 || n != want) {
            return -1;
        }

        return ngx_ahava_hex_decode(dst, src, len, &n);
    }

    if (ngx_ahava_b64_decode(NULL, src, len, &n) != 0 || n != want) {
        return -1;
    }

    return ngx_ahava_b64_decode(dst, src, len, &n);
}


static u_char *
ngx_ahava_b64_encode(u_char *dst, const u_char *src, size_t len)
{
    static const u_char  tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    while (len >= 3) {
        *dst++ = tab[src[0] >> 2];
        *dst++ = tab[((src[0] & 0x03) << 4) | (src[1] >> 4)];
        *dst++ = tab[((src[1] & 0x0f) << 2) | (src[2] >> 6)];
        *dst++ = tab[src[2] & 0x3f];

        src += 3;
        len -= 3;
    }

    if (len) {
        *dst++ = tab[src[0] >> 2];

        if (len == 1) {
            *dst++ = tab[(src[0] & 0x03) << 4];
            *dst++ = '=';

        } else {
            *dst++ = tab[((src[0] & 0x03) << 4) | (src[1] >> 4)];
            *dst++ = tab[(src[1] & 0x0f) << 2];
        }

        *dst++ = '=';
    }

    return dst;
}


/* the value of a base64 character, -1 for any other byte */

static const signed char  ngx_ahava_b64_values[256] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 62, -1, -1, -1, 63,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, -1, -1, -1, -1, -1, -1,
    -1,  0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14,
    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, -1, -1, -1, -1, -1,
    -1, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1
};


static int
ngx_ahava_b64_value(u_char c)
{
    return ngx_ahava_b64_values[c];
}


/*
 * Strict standard base64: whole padded groups, '=' only at the very end and
 * unused bits zero, so every value has exactly one accepted spelling.
 * With dst NULL it only validates and counts.
 */

static int
ngx_ahava_b64_decode(u_char *dst, const u_char *src, size_t len,
    size_t *dst_len)
{
    int     v[4];
    size_t  i, k, pad, n;

    if (len % 4) {
        return -1;
    }

    n = 0;

    for (i = 0; i < len; i += 4) {
        pad = 0;

        for (k = 0; k < 4; k++) {
            if (src[i + k] == '=') {
                if (i + 4 != len || k < 2) {
                    return -1;
                }

                v[k] = 0;
                pad++;
                continue;
            }

            if (pad) {
                return -1;
            }

            v[k] = ngx_ahava_b64_value(src[i + k]);
            if (v[k] < 0) {
                return -1;
            }
        }

        if ((pad == 1 && (v[2] & 0x03)) || (pad == 2 && (v[1] & 0x0f))) {
            return -1;
        }

        if (dst) {
            dst[n] = (u_char) ((v[0] << 2) | (v[1] >> 4));

            if (pad < 2) {
                dst[n + 1] = (u_char) (((v[1] & 0x0f) << 4) | (v[2] >> 2));
            }

            if (pad < 1) {
                dst[n + 2] = (u_char) (((v[2] & 0x03) << 6) | v[3]);
            }
        }

        n += 3 - pad;
    }

    *dst_len = n;

    return 0;
}


static int
ngx_ahava_hex_value(u_char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }

    c |= 0x20;

    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }

    return -1;
}


/* Node writes lowercase; either case is accepted.  dst NULL validates. */

static int
ngx_ahava_hex_decode(u_char *dst, const u_char *src, size_t len,
    size_t *dst_len)
{
    int     hi, lo;
    size_t  i;

    if (len % 2) {
        return -1;
    }

    for (i = 0; i < len; i += 2) {
        hi = ngx_ahava_hex_value(src[i]);
        lo = ngx_ahava_hex_value(src[i + 1]);

        if (hi < 0 || lo < 0) {
            return -1;
        }

        if (dst) {
            dst[i / 2] = (u_char) ((hi << 4) | lo);
        }
    }

    *dst_len = len / 2;

    return 0;
}
