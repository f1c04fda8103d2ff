
/*
 * JWT verification (SPEC §3).  libjwt 1.10 verifies with whatever "alg" the
 * token names, so the algorithm is pinned here before libjwt sees the
 * token, and again after; exp and nbf are checked here (1.10 has no
 * jwt_valid_*).  HS* signatures are checked here too, in constant time:
 * libjwt 1.10 compares the HMAC with strcmp.  A "crit" header is refused:
 * we implement no extension it could name (RFC 7515 §4.1.11).
 */


#include "ngx_ahava_core.h"

#include <jwt.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>


#define NGX_AHAVA_JWT_MAX_LEN   8192


static json_t *ngx_ahava_jwt_part(ngx_str_t *part, ngx_log_t *log);
static ngx_int_t ngx_ahava_jwt_hmac(ngx_ahava_main_conf_t *amcf,
    ngx_str_t *input, ngx_str_t *signature, ngx_log_t *log);


ngx_int_t
ngx_ahava_jwt_parse_alg(ngx_str_t *name)
{
    static const struct {
        const char  *name;
        ngx_int_t    alg;
    } algs[] = {
        { "HS256", JWT_ALG_HS256 },
        { "HS384", JWT_ALG_HS384 },
        { "HS512", JWT_ALG_HS512 },
        { "RS256", JWT_ALG_RS256 },
        { "RS384", JWT_ALG_RS384 },
        { "RS512", JWT_ALG_RS512 },
        { "ES256", JWT_ALG_ES256 },
        { "ES384", JWT_ALG_ES384 },
        { "ES512", JWT_ALG_ES512 }
    };

    ngx_uint_t  i;

    for (i = 0; i < sizeof(algs) / sizeof(algs[0]); i++) {
        if (name->len == ngx_strlen(algs[i].name)
            && ngx_strncmp(name->data, algs[i].name, name->len) == 0)
        {
            return algs[i].alg;
        }
    }

    return NGX_ERROR;
}


ngx_ahava_jwt_rc_e
ngx_ahava_jwt_verify(ngx_ahava_main_conf_t *amcf, ngx_str_t *token,
    ngx_str_t *user_id, ngx_log_t *log, const char **reason)
{
    u_char              *p, *last, *dot1, *dot2;
    char                *tok;
    jwt_t               *jwt;
    json_t              *header, *payload, *alg, *exp, *nbf, *uid;
    time_t               now;
    ngx_str_t            part, sig;
    ngx_ahava_jwt_rc_e   rc;

    header = NULL;
    payload = NULL;
    jwt = NULL;
    tok = NULL;
    rc = NGX_AHAVA_JWT_INVALID;

    if (token->len == 0 || token->len > NGX_AHAVA_JWT_MAX_LEN) {
        *reason = "bad token length";
        return NGX_AHAVA_JWT_INVALID;
    }

    p = token->data;
    last = p + token->len;
    dot1 = NULL;
    dot2 = NULL;

    for ( /* void */ ; p < last; p++) {
        if (*p == '.') {
            if (dot1 == NULL) {
                dot1 = p;

            } else if (dot2 == NULL) {
                dot2 = p;

            } else {
                *reason = "too many segments";
                return NGX_AHAVA_JWT_INVALID;
            }

            continue;
        }

        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z')
              || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_'))
        {
            *reason = "bad character";
            return NGX_AHAVA_JWT_INVALID;
        }
    }

    if (dot2 == NULL || dot1 == token->data || dot2 == dot1 + 1
        || dot2 + 1 == last)
    {
        /* an empty signature is what "alg":"none" tokens carry */
        *reason = "malformed or unsigned token";
        return NGX_AHAVA_JWT_INVALID;
    }

    part.data = token->data;
    part.len = dot1 - token->data;

    header = ngx_ahava_jwt_part(&part, log);
    if (header == NULL) {
        *reason = "bad header";
        goto done;
    }

    alg = json_object_get(header, "alg");

    if (!json_is_string(alg)
        || ngx_strlen(json_string_value(alg)) != amcf->jwt_alg_name.len
        || ngx_strncmp(json_string_value(alg), amcf->jwt_alg_name.data,
                       amcf->jwt_alg_name.len) != 0)
    {
        *reason = "unexpected algorithm";
        goto done;
    }

    if (json_object_get(header, "crit") != NULL) {
        *reason = "crit header names an unsupported extension";
        goto done;
    }

    if (amcf->jwt_alg_name.data[0] == 'H') {
        part.data = token->data;
        part.len = dot2 - token->data;
        sig.data = dot2 + 1;
        sig.len = last - sig.data;

        if (ngx_ahava_jwt_hmac(amcf, &part, &sig, log) != NGX_OK) {
            *reason = "bad signature";
            goto done;
        }

        goto verified;
    }

    tok = ngx_alloc(token->len + 1, log);
    if (tok == NULL) {
        *reason = "out of memory";
        goto done;
    }

    ngx_memcpy(tok, token->data, token->len);
    tok[token->len] = '\0';

    if (jwt_decode(&jwt, tok, amcf->jwt_key.data, (int) amcf->jwt_key.len)
        != 0 || jwt == NULL)
    {
        *reason = "bad signature";
        goto done;
    }

    if ((ngx_int_t) jwt_get_alg(jwt) != amcf->jwt_alg) {
        *reason = "unexpected algorithm";
        goto done;
    }

verified:

    part.data = dot1 + 1;
    part.len = dot2 - dot1 - 1;

    payload = ngx_ahava_jwt_part(&part, log);
    if (payload == NULL) {
        *reason = "bad payload";
        goto done;
    }

    now = ngx_time();

    exp = json_object_get(payload, "exp");

    if (!json_is_number(exp)) {
        *reason = "no exp claim";
        goto done;
    }

    if (json_number_value(exp) <= (double) now) {
        *reason = "expired";
        rc = NGX_AHAVA_JWT_EXPIRED;
        goto done;
    }

    nbf = json_object_get(payload, "nbf");

    if (nbf != NULL
        && (!json_is_number(nbf) || json_number_value(nbf) > (double) now))
    {
        *reason = "not yet valid";
        goto done;
    }

    uid = json_object_get(payload, "userId");

    if (!json_is_string(uid)
        || ngx_ahava_valid_id((u_char *) json_string_value(uid),
                              json_string_length(uid))
           != NGX_OK)
    {
        *reason = "no valid userId claim";
        goto done;
    }

    user_id->len = json_string_length(uid);
    ngx_memcpy(user_id->data, json_string_value(uid), user_id->len);

    rc = NGX_AHAVA_JWT_OK;
    *reason = NULL;

done:

    if (jwt) {
        jwt_free(jwt);
    }

    if (tok) {
        ngx_free(tok);
    }

    if (header) {
        json_decref(header);
    }

    if (payload) {
        json_decref(payload);
    }

    return rc;
}


