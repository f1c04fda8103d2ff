
/*
 * Copyright (C) Ahava
 */


#ifndef _NGX_AHAVA_CRYPTO_H_INCLUDED_
#define _NGX_AHAVA_CRYPTO_H_INCLUDED_


/*
 * Deliberately free of nginx headers: the AES-256-GCM field encryption is
 * unit-tested and fuzzed on its own.  Text forms (SPEC §10):
 *
 *     v2:<iv b64>:<tag b64>:<ciphertext b64>     written and read
 *     <iv hex>:<tag hex>:<ciphertext hex>         legacy, read only
 */


#include <stddef.h>
#include <sys/types.h>


#define NGX_AHAVA_KEY_LEN  32


/* base64 of exactly 32 bytes, surrounding whitespace ignored: 0 or -1 */
int ngx_ahava_crypto_key_decode(const u_char *b64, size_t len,
    u_char key[NGX_AHAVA_KEY_LEN]);

/* exact length of the v2 text; 0 if it would not fit in size_t */
size_t ngx_ahava_crypto_encrypted_len(size_t plain_len);

/* out must hold ngx_ahava_crypto_encrypted_len(len) bytes: 0 or -1 */
int ngx_ahava_crypto_encrypt(const u_char *key, const u_char *plain,
    size_t len, u_char *out, size_t *out_len);

/* upper bound of the plaintext for a ciphertext text of ct_len bytes */
size_t ngx_ahava_crypto_decrypted_max_len(size_t ct_len);

/*
 * keys[0] is the current key, the rest are older ones still accepted.
 * out must hold ngx_ahava_crypto_decrypted_max_len(len) bytes.  0 or -1;
 * on -1 out is zeroed and *out_len is 0.  The plaintext is not checked
 * for UTF-8: that is the caller's business.
 */
int ngx_ahava_crypto_decrypt(const u_char *const *keys, size_t nkeys,
    const u_char *in, size_t len, u_char *out, size_t *out_len);

/*
 * Frees the calling thread's cipher contexts (they are per thread when
 * built with NGX_AHAVA_CRYPTO_THREADS, per process otherwise).
 */
void ngx_ahava_crypto_thread_done(void);


#endif /* _NGX_AHAVA_CRYPTO_H_INCLUDED_ */
