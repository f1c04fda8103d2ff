
/*
 * Copyright (C) Ahava
 *
 * Unit test of ngx_ahava_crypto, TAP output.  The known-answer vectors
 * were produced by Node's crypto module (key = bytes 0..31), so they pin
 * the format independently of our own encoder.
 */


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "ngx_ahava_crypto.h"


static int  tests;
static int  failures;


static void
ok(int cond, const char *desc)
{
    tests++;

    if (!cond) {
        failures++;
    }

    printf("%sok %d - %s\n", cond ? "" : "not ", tests, desc);
}


static int
all_zero(const u_char *p, size_t n)
{
    size_t  i;

    for (i = 0; i < n; i++) {
        if (p[i]) {
            return 0;
        }
    }

    return 1;
}


/* encrypt and return a malloc()ed NUL-terminated text, or NULL */

static char *
enc(const u_char *key, const void *plain, size_t len)
{
    u_char  *out;
    size_t   n;

    out = malloc(ngx_ahava_crypto_encrypted_len(len) + 1);
    if (out == NULL) {
        return NULL;
    }

    if (ngx_ahava_crypto_encrypt(key, plain, len, out, &n) != 0
        || n != ngx_ahava_crypto_encrypted_len(len))
    {
        free(out);
        return NULL;
    }

    out[n] = '\0';

    return (char *) out;
}


/*
 * Decrypt into an exactly sized buffer pre-filled with garbage (so ASan sees
 * overruns and the "zeroed on failure" promise is checked).  Returns the
 * decrypt rc, or -2 if a failure left bytes behind.
 */

static int
dec_keys(const u_char *const *keys, size_t nkeys, const char *in, size_t len,
    u_char **plain, size_t *plain_len)
{
    int      rc;
    size_t   max;
    u_char  *out;

    max = ngx_ahava_crypto_decrypted_max_len(len);

    out = malloc(max ? max : 1);
    if (out == NULL) {
        return -3;
    }

    memset(out, 0xa5, max);
    *plain_len = (size_t) 12345;

    rc = ngx_ahava_crypto_decrypt(keys, nkeys, (const u_char *) in, len, out,
                                  plain_len);

    if (rc != 0 && (!all_zero(out, max) || *plain_len != 0)) {
        rc = -2;
    }

    if (rc == 0 && *plain_len > max) {
        rc = -4;
    }

    if (plain != NULL && rc == 0) {
        *plain = out;

    } else {
        free(out);
    }

    return rc;
}


static int
dec1(const u_char *key, const char *in)
{
    size_t  n;

    return dec_keys(&key, 1, in, strlen(in), NULL, &n);
}


static int
roundtrip(const u_char *key, const void *plain, size_t len)
{
    int      rc;
    char    *ct;
    size_t   n;
    u_char  *pt;

    ct = enc(key, plain, len);
    if (ct == NULL) {
        return 0;
    }

    rc = 0;

    if (strncmp(ct, "v2:", 3) == 0
        && dec_keys(&key, 1, ct, strlen(ct), &pt, &n) == 0)
    {
        rc = (n == len && memcmp(pt, plain, len) == 0);
        free(pt);
    }

    free(ct);

    return rc;
}


/* flip one character of part idx (0 iv, 1 tag, 2 ct) to another valid one */

static char *
tamper(const char *ct, int idx)
{
    char  *s, *p;
    int    i;

    s = strdup(ct);
    p = s + 3;

    for (i = 0; i < idx; i++) {
        p = strchr(p, ':') + 1;
    }

    /* the first character of a group carries 6 data bits, never padding */
    *p = (*p == 'A') ? 'B' : 'A';

    return s;
}


