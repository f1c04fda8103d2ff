
/*
 * The JSON side of SPEC §4: answers in the success/error envelope, the
 * error codes, and the text PostgreSQL built spliced into answers with the
 * fields only C can fill (decrypted content) — never parsed and printed
 * again.  Also encryption at rest of what goes into statements.
 */


#include "ngx_ahava_core.h"


static ngx_int_t ngx_ahava_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_chain_t *body);
static u_char *ngx_ahava_row_string(u_char *p, PGresult *res, int row,
    int col);
static u_char *ngx_ahava_decrypted_field_in(ngx_ahava_main_conf_t *amcf,
    ngx_pool_t *pool, ngx_log_t *log, u_char *p, PGresult *res, int row,
    int col, const char *field, const char *error_field);


/*
 * Sends an answer: headers, then the body to the output filter.  Returns
 * what nginx returned (NGX_OK, NGX_AGAIN with output pending, NGX_ERROR),
 * the value the request is finalized with.
 */

static ngx_int_t
ngx_ahava_send(ngx_http_request_t *r, ngx_uint_t status, ngx_chain_t *body)
{
    off_t             len;
    ngx_int_t         rc;
    ngx_chain_t      *cl;
    ngx_table_elt_t  *h;

    if (r->header_sent) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "ahava: a second answer to one request");
        return NGX_ERROR;
    }

    /*
     * an answer given before the body was read (401, 404, 415...): the
     * body must still go, or a pipelined next request would start inside it;
     * but a client waiting for "100 Continue" is not asked for it (nginx
     * does the same before its own early answers)
     */
    if (r->request_body == NULL) {
        r->expect_tested = 1;
    }

    if (ngx_http_discard_request_body(r) != NGX_OK) {
        r->keepalive = 0;
    }

    len = 0;

    for (cl = body; cl; cl = cl->next) {
        len += ngx_buf_size(cl->buf);
    }

    r->headers_out.status = status;
    r->headers_out.content_length_n = len;
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

    for (cl = body; cl->next; cl = cl->next) { /* void */ }

    cl->buf->last_buf = (r == r->main) ? 1 : 0;
    cl->buf->last_in_chain = 1;

    return ngx_http_output_filter(r, body);
}


ngx_ahava_rc_e
ngx_ahava_answer(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    ngx_uint_t status, ngx_chain_t *body)
{
    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: answer %ui", status);

    ctx->rc = ngx_ahava_send(r, status, body);

    return NGX_AHAVA_ANSWERED;
}


ngx_ahava_rc_e
ngx_ahava_answer_text(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    ngx_uint_t status, u_char *data, size_t len)
{
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    b = ngx_calloc_buf(r->pool);
    cl = ngx_alloc_chain_link(r->pool);
    if (b == NULL || cl == NULL) {
        ctx->rc = NGX_ERROR;
        return NGX_AHAVA_ANSWERED;
    }

    b->pos = data;
    b->last = data + len;
    b->memory = len ? 1 : 0;

    cl->buf = b;
    cl->next = NULL;

    return ngx_ahava_answer(r, ctx, status, cl);
}


/* Steals the reference to root */