/* base64url-decoded JSON object of a token segment */

static json_t *
ngx_ahava_jwt_part(ngx_str_t *part, ngx_log_t *log)
{
    u_char     *buf;
    json_t     *obj;
    ngx_str_t   dec;

    buf = ngx_alloc(ngx_base64_decoded_length(part->len) + 1, log);
    if (buf == NULL) {
        return NULL;
    }

    dec.data = buf;

    if (ngx_decode_base64url(&dec, part) != NGX_OK) {
        ngx_free(buf);
        return NULL;
    }

    obj = json_loadb((char *) dec.data, dec.len, JSON_REJECT_DUPLICATES,
                     NULL);
    ngx_free(buf);

    if (obj != NULL && !json_is_object(obj)) {
        json_decref(obj);
        return NULL;
    }

    return obj;
}


/* The HMAC of input under the secret, compared in constant time */

static ngx_int_t
ngx_ahava_jwt_hmac(ngx_ahava_main_conf_t *amcf, ngx_str_t *input,
    ngx_str_t *signature, ngx_log_t *log)
{
    u_char         mac[EVP_MAX_MD_SIZE], sent[EVP_MAX_MD_SIZE + 4];
    unsigned int   mac_len;
    ngx_str_t      dec;
    const EVP_MD  *md;

    switch (amcf->jwt_alg_name.data[2]) {
    case '2':
        md = EVP_sha256();
        break;
    case '3':
        md = EVP_sha384();
        break;
    default:
        md = EVP_sha512();
        break;
    }

    if (signature->len > ngx_base64_encoded_length(EVP_MAX_MD_SIZE)) {
        return NGX_ERROR;
    }

    dec.data = sent;

    if (ngx_decode_base64url(&dec, signature) != NGX_OK) {
        return NGX_ERROR;
    }

    if (HMAC(md, amcf->jwt_key.data, (int) amcf->jwt_key.len, input->data,
             input->len, mac, &mac_len)
        == NULL)
    {
        ngx_log_error(NGX_LOG_ERR, log, 0, "ahava: HMAC() failed");
        return NGX_ERROR;
    }

    if (dec.len != mac_len || CRYPTO_memcmp(mac, dec.data, mac_len) != 0) {
        return NGX_ERROR;
    }

    return NGX_OK;
}