int
main(void)
{
    int            rc;
    char          *ct, *s, *big;
    size_t         i, n, len;
    u_char        *pt, *buf;
    const u_char  *keys[3];
    u_char         k1[NGX_AHAVA_KEY_LEN], k2[NGX_AHAVA_KEY_LEN];
    u_char         kat[NGX_AHAVA_KEY_LEN], key[NGX_AHAVA_KEY_LEN];
    u_char         out[256];

    static const char  kat_b64[] =
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    static const char  kat_plain[] =
        "Shalom \xd7\xa9\xd7\x9c\xd7\x95\xd7\x9d \xf0\x9f\x98\x80";
    static const char  kat_v2[] =
        "v2:AAECAwQFBgcICQoL:Fw5b0UMPzmQSDJoDDmWbBA==:"
        "FGq3d6qI4swklgtcJD7lTXNJH7Q=";
    static const char  kat_hex12[] =
        "000102030405060708090a0b:170e5bd1430fce64120c9a030e659b04:"
        "146ab777aa88e2cc24960b5c243ee54d73491fb4";
    static const char  kat_hex16[] =
        "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff:4c94348cff746a458e9787795b7305ef:"
        "eb097d43feedce100132cf1298f9278a827bd83b";

    printf("1..63\n");

    if (RAND_bytes(k1, sizeof(k1)) != 1 || RAND_bytes(k2, sizeof(k2)) != 1) {
        printf("Bail out! RAND_bytes\n");
        return 1;
    }

    /* key decode */

    ok(ngx_ahava_crypto_key_decode((const u_char *) kat_b64,
                                   strlen(kat_b64), kat) == 0
       && kat[0] == 0 && kat[31] == 31,
       "key_decode: valid 32-byte key");

    s = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n";
    ok(ngx_ahava_crypto_key_decode((u_char *) s, strlen(s), key) == 0
       && memcmp(key, kat, 32) == 0,
       "key_decode: trailing newline (key file) accepted");

    s = "  AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\r\n\t ";
    ok(ngx_ahava_crypto_key_decode((u_char *) s, strlen(s), key) == 0
       && memcmp(key, kat, 32) == 0,
       "key_decode: surrounding blanks and CRLF trimmed");

    s = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==";
    ok(ngx_ahava_crypto_key_decode((u_char *) s, strlen(s), key) == -1,
       "key_decode: 31 bytes rejected");

    s = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g";
    ok(ngx_ahava_crypto_key_decode((u_char *) s, strlen(s), key) == -1,
       "key_decode: 33 bytes rejected");

    s = "this is not a key at all, not even base64!!!";
    ok(ngx_ahava_crypto_key_decode((u_char *) s, strlen(s), key) == -1,
       "key_decode: garbage rejected");

    s = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
    ok(ngx_ahava_crypto_key_decode((u_char *) s, strlen(s), key) == -1,
       "key_decode: missing padding rejected");

    s = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=";
    ok(ngx_ahava_crypto_key_decode((u_char *) s, strlen(s), key) == -1,
       "key_decode: non-canonical trailing bits rejected");

    s = "AAECAwQFBgcICQoLDA0ODxAR EhMUFRYXGBkaGxwdHh8=";
    ok(ngx_ahava_crypto_key_decode((u_char *) s, strlen(s), key) == -1,
       "key_decode: inner whitespace rejected");

    ok(ngx_ahava_crypto_key_decode((u_char *) "", 0, key) == -1
       && ngx_ahava_crypto_key_decode((u_char *) "\n", 1, key) == -1,
       "key_decode: empty rejected");

    /* lengths */

    ok(ngx_ahava_crypto_encrypted_len(0) == 45
       && ngx_ahava_crypto_encrypted_len(1) == 49
       && ngx_ahava_crypto_encrypted_len(3) == 49
       && ngx_ahava_crypto_encrypted_len(4) == 53,
       "encrypted_len: exact small values");

    ok(ngx_ahava_crypto_encrypted_len(SIZE_MAX) == 0
       && ngx_ahava_crypto_encrypted_len(SIZE_MAX / 4 * 3) == 0
       && ngx_ahava_crypto_encrypted_len(SIZE_MAX / 2) > SIZE_MAX / 2,
       "encrypted_len: overflow reported as 0, no wraparound");

    n = 7;
    ok(ngx_ahava_crypto_encrypt(k1, (u_char *) "x", SIZE_MAX, out, &n) == -1
       && n == 0,
       "encrypt: huge fake length refused before reading");

    ok(ngx_ahava_crypto_decrypted_max_len(SIZE_MAX) == SIZE_MAX
       && ngx_ahava_crypto_decrypted_max_len(0) == 0,
       "decrypted_max_len: no overflow");

    /* round trips */

    ok(roundtrip(k1, "", 0), "round trip: empty string");
    s = "Visit note: patient stable, BP 120/80.";
    ok(roundtrip(k1, s, strlen(s)), "round trip: ASCII");
    ok(roundtrip(k1, kat_plain, strlen(kat_plain)),
       "round trip: multi-byte UTF-8");

    s = "\xd7\x9e\xd7\x98\xd7\xa4\xd7\x9c\xd7\xaa \xe6\x97\xa5\xe6\x9c\xac "
        "caf\xc3\xa9 \xf0\x9f\x92\x8a";
    ok(roundtrip(k1, s, strlen(s)), "round trip: Hebrew, CJK, emoji");

    big = malloc(20001);
    for (i = 0; i < 20000; i++) {
        big[i] = 'a' + i % 26;
    }
    big[20000] = '\0';
    ok(roundtrip(k1, big, 20000), "round trip: 20000 chars (multi-chunk)");

    ok(roundtrip(k1, "\0\xff\0", 3), "round trip: binary bytes, no UTF-8 check");

    for (rc = 1, len = 0; len < 3100; len += (len < 40 ? 1 : 97)) {
        rc &= roundtrip(k1, big, len);
    }
    ok(rc, "round trip: lengths 0..40 and across chunk boundaries");

    ct = enc(k1, "same", 4);
    s = enc(k1, "same", 4);
    ok(ct && s && strcmp(ct, s) != 0, "encrypt: fresh random IV each time");
    free(s);

    /* tampering and wrong keys */

    s = tamper(ct, 0);
    ok(dec1(k1, s) == -1, "tampered IV rejected, output zeroed");
    free(s);

    s = tamper(ct, 1);
    ok(dec1(k1, s) == -1, "tampered tag rejected, output zeroed");
    free(s);

    s = tamper(ct, 2);
    ok(dec1(k1, s) == -1, "tampered ciphertext rejected, output zeroed");
    free(s);

    s = strdup(ct);
    s[strlen(s) - 4] = '\0';
    ok(dec1(k1, s) == -1 && dec1(k1, ct) == 0,
       "truncated ciphertext rejected");
    free(s);

    ok(dec1(k2, ct) == -1, "wrong key rejected, output zeroed");

    /* rotation */

    keys[0] = k2;
    keys[1] = k1;
    ok(dec_keys(keys, 2, ct, strlen(ct), &pt, &n) == 0
       && n == 4 && memcmp(pt, "same", 4) == 0,
       "rotation: old-key value decrypts with [new, old]");
    free(pt);

    keys[0] = k1;
    keys[1] = k2;
    ok(dec_keys(keys, 2, ct, strlen(ct), NULL, &n) == 0,
       "rotation: current key first also works");

    keys[0] = k2;
    keys[1] = NULL;
    keys[2] = k1;
    ok(dec_keys(keys, 3, ct, strlen(ct), NULL, &n) == 0,
       "rotation: NULL entries skipped");

    keys[0] = k2;
    keys[1] = kat;
    ok(dec_keys(keys, 2, ct, strlen(ct), NULL, &n) == -1,
       "rotation: no matching key rejected, output zeroed");

    ok(dec_keys(keys, 0, ct, strlen(ct), NULL, &n) == -1,
       "rotation: zero keys rejected");

    s = enc(k1, big, 20000);
    keys[0] = k2;
    keys[1] = k1;
    ok(dec_keys(keys, 2, s, strlen(s), &pt, &n) == 0
       && n == 20000 && memcmp(pt, big, 20000) == 0,
       "rotation: 20000 chars survive a failed first key");
    free(pt);
    free(s);
    free(ct);

    /* known answers from Node, v2 and legacy */

    keys[0] = kat;
    ok(dec_keys(keys, 1, kat_v2, strlen(kat_v2), &pt, &n) == 0
       && n == strlen(kat_plain) && memcmp(pt, kat_plain, n) == 0,
       "Node vector: v2 form");
    free(pt);

    ok(dec_keys(keys, 1, kat_hex12, strlen(kat_hex12), &pt, &n) == 0
       && n == strlen(kat_plain) && memcmp(pt, kat_plain, n) == 0,
       "Node vector: legacy hex, 12-byte IV");
    free(pt);

    ok(dec_keys(keys, 1, kat_hex16, strlen(kat_hex16), &pt, &n) == 0
       && n == strlen(kat_plain) && memcmp(pt, kat_plain, n) == 0,
       "Node vector: legacy hex, 16-byte IV");
    free(pt);

    s = strdup(kat_hex12);
    for (i = 0; s[i]; i++) {
        if (s[i] >= 'a' && s[i] <= 'f') {
            s[i] -= 32;
        }
    }
    ok(dec1(kat, s) == 0, "legacy hex: uppercase accepted");
    free(s);

    s = strdup(kat_hex12);
    s[strlen(s) - 1] ^= 1;
    ok(dec1(kat, s) == -1, "legacy hex: tampered ciphertext rejected");
    free(s);

    ok(dec1(k1, kat_hex12) == -1, "legacy hex: wrong key rejected");

    /* malformed */

    ok(dec1(kat, "") == -1, "malformed: empty");
    ok(dec1(kat, "v2:") == -1, "malformed: prefix only");

    ok(dec1(kat, "v2:AAECAwQFBgcICQoL:Fw5b0UMPzmQSDJoDDmWbBA==") == -1,
       "malformed: v2 missing ciphertext part");

    ok(dec1(kat, "000102030405060708090a0b:170e5bd1430fce64120c9a030e659b04")
       == -1,
       "malformed: legacy missing ciphertext part");

    ok(dec1(kat, "v2:AAECAwQFBgcICQoL:Fw5b0UMPzmQSDJoDDmWbBA==:"
                 "FGq3d6qI4swklgtcJD7lTXNJH7Q=:") == -1,
       "malformed: trailing extra colon");

    ok(dec1(kat, "v2:AAECAwQFBgcICQoL::Fw5b0UMPzmQSDJoDDmWbBA==:"
                 "FGq3d6qI4swklgtcJD7lTXNJH7Q=") == -1,
       "malformed: doubled colon");

    ok(dec1(kat, "v2:v2:AAECAwQFBgcICQoL:Fw5b0UMPzmQSDJoDDmWbBA==:"
                 "FGq3d6qI4swklgtcJD7lTXNJH7Q=") == -1,
       "malformed: doubled prefix");

    ok(dec1(kat, "V2:AAECAwQFBgcICQoL:Fw5b0UMPzmQSDJoDDmWbBA==:"
                 "FGq3d6qI4swklgtcJD7lTXNJH7Q=") == -1,
       "malformed: uppercase prefix");

    ok(dec1(kat, "v2:AAECAwQFBgcICQoL:Fw5b0UMPzmQSDJoDDmWbBA==:"
                 "FGq3d6qI4swklgtcJD7lTXNJH7Q") == -1,
       "malformed: base64 ciphertext without padding");

    ok(dec1(kat, "v2:AAECAwQFBgcICQoL:Fw5b0UMPzmQSDJoDDmWbBA==:"
                 "FGq3d6qI4swk!gtcJD7lTXNJH7Q=") == -1,
       "malformed: bad base64 character");

    ok(dec1(kat, "v2:AAECAwQFBgcICQoL:Fw5b0UMPzmQSDJoDDmWbBA==:"
                 "FGq3d6qI4s=klgtcJD7lTXNJH7Q=") == -1,
       "malformed: padding in the middle");

    ok(dec1(kat, "v2:AAECAwQFBgcICQoL:Fw5b0UMPzmQSDJoDDmWbBA==:"
                 "FGq3d6qI4swklgtcJD7lTXNJH7R=") == -1,
       "malformed: non-canonical base64");

    ok(dec1(kat, "v2:AAECAwQFBgcICQoL:Fw5b0UMPzmQSDJoDDmWbBA==:"
                 "FGq3d6qI4swklgtcJD7lTXNJH7Q=\n") == -1,
       "malformed: trailing newline in stored value");

    ok(dec1(kat, "v2:AAECAwQFBgcICQoL:Fw5b0UMPzmQSDJoD:"
                 "FGq3d6qI4swklgtcJD7lTXNJH7Q=") == -1,
       "malformed: v2 tag of 12 bytes");

    ok(dec1(kat, "v2:AAECAwQFBgcICQoL:Fw5b0UMPzmQSDJoDDmWbBA0A:"
                 "FGq3d6qI4swklgtcJD7lTXNJH7Q=") == -1,
       "malformed: v2 tag of 18 bytes");

    ok(dec1(kat, "v2:AAECAwQFBgcICQoLDA0ODw==:Fw5b0UMPzmQSDJoDDmWbBA==:"
                 "FGq3d6qI4swklgtcJD7lTXNJH7Q=") == -1,
       "malformed: v2 IV of 16 bytes");

    ok(dec1(kat, "000102030405060708090a0b:170e5bd1430fce64120c9a030e659b:"
                 "146ab777aa88e2cc24960b5c243ee54d73491fb4") == -1,
       "malformed: legacy tag of 15 bytes");

    ok(dec1(kat, "0001020304050607:170e5bd1430fce64120c9a030e659b04:"
                 "146ab777aa88e2cc24960b5c243ee54d73491fb4") == -1,
       "malformed: legacy IV of 8 bytes");

    ok(dec1(kat, "000102030405060708090a0b:170e5bd1430fce64120c9a030e659b04:"
                 "146ab777aa88e2cc24960b5c243ee54d73491fbg") == -1,
       "malformed: bad hex character");

    ok(dec1(kat, "000102030405060708090a0b:170e5bd1430fce64120c9a030e659b04:"
                 "146ab777aa88e2cc24960b5c243ee54d73491fb") == -1,
       "malformed: odd hex length");

    s = "v2:AAECAwQFBgcICQoL:Fw5b0UMPzmQSDJoDDmWbBA==:FGq3d6qI4swklgtc\0D7l";
    ok(dec_keys(keys, 1, s, 65, NULL, &n) == -1,
       "malformed: embedded NUL byte");

    /* a megabyte of valid base64 that claims a huge ciphertext */
    len = 45 + 4 * 262144;
    big = realloc(big, len);
    memcpy(big, "v2:AAECAwQFBgcICQoL:Fw5b0UMPzmQSDJoDDmWbBA==:", 45);
    memset(big + 45, 'Q', len - 45);
    ok(dec_keys(keys, 1, big, len, NULL, &n) == -1,
       "malformed: 1 MiB forged ciphertext rejected, output zeroed");

    n = 7;
    buf = malloc(16);
    memset(buf, 0xa5, 16);
    ok(ngx_ahava_crypto_decrypt(keys, 1, (u_char *) "v2:a", 4, buf, &n) == -1
       && n == 0 && all_zero(buf, 4) && buf[4] == 0xa5,
       "malformed: failure zeroes only the promised buffer");
    free(buf);
    free(big);

    /* tests counts the ones already run; this is the 63rd */
    ok(tests + 1 == 63, "test count matches the plan");

    return failures ? 1 : 0;
}