ngx_ahava_rc_e
ngx_ahava_answer_json(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    ngx_uint_t status, json_t *root)
{
    ngx_int_t  rc;
    ngx_str_t  body;

    if (root == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    rc = ngx_ahava_json_dump(r->pool, root, &body);
    json_decref(root);

    if (rc != NGX_OK) {
        return ngx_ahava_fail(r, ctx);
    }

    return ngx_ahava_answer_text(r, ctx, status, body.data, body.len);
}


/* {"success":false,...}; steals the reference to details */

ngx_ahava_rc_e
ngx_ahava_answer_error(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    ngx_uint_t status, const char *code, const char *message, json_t *details)
{
    json_t  *root;

    root = json_pack("{s:b, s:s, s:s}", "success", 0, "error", message,
                     "code", code);

    if (root && details) {
        json_object_set_new(root, "details", details);

    } else if (details) {
        json_decref(details);
    }

    if (root == NULL) {
        ctx->rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        return NGX_AHAVA_ANSWERED;
    }

    return ngx_ahava_answer_json(r, ctx, status, root);
}


/* 500 INTERNAL: something of ours failed (memory, a bug, PostgreSQL) */

ngx_ahava_rc_e
ngx_ahava_fail(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    json_t     *root;
    ngx_int_t   rc;
    ngx_str_t   body;

    if (r->header_sent) {
        ctx->rc = NGX_ERROR;
        return NGX_AHAVA_ANSWERED;
    }

    root = json_pack("{s:b, s:s, s:s}", "success", 0, "error",
                     "Internal server error", "code", "INTERNAL");

    rc = root ? ngx_ahava_json_dump(r->pool, root, &body) : NGX_ERROR;

    if (root) {
        json_decref(root);
    }

    if (rc != NGX_OK) {
        /* nothing of ours can be sent: nginx's own 500 (error_page) */
        ctx->rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        return NGX_AHAVA_ANSWERED;
    }

    return ngx_ahava_answer_text(r, ctx, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                 body.data, body.len);
}


/* The code and message of each status nginx or we raise (SPEC §4) */

static void
ngx_ahava_status_code(ngx_uint_t *status, const char **code,
    const char **message)
{
    switch (*status) {

    case NGX_HTTP_BAD_REQUEST:
        *code = "VALIDATION_ERROR";
        *message = "Bad request";
        return;

    case NGX_HTTP_REQUEST_HEADER_TOO_LARGE:
        *status = NGX_HTTP_BAD_REQUEST;
        *code = "VALIDATION_ERROR";
        *message = "Request header too large";
        return;

    case NGX_HTTP_REQUEST_URI_TOO_LARGE:
        *code = "VALIDATION_ERROR";
        *message = "Request URI too long";
        return;

    case NGX_HTTP_UNAUTHORIZED:
        *code = "TOKEN_INVALID";
        *message = "Invalid token";
        return;

    case NGX_HTTP_FORBIDDEN:
        *code = "FORBIDDEN";
        *message = "Forbidden";
        return;

    case NGX_HTTP_NOT_FOUND:
        *code = "NOT_FOUND";
        *message = "Not found";
        return;

    case NGX_HTTP_NOT_ALLOWED:
        *code = "METHOD_NOT_ALLOWED";
        *message = "Method not allowed";
        return;

    case NGX_HTTP_REQUEST_TIME_OUT:
        *code = "VALIDATION_ERROR";
        *message = "Request timed out";
        return;

    case NGX_HTTP_REQUEST_ENTITY_TOO_LARGE:
        *code = "PAYLOAD_TOO_LARGE";
        *message = "Request body too large";
        return;

    case NGX_HTTP_RANGE_NOT_SATISFIABLE:
        /* a download's Range outside the file; Content-Range says its size */
        *code = "VALIDATION_ERROR";
        *message = "Range not satisfiable";
        return;

    case NGX_HTTP_UNSUPPORTED_MEDIA_TYPE:
        *code = "UNSUPPORTED_MEDIA_TYPE";
        *message = "Unsupported media type";
        return;

    case NGX_HTTP_TOO_MANY_REQUESTS:
        *code = "RATE_LIMITED";
        *message = "Too many requests";
        return;

    case NGX_HTTP_NOT_IMPLEMENTED:
        /* an unsupported Transfer-Encoding: the client's to fix */
        *code = "VALIDATION_ERROR";
        *message = "Not implemented (Transfer-Encoding)";
        return;

    case NGX_HTTP_VERSION_NOT_SUPPORTED:
        *code = "VALIDATION_ERROR";
        *message = "HTTP version not supported";
        return;

    case NGX_HTTP_BAD_GATEWAY:
    case NGX_HTTP_SERVICE_UNAVAILABLE:
    case NGX_HTTP_GATEWAY_TIME_OUT:
        *code = "SERVICE_UNAVAILABLE";
        *message = "Service unavailable, try again later";
        return;

    default:
        if (*status < 400 || *status > 599) {
            *status = NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        *code = (*status < 500) ? "VALIDATION_ERROR" : "INTERNAL";
        *message = (*status < 500) ? "Bad request" : "Internal server error";
        return;
    }
}


ngx_ahava_rc_e
ngx_ahava_answer_status(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    ngx_uint_t status)
{
    const char  *code, *message;

    ngx_ahava_status_code(&status, &code, &message);

    return ngx_ahava_answer_error(r, ctx, status, code, message, NULL);
}


/* For content handlers outside the pipeline (the error page) */

ngx_int_t
ngx_ahava_send_status_error(ngx_http_request_t *r, ngx_uint_t status)
{
    ngx_ahava_ctx_t  ctx;

    ngx_memzero(&ctx, sizeof(ngx_ahava_ctx_t));

    (void) ngx_ahava_answer_status(r, &ctx, status);

    return ctx.rc;
}


/* Appends {"field":...,"message":...} to details (a new array if NULL) */

json_t *
ngx_ahava_detail(json_t *details, const char *field, const char *fmt, ...)
{
    u_char   msg[256], *p;
    va_list  args;

    if (details == NULL) {
        details = json_array();
        if (details == NULL) {
            return NULL;
        }
    }

    va_start(args, fmt);
    p = ngx_vslprintf(msg, msg + sizeof(msg), fmt, args);
    va_end(args);

    json_array_append_new(details, json_pack("{s:s, s:s%}", "field", field,
                                             "message", msg, p - msg));
    return details;
}


json_t *
ngx_ahava_json_loadn(ngx_http_request_t *r, u_char *text, size_t len)
{
    json_t        *root;
    json_error_t   err;

    root = json_loadb((char *) text, len,
                      JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &err);

    if (root == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ahava: bad JSON from the database: %s", err.text);
    }

    return root;
}


/*
 * The upper bound of a row's object: every text byte may become \u00XX,
 * every ciphertext byte its plaintext escaped, times their fixed parts.
 */

size_t
ngx_ahava_row_size(PGresult *res, int row, int col, ngx_ahava_col_t *cols)
{
    int               n;
    size_t            size;
    ngx_ahava_col_t  *c;

    size = 2;

    for (c = cols; c->name; c++) {
        size += ngx_strlen(c->name) + 4;
        n = (c->type == NGX_AHAVA_COL_PERSON) ? 3 : 1;

        while (n--) {
            switch (c->type) {

            case NGX_AHAVA_COL_DECRYPT:
                size += 6 * ngx_ahava_crypto_decrypted_max_len(
                                PQgetlength(res, row, col))
                        + ngx_strlen(c->error_field) + 32;
                break;

            case NGX_AHAVA_COL_TIME:
                size += NGX_AHAVA_ISO_TIME_LEN + 8
                        + PQgetlength(res, row, col);
                break;

            default:
                size += 6 * PQgetlength(res, row, col) + 48;
                break;
            }

            col++;
        }
    }

    return size;
}


/*
 * "2026-11-24 10:04:00.12" (timestamp(3) in DateStyle ISO, which the
 * connections set) as "2026-11-24T10:04:00.120Z"
 */

static u_char *
ngx_ahava_iso_from_pg(u_char *p, u_char *t, size_t len)
{
    size_t  i;

    if (len < 19 || t[10] != ' ') {
        /* not the form expected (a year past 9999, BC): as PostgreSQL said */
        return ngx_ahava_json_string_write(p, t, len);
    }

    *p++ = '"';
    p = ngx_cpymem(p, t, 10);
    *p++ = 'T';
    p = ngx_cpymem(p, t + 11, 8);
    *p++ = '.';

    for (i = 0; i < 3; i++) {
        *p++ = (20 + i < len && t[19] == '.') ? t[20 + i] : '0';
    }

    *p++ = 'Z';
    *p++ = '"';

    return p;
}


/* The result columns cols takes */

int
ngx_ahava_row_ncols(ngx_ahava_col_t *cols)
{
    int               n;
    ngx_ahava_col_t  *c;

    n = 0;

    for (c = cols; c->name; c++) {
        n += (c->type == NGX_AHAVA_COL_PERSON) ? 3 : 1;
    }

    return n;
}


/*
 * Writes the object of cols from the row's columns starting at col.
 * NGX_AHAVA_ROW_OPEN leaves it open (more fields follow),
 * NGX_AHAVA_ROW_MORE continues an open one.  NULL on a failure of memory.
 */

u_char *
ngx_ahava_row_write(ngx_http_request_t *r, u_char *p, PGresult *res, int row,
    int col, ngx_ahava_col_t *cols, ngx_uint_t flags)
{
    return ngx_ahava_row_write_in(
               ngx_http_get_module_main_conf(r, ngx_ahava_core_module),
               r->pool, r->connection->log, p, res, row, col, cols, flags);
}


u_char *
ngx_ahava_row_write_in(ngx_ahava_main_conf_t *amcf, ngx_pool_t *pool,
    ngx_log_t *log, u_char *p, PGresult *res, int row, int col,
    ngx_ahava_col_t *cols, ngx_uint_t flags)
{
    u_char           *v;
    size_t            len;
    ngx_ahava_col_t  *c;

    if (!(flags & NGX_AHAVA_ROW_MORE)) {
        *p++ = '{';
    }

    for (c = cols; c->name; c++) {
        if (c != cols || (flags & NGX_AHAVA_ROW_MORE)) {
            *p++ = ',';
        }

        if (c->type == NGX_AHAVA_COL_DECRYPT) {
            p = ngx_ahava_decrypted_field_in(amcf, pool, log, p, res, row,
                                             col++, c->name, c->error_field);
            if (p == NULL) {
                return NULL;
            }

            continue;
        }

        *p++ = '"';
        p = ngx_cpymem(p, c->name, ngx_strlen(c->name));
        *p++ = '"';
        *p++ = ':';

        if (PQgetisnull(res, row, col)) {
            p = ngx_cpymem(p, "null", 4);
            col += (c->type == NGX_AHAVA_COL_PERSON) ? 3 : 1;
            continue;
        }

        v = (u_char *) PQgetvalue(res, row, col);
        len = PQgetlength(res, row, col);

        switch (c->type) {

        case NGX_AHAVA_COL_RAW:
            p = ngx_cpymem(p, v, len);
            break;

        case NGX_AHAVA_COL_BOOL:
            p = (v[0] == 't') ? ngx_cpymem(p, "true", 4)
                              : ngx_cpymem(p, "false", 5);
            break;

        case NGX_AHAVA_COL_TIME:
            p = ngx_ahava_iso_from_pg(p, v, len);
            break;

        case NGX_AHAVA_COL_PERSON:
            p = ngx_cpymem(p, "{\"id\":", sizeof("{\"id\":") - 1);
            p = ngx_ahava_json_string_write(p, v, len);
            p = ngx_cpymem(p, ",\"firstName\":",
                           sizeof(",\"firstName\":") - 1);
            p = ngx_ahava_row_string(p, res, row, col + 1);
            p = ngx_cpymem(p, ",\"lastName\":", sizeof(",\"lastName\":") - 1);
            p = ngx_ahava_row_string(p, res, row, col + 2);
            *p++ = '}';
            col += 2;
            break;

        default: /* NGX_AHAVA_COL_STRING */
            p = ngx_ahava_json_string_write(p, v, len);
            break;
        }

        col++;
    }

    if (!(flags & NGX_AHAVA_ROW_OPEN)) {
        *p++ = '}';
    }

    return p;
}


static u_char *
ngx_ahava_row_string(u_char *p, PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col)) {
        return ngx_cpymem(p, "null", 4);
    }

    return ngx_ahava_json_string_write(p, (u_char *) PQgetvalue(res, row, col),
                                       PQgetlength(res, row, col));
}


