
/*
 * The JSON side of SPEC §4: the success/error envelope, the error codes,
 * and validation of what clients send (ids, query arguments).
 */


#include "ngx_ahava_core.h"


static ngx_int_t ngx_ahava_detail(json_t *details, const char *field,
    const char *message);


ngx_int_t
ngx_ahava_send_raw(ngx_http_request_t *r, ngx_uint_t status, ngx_str_t *body)
{
    ngx_buf_t        *b;
    ngx_int_t         rc;
    ngx_chain_t       out;
    ngx_table_elt_t  *h;

    if (r->header_sent) {
        return NGX_ERROR;
    }

    /*
     * an answer given before the body was read (405, 404, 401...): the
     * body must still go, or a pipelined next request would start inside it
     */
    if (ngx_http_discard_request_body(r) != NGX_OK) {
        r->keepalive = 0;
    }

    r->headers_out.status = status;
    r->headers_out.content_length_n = body->len;
    ngx_str_set(&r->headers_out.content_type,
                "application/json; charset=utf-8");
    r->headers_out.content_type_len = sizeof("application/json") - 1;
    r->headers_out.content_type_lowcase = NULL;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Cache-Control");
    ngx_str_set(&h->value, "no-store");

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = body->data;
    b->last = body->data + body->len;
    b->memory = body->len ? 1 : 0;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* Steals the reference to root */

ngx_int_t
ngx_ahava_send_json(ngx_http_request_t *r, ngx_uint_t status, json_t *root)
{
    ngx_int_t  rc;
    ngx_str_t  body;

    if (root == NULL) {
        return NGX_ERROR;
    }

    rc = ngx_ahava_json_dump(r->pool, root, &body);
    json_decref(root);

    if (rc != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_ahava_send_raw(r, status, &body);
}


/* Steals the reference to details */

ngx_int_t
ngx_ahava_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message, json_t *details)
{
    json_t  *root;

    root = json_pack("{s:b, s:s, s:s}", "success", 0, "error", message,
                     "code", code);
    if (root == NULL) {
        if (details) {
            json_decref(details);
        }

        return NGX_ERROR;
    }

    if (details) {
        json_object_set_new(root, "details", details);
    }

    return ngx_ahava_send_json(r, status, root);
}


/* The errors nginx itself raises on our locations, as JSON (SPEC §4) */

ngx_int_t
ngx_ahava_send_status_error(ngx_http_request_t *r, ngx_uint_t status)
{
    const char  *code, *message;

    switch (status) {

    case NGX_HTTP_BAD_REQUEST:
        code = "VALIDATION_ERROR";
        message = "Bad request";
        break;

    case NGX_HTTP_REQUEST_HEADER_TOO_LARGE:
        status = NGX_HTTP_BAD_REQUEST;
        code = "VALIDATION_ERROR";
        message = "Request header too large";
        break;

    case NGX_HTTP_REQUEST_URI_TOO_LARGE:
        code = "VALIDATION_ERROR";
        message = "Request URI too long";
        break;

    case NGX_HTTP_UNAUTHORIZED:
        code = "TOKEN_INVALID";
        message = "Invalid token";
        break;

    case NGX_HTTP_FORBIDDEN:
        code = "FORBIDDEN";
        message = "Forbidden";
        break;

    case NGX_HTTP_NOT_FOUND:
        code = "NOT_FOUND";
        message = "Not found";
        break;

    case NGX_HTTP_NOT_ALLOWED:
        /* SPEC §4 has no code of its own for it: a malformed request */
        code = "VALIDATION_ERROR";
        message = "Method not allowed";
        break;

    case NGX_HTTP_REQUEST_ENTITY_TOO_LARGE:
        code = "PAYLOAD_TOO_LARGE";
        message = "Request body too large";
        break;

    case NGX_HTTP_UNSUPPORTED_MEDIA_TYPE:
        code = "UNSUPPORTED_MEDIA_TYPE";
        message = "Unsupported media type";
        break;

    case 429:
        code = "RATE_LIMITED";
        message = "Too many requests";
        break;

    case NGX_HTTP_BAD_GATEWAY:
    case NGX_HTTP_SERVICE_UNAVAILABLE:
    case NGX_HTTP_GATEWAY_TIME_OUT:
        code = "SERVICE_UNAVAILABLE";
        message = "Service unavailable, try again later";
        break;

    default:
        if (status < 400 || status > 599) {
            status = NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        code = (status < 500) ? "VALIDATION_ERROR" : "INTERNAL";
        message = (status < 500) ? "Bad request" : "Internal server error";
        break;
    }

    return ngx_ahava_send_error(r, status, code, message, NULL);
}


/*
 * An integer query argument in [min, max].  Absent: def.  Anything but
 * plain decimal digits is a validation error recorded in details.
 */

ngx_int_t
ngx_ahava_arg_uint(ngx_http_request_t *r, const char *name, ngx_uint_t def,
    ngx_uint_t min, ngx_uint_t max, ngx_uint_t *value, json_t *details)
{
    u_char     msg[128];
    ngx_int_t  n;
    ngx_str_t  arg;

    if (ngx_http_arg(r, (u_char *) name, ngx_strlen(name), &arg) != NGX_OK) {
        *value = def;
        return NGX_OK;
    }

    n = (arg.len == 0 || arg.len > 9) ? NGX_ERROR : ngx_atoi(arg.data,
                                                             arg.len);

    if (n == NGX_ERROR || (ngx_uint_t) n < min || (ngx_uint_t) n > max) {
        ngx_snprintf(msg, sizeof(msg),
                     "\"%s\" must be an integer between %ui and %ui%Z",
                     name, min, max);
        return ngx_ahava_detail(details, name, (char *) msg);
    }

    *value = (ngx_uint_t) n;
    return NGX_OK;
}


/* A query argument that must be one of allowed[] (NULL-terminated) */

ngx_int_t
ngx_ahava_arg_enum(ngx_http_request_t *r, const char *name,
    const char **allowed, ngx_int_t def, ngx_int_t *value, json_t *details)
{
    u_char      msg[256], *p, *last;
    ngx_int_t   i;
    ngx_str_t   arg;

    if (ngx_http_arg(r, (u_char *) name, ngx_strlen(name), &arg) != NGX_OK) {
        *value = def;
        return NGX_OK;
    }

    for (i = 0; allowed[i]; i++) {
        if (arg.len == ngx_strlen(allowed[i])
            && ngx_strncmp(arg.data, allowed[i], arg.len) == 0)
        {
            *value = i;
            return NGX_OK;
        }
    }

    p = msg;
    last = msg + sizeof(msg) - 1;
    p = ngx_slprintf(p, last, "\"%s\" must be one of", name);

    for (i = 0; allowed[i]; i++) {
        p = ngx_slprintf(p, last, "%s %s", i ? "," : "", allowed[i]);
    }

    *p = '\0';

    return ngx_ahava_detail(details, name, (char *) msg);
}


static ngx_int_t
ngx_ahava_detail(json_t *details, const char *field, const char *message)
{
    json_array_append_new(details, json_pack("{s:s, s:s}", "field", field,
                                             "message", message));
    return NGX_DECLINED;
}


json_t *
ngx_ahava_json_loadn(ngx_http_request_t *r, ngx_str_t *text)
{
    json_t        *root;
    json_error_t   err;

    root = json_loadb((char *) text->data, text->len,
                      JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &err);

    if (root == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ahava: bad JSON from the database: %s", err.text);
    }

    return root;
}


/*
 * Sets obj[field] to the decrypted text of ciphertext.  A value that fails
 * authentication (or is not UTF-8) is never returned as garbage: the field
 * is null and error_field says DECRYPTION_FAILED (SPEC §10).
 */

ngx_int_t
ngx_ahava_decrypt_field(ngx_http_request_t *r, json_t *obj, const char *field,
    const char *error_field, ngx_str_t *ciphertext)
{
    u_char                 *plain, **keys;
    size_t                  len;
    json_t                 *s;
    ngx_ahava_main_conf_t  *amcf;

    if (ciphertext == NULL || ciphertext->data == NULL) {
        json_object_set_new(obj, field, json_null());
        return NGX_OK;
    }

    amcf = ngx_http_get_module_main_conf(r, ngx_ahava_core_module);

    plain = ngx_pnalloc(r->pool,
                        ngx_ahava_crypto_decrypted_max_len(ciphertext->len)
                        + 1);
    if (plain == NULL) {
        return NGX_ERROR;
    }

    keys = amcf->keys ? amcf->keys->elts : NULL;
    s = NULL;

    if (keys
        && ngx_ahava_crypto_decrypt((const u_char *const *) keys,
                                    amcf->keys->nelts, ciphertext->data,
                                    ciphertext->len, plain, &len)
           == 0)
    {
        s = json_stringn((char *) plain, len);
    }

    if (s == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ahava: decryption of \"%s\" failed", field);
        json_object_set_new(obj, field, json_null());
        json_object_set_new(obj, error_field, json_string("DECRYPTION_FAILED"));
        return NGX_DECLINED;
    }

    json_object_set_new(obj, field, s);
    return NGX_OK;
}


/* The ciphertext of plain as a query parameter (SPEC §10, current key) */

char *
ngx_ahava_encrypt_param(ngx_http_request_t *r, const char *plain, size_t len)
{
    u_char                 *out, **keys;
    size_t                  n;
    ngx_ahava_main_conf_t  *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_ahava_core_module);

    if (amcf->keys == NULL || amcf->keys->nelts == 0) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ahava: no ahava_encryption_key configured");
        return NULL;
    }

    keys = amcf->keys->elts;

    n = ngx_ahava_crypto_encrypted_len(len);
    out = ngx_pnalloc(r->pool, n + 1);
    if (out == NULL) {
        return NULL;
    }

    if (ngx_ahava_crypto_encrypt(keys[0], (const u_char *) plain, len, out,
                                 &n)
        != 0)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ahava: encryption failed");
        return NULL;
    }

    out[n] = '\0';

    return (char *) out;
}


/* A NUL-terminated copy, for query parameters */

char *
ngx_ahava_pstrz(ngx_http_request_t *r, u_char *data, size_t len)
{
    u_char  *p;

    p = ngx_pnalloc(r->pool, len + 1);
    if (p == NULL) {
        return NULL;
    }

    ngx_memcpy(p, data, len);
    p[len] = '\0';

    return (char *) p;
}


/* Decrypts the "content" of each message of a JSON array in place */

ngx_int_t
ngx_ahava_decrypt_messages(ngx_http_request_t *r, json_t *messages)
{
    size_t      i;
    json_t     *m, *content;
    ngx_str_t   ct;

    json_array_foreach(messages, i, m) {
        content = json_object_get(m, "content");

        ct.data = (u_char *) json_string_value(content);
        ct.len = ct.data ? json_string_length(content) : 0;

        if (ngx_ahava_decrypt_field(r, m, "content", "contentError", &ct)
            == NGX_ERROR)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}