/* Column text of a result */

u_char *
ngx_ahava_pg_copy(u_char *p, PGresult *res, int row, int col)
{
    return ngx_cpymem(p, PQgetvalue(res, row, col),
                      PQgetlength(res, row, col));
}


ngx_int_t
ngx_ahava_pg_int(PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col)) {
        return NGX_ERROR;
    }

    return ngx_atoi((u_char *) PQgetvalue(res, row, col),
                    PQgetlength(res, row, col));
}


/*
 * A JSON object PostgreSQL built (column json_col, ending in '}') with one
 * more field: the decryption of the ciphertext in ct_col.  A value that
 * fails authentication (or is not UTF-8) is never returned as garbage: the
 * field is null and error_field says DECRYPTION_FAILED (SPEC §10).
 */

size_t
ngx_ahava_splice_size(PGresult *res, int row, int json_col, int ct_col)
{
    /* every plaintext byte may become \u00XX; names and the error field */
    return PQgetlength(res, row, json_col)
           + 6 * ngx_ahava_crypto_decrypted_max_len(
                     PQgetlength(res, row, ct_col))
           + 128;
}


u_char *
ngx_ahava_splice(ngx_http_request_t *r, u_char *p, PGresult *res, int row,
    int json_col, int ct_col, const char *field, const char *error_field)
{
    return ngx_ahava_splice_in(
               ngx_http_get_module_main_conf(r, ngx_ahava_core_module),
               r->pool, r->connection->log, p, res, row, json_col, ct_col,
               field, error_field);
}


/* the same for an owner that is not a request (the outbox relay) */

u_char *
ngx_ahava_splice_in(ngx_ahava_main_conf_t *amcf, ngx_pool_t *pool,
    ngx_log_t *log, u_char *p, PGresult *res, int row, int json_col,
    int ct_col, const char *field, const char *error_field)
{
    size_t  len;

    len = PQgetlength(res, row, json_col);

    if (len < 2) {
        return NULL;
    }

    p = ngx_cpymem(p, PQgetvalue(res, row, json_col), len - 1);

    if (len > 2) {
        *p++ = ',';                     /* not an empty object */
    }

    p = ngx_ahava_decrypted_field_in(amcf, pool, log, p, res, row, ct_col,
                                     field, error_field);
    if (p == NULL) {
        return NULL;
    }

    *p++ = '}';

    return p;
}


/* "field":"<plaintext>" or "field":null,"error_field":"DECRYPTION_FAILED" */

u_char *
ngx_ahava_decrypted_field(ngx_http_request_t *r, u_char *p, PGresult *res,
    int row, int col, const char *field, const char *error_field)
{
    return ngx_ahava_decrypted_field_in(
               ngx_http_get_module_main_conf(r, ngx_ahava_core_module),
               r->pool, r->connection->log, p, res, row, col, field,
               error_field);
}


static u_char *
ngx_ahava_decrypted_field_in(ngx_ahava_main_conf_t *amcf, ngx_pool_t *pool,
    ngx_log_t *log, u_char *p, PGresult *res, int row, int col,
    const char *field, const char *error_field)
{
    ngx_str_t  plain;
    ngx_int_t  rc;

    p = ngx_sprintf(p, "\"%s\":", field);

    if (PQgetisnull(res, row, col)) {
        return ngx_cpymem(p, "null", 4);
    }

    rc = ngx_ahava_decrypt_in(amcf, pool, (u_char *) PQgetvalue(res, row, col),
                              PQgetlength(res, row, col), &plain);

    if (rc == NGX_ERROR) {
        return NULL;
    }

    if (rc == NGX_DECLINED) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "ahava: decryption of \"%s\" failed", field);
        return ngx_sprintf(p, "null,\"%s\":\"DECRYPTION_FAILED\"",
                           error_field);
    }

    return ngx_ahava_json_string_write(p, plain.data, plain.len);
}


/*
 * The plaintext of a stored ciphertext (SPEC §10): NGX_OK; NGX_DECLINED
 * when no key authenticates it or it is not UTF-8; NGX_ERROR.
 */

ngx_int_t
ngx_ahava_decrypt(ngx_http_request_t *r, u_char *ct, size_t ct_len,
    ngx_str_t *plain)
{
    return ngx_ahava_decrypt_in(
               ngx_http_get_module_main_conf(r, ngx_ahava_core_module),
               r->pool, ct, ct_len, plain);
}


ngx_int_t
ngx_ahava_decrypt_in(ngx_ahava_main_conf_t *amcf, ngx_pool_t *pool,
    u_char *ct, size_t ct_len, ngx_str_t *plain)
{
    u_char  **keys;

    if (amcf->keys == NULL) {
        return NGX_DECLINED;
    }

    plain->data = ngx_pnalloc(pool,
                              ngx_ahava_crypto_decrypted_max_len(ct_len) + 1);
    if (plain->data == NULL) {
        return NGX_ERROR;
    }

    keys = amcf->keys->elts;

    if (ngx_ahava_crypto_decrypt((const u_char *const *) keys,
                                 amcf->keys->nelts, ct, ct_len, plain->data,
                                 &plain->len)
        != 0
        || !ngx_ahava_utf8_valid(plain->data, plain->len))
    {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/* The ciphertext of plain as a statement parameter (SPEC §10) */

char *
ngx_ahava_encrypt_param(ngx_http_request_t *r, const u_char *plain,
    size_t len)
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

    if (ngx_ahava_crypto_encrypt(keys[0], plain, len, out, &n) != 0) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ahava: encryption failed");
        return NULL;
    }

    out[n] = '\0';

    return (char *) out;
}
