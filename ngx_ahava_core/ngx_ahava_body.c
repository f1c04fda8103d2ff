
/*
 * Request bodies (SPEC §4): JSON only (application/json, UTF-8), at most
 * 64 KiB, an object, validated field by field against the route's table —
 * unknown fields, wrong types, out-of-range values, non-finite numbers and
 * U+0000 in a field stored as plain text are a 400 with details.
 *
 * The body is read only after authentication, and only for routes that
 * take one; a Content-Length over the limit is answered before a byte of
 * it is read.
 */


#include "ngx_ahava_core.h"

#include <math.h>


static ngx_int_t ngx_ahava_request_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static ngx_int_t ngx_ahava_json_content_type(ngx_http_request_t *r);
static void ngx_ahava_body_ready(ngx_http_request_t *r);
static ngx_ahava_rc_e ngx_ahava_body_parse(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static void ngx_ahava_body_cleanup(void *data);
static size_t ngx_ahava_utf8_length(const char *s, size_t len);
static ngx_int_t ngx_ahava_validate_ids(json_t *v, ngx_ahava_field_t *f);


/* a reason appended to details: the field is invalid */
static ngx_http_request_body_filter_pt  ngx_ahava_next_request_body_filter;


#define ngx_ahava_invalid(details, ...)                                      \
    (ngx_ahava_detail(details, __VA_ARGS__), NGX_DECLINED)


/*
 * The limit of a body whose length the headers do not give (chunked):
 * counted as it is decoded, refused (413) the moment it is passed — the
 * location's client_max_body_size is not used on API locations, because
 * nginx would apply it before authentication.
 */

ngx_int_t
ngx_ahava_body_filter_init(ngx_conf_t *cf)
{
    ngx_ahava_next_request_body_filter = ngx_http_top_request_body_filter;
    ngx_http_top_request_body_filter = ngx_ahava_request_body_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_ahava_request_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_chain_t      *cl;
    ngx_ahava_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_ahava_core_module);

    if (ctx && ctx->body_limit) {
        for (cl = in; cl; cl = cl->next) {
            ctx->body_size += ngx_buf_size(cl->buf);
        }

        if (ctx->body_size > ctx->body_limit) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "ahava: request body over %uz bytes",
                          ctx->body_limit);
            return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
        }
    }

    return ngx_ahava_next_request_body_filter(r, in);
}


ngx_ahava_rc_e
ngx_ahava_step_body(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    ngx_int_t  rc;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: body");

    if (ctx->route->fields == NULL) {
        /* a route without a body: any sent is discarded with the answer */
        return NGX_AHAVA_NEXT;
    }

    if (r->headers_in.content_length_n > NGX_AHAVA_BODY_MAX) {
        return ngx_ahava_answer_status(r, ctx,
                                       NGX_HTTP_REQUEST_ENTITY_TOO_LARGE);
    }

    if (r->headers_in.content_length_n <= 0 && !r->headers_in.chunked) {
        /* an absent body is an empty object: required fields say the rest */
        return ngx_ahava_body_parse(r, ctx);
    }

    /*
     * The body reader takes its own reference on the request and stands in
     * for ours while it reads: if nginx itself ends the request meanwhile
     * (a bad chunk, a timeout) nothing of ours is left over, and nothing
     * of ours runs after nginx answered.
     */

    r->main->count--;
    ctx->body_waiting = 0;
    ctx->body_sync = 0;
    ctx->body_limit = NGX_AHAVA_BODY_MAX;

    rc = ngx_http_read_client_request_body(r, ngx_ahava_body_ready);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        r->main->count++;

        /* the body is half read: the connection cannot be reused */
        r->keepalive = 0;
        r->lingering_close = 1;

        return ngx_ahava_answer_status(r, ctx, rc);
    }

    if (ctx->body_sync) {
        return ngx_ahava_body_parse(r, ctx);
    }

    ctx->body_waiting = 1;

    return NGX_AHAVA_ASYNC;
}


/* application/json, with no charset or charset=utf-8 */

static ngx_int_t
ngx_ahava_json_content_type(ngx_http_request_t *r)
{
    u_char     *p, *last, *name, *value;
    size_t      nlen, vlen;
    ngx_str_t  *ct;

    static ngx_str_t  json = ngx_string("application/json");

    if (r->headers_in.content_type == NULL) {
        return NGX_DECLINED;
    }

    ct = &r->headers_in.content_type->value;
    p = ct->data;
    last = p + ct->len;

    if (ct->len < json.len || ngx_strncasecmp(p, json.data, json.len) != 0) {
        return NGX_DECLINED;
    }

    p += json.len;

    for ( ;; ) {
        while (p < last && (*p == ' ' || *p == '\t')) {
            p++;
        }

        if (p == last) {
            return NGX_OK;
        }

        if (*p++ != ';') {
            return NGX_DECLINED;                /* "application/jsonx" */
        }

        while (p < last && (*p == ' ' || *p == '\t')) {
            p++;
        }

        name = p;

        while (p < last && *p != '=' && *p != ';') {
            p++;
        }

        nlen = p - name;

        while (nlen && (name[nlen - 1] == ' ' || name[nlen - 1] == '\t')) {
            nlen--;
        }

        if (p == last || *p != '=') {
            if (nlen == 0) {
                continue;                       /* "application/json;" */
            }

            return NGX_DECLINED;
        }

        p++;

        if (p < last && *p == '"') {
            value = ++p;

            while (p < last && *p != '"') {
                p++;
            }

            if (p == last) {
                return NGX_DECLINED;
            }

            vlen = p++ - value;

        } else {
            value = p;

            while (p < last && *p != ';' && *p != ' ' && *p != '\t') {
                p++;
            }

            vlen = p - value;
        }

        if (nlen == sizeof("charset") - 1
            && ngx_strncasecmp(name, (u_char *) "charset", nlen) == 0
            && !(vlen == sizeof("utf-8") - 1
                 && ngx_strncasecmp(value, (u_char *) "utf-8", vlen) == 0)
            && !(vlen == sizeof("utf8") - 1
                 && ngx_strncasecmp(value, (u_char *) "utf8", vlen) == 0))
        {
            return NGX_DECLINED;
        }
    }
}


static void
ngx_ahava_body_ready(ngx_http_request_t *r)
{
    ngx_ahava_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_ahava_core_module);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: body read%s", ctx->body_waiting ? "" : " at once");

    /* the reader's reference on the request is ours from now on */

    if (!ctx->body_waiting) {
        /* inside ngx_http_read_client_request_body(): the step goes on */
        ctx->body_sync = 1;
        return;
    }

    ctx->body_waiting = 0;
    ctx->done = ngx_ahava_body_parse;

    ngx_ahava_resume(r, ctx);
}


static ngx_ahava_rc_e
ngx_ahava_body_parse(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    u_char              *p, *buf;
    size_t               size;
    ssize_t              n;
    json_t              *root, *details;
    ngx_buf_t           *b;
    ngx_chain_t         *cl;
    json_error_t         err;
    ngx_pool_cleanup_t  *cln;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: body parse");

    size = 0;

    for (cl = r->request_body ? r->request_body->bufs : NULL; cl;
         cl = cl->next)
    {
        /* a chunked body's raw bytes (sizes, extensions) can outgrow the
         * buffer while the body itself is within the limit: nginx writes
         * it to a temp file then, of at most NGX_AHAVA_BODY_MAX bytes (the
         * body filter counted them), read back below */
        size += cl->buf->in_file ? cl->buf->file_last - cl->buf->file_pos
                                 : cl->buf->last - cl->buf->pos;
    }

    if (size > NGX_AHAVA_BODY_MAX) {
        return ngx_ahava_answer_status(r, ctx,
                                       NGX_HTTP_REQUEST_ENTITY_TOO_LARGE);
    }

    /* a body too large is that first, whatever its type */
    if (size && ngx_ahava_json_content_type(r) != NGX_OK) {
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                                      "UNSUPPORTED_MEDIA_TYPE",
                                      "Content-Type must be application/json "
                                      "(UTF-8)", NULL);
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    if (size == 0) {
        root = json_object();

    } else {
        buf = ngx_pnalloc(r->pool, size);
        if (buf == NULL) {
            return ngx_ahava_fail(r, ctx);
        }

        p = buf;

        /* the last buffer of a chunked body may be empty, pos NULL */
        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            b = cl->buf;

            if (b->in_file) {
                n = ngx_read_file(b->file, p, b->file_last - b->file_pos,
                                  b->file_pos);

                if (n != b->file_last - b->file_pos) {
                    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                                  "ahava: request body temp file read "
                                  "short: %z", n);
                    return ngx_ahava_fail(r, ctx);
                }

                p += n;

            } else if (b->last != b->pos) {
                p = ngx_cpymem(p, b->pos, b->last - b->pos);
            }
        }

        root = json_loadb((char *) buf, size,
                          JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &err);

        if (root == NULL) {
            return ngx_ahava_answer_error(r, ctx, NGX_HTTP_BAD_REQUEST,
                       "VALIDATION_ERROR", "Request body is not valid JSON",
                       ngx_ahava_detail(NULL, "body", "%s", err.text));
        }
    }

    if (root == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    cln->handler = ngx_ahava_body_cleanup;
    cln->data = root;

    if (!json_is_object(root)) {
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_BAD_REQUEST,
                   "VALIDATION_ERROR", "Request body must be a JSON object",
                   ngx_ahava_detail(NULL, "body", "must be a JSON object"));
    }

    details = json_array();
    if (details == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    if (ngx_ahava_validate(root, ctx->route->fields, details) != NGX_OK) {
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_BAD_REQUEST,
                                      "VALIDATION_ERROR",
                                      "Invalid request body", details);
    }

    json_decref(details);

    ctx->body = root;

    return NGX_AHAVA_NEXT;
}


static void
ngx_ahava_body_cleanup(void *data)
{
    json_decref((json_t *) data);
}


/* Unicode code points of a UTF-8 string jansson already validated */

static size_t
ngx_ahava_utf8_length(const char *s, size_t len)
{
    size_t  i, n;

    n = 0;

    for (i = 0; i < len; i++) {
        if (((u_char) s[i] & 0xc0) != 0x80) {
            n++;
        }
    }

    return n;
}


/*
 * Checks body against fields (terminated by a NULL name): every field
 * known, of its type and in its range.  NGX_OK, or NGX_DECLINED with the
 * reasons appended to details.
 */

ngx_int_t
ngx_ahava_validate(json_t *body, ngx_ahava_field_t *fields, json_t *details)
{
    double              d;
    size_t              len;
    json_t             *v;
    ngx_int_t           rc;
    const char         *key, **e;
    ngx_ahava_field_t  *f;

    rc = NGX_OK;

    json_object_foreach(body, key, v) {
        for (f = fields; f->name; f++) {
            if (ngx_strcmp(f->name, key) == 0) {
                break;
            }
        }

        if (f->name == NULL) {
            rc = ngx_ahava_invalid(details, key, "\"%s\" is not allowed",
                                        key);
        }
    }

    for (f = fields; f->name; f++) {
        v = json_object_get(body, f->name);

        if (v == NULL || (json_is_null(v) && !f->required)) {
            if (f->required) {
                rc = ngx_ahava_invalid(details, f->name,
                                            "\"%s\" is required", f->name);
            }

            continue;
        }

        switch (f->type) {

        case NGX_AHAVA_FIELD_STRING:
        case NGX_AHAVA_FIELD_TEXT:
        case NGX_AHAVA_FIELD_ENUM:
        case NGX_AHAVA_FIELD_ID:

            if (!json_is_string(v)) {
                rc = ngx_ahava_invalid(details, f->name,
                                            "\"%s\" must be a string",
                                            f->name);
                continue;
            }

            len = json_string_length(v);

            if (f->type == NGX_AHAVA_FIELD_ID) {
                if (ngx_ahava_valid_id((u_char *) json_string_value(v), len)
                    != NGX_OK)
                {
                    rc = ngx_ahava_invalid(details, f->name,
                             "\"%s\" must be an id: 1-64 characters of "
                             "A-Z, a-z, 0-9, _ and -", f->name);
                }

                continue;
            }

            if (f->type == NGX_AHAVA_FIELD_ENUM) {
                for (e = f->values; *e; e++) {
                    if (ngx_strcmp(*e, json_string_value(v)) == 0) {
                        break;
                    }
                }

                if (*e == NULL) {
                    rc = ngx_ahava_invalid(details, f->name,
                                                "\"%s\" has an invalid value",
                                                f->name);
                }

                continue;
            }

            /* PostgreSQL text cannot hold U+0000: only encrypted fields
             * (stored as ciphertext) may carry it, never cut */
            if (f->type == NGX_AHAVA_FIELD_STRING
                && ngx_strlen(json_string_value(v)) != len)
            {
                rc = ngx_ahava_invalid(details, f->name,
                         "\"%s\" must not contain U+0000", f->name);
                continue;
            }

            len = ngx_ahava_utf8_length(json_string_value(v), len);

            if (len < (size_t) f->min || len > (size_t) f->max) {
                rc = ngx_ahava_invalid(details, f->name,
                         "\"%s\" must be %.0f to %.0f characters long",
                         f->name, f->min, f->max);
            }

            continue;

        case NGX_AHAVA_FIELD_INTEGER:

            /* JSON has one number type: 5.0 is the integer 5, as in
             * JavaScript; the handlers then read it as an integer */
            if (json_is_real(v)
                && json_real_value(v) >= f->min
                && json_real_value(v) <= f->max
                && json_real_value(v) == floor(json_real_value(v))
                && json_object_set_new(body, f->name,
                       json_integer((json_int_t) json_real_value(v)))
                   == 0)
            {
                v = json_object_get(body, f->name);
            }

            if (!json_is_integer(v)
                || (double) json_integer_value(v) < f->min
                || (double) json_integer_value(v) > f->max)
            {
                rc = ngx_ahava_invalid(details, f->name,
                         "\"%s\" must be an integer from %.0f to %.0f",
                         f->name, f->min, f->max);
            }

            continue;

        case NGX_AHAVA_FIELD_NUMBER:

            /* JSON has no NaN or Infinity; jansson refuses overflow */
            d = json_is_number(v) ? json_number_value(v) : 0;

            if (!json_is_number(v) || !isfinite(d) || d < f->min
                || d > f->max)
            {
                rc = ngx_ahava_invalid(details, f->name,
                         "\"%s\" must be a number from %g to %g",
                         f->name, f->min, f->max);
            }

            continue;

        case NGX_AHAVA_FIELD_ID_ARRAY:

            if (ngx_ahava_validate_ids(v, f) != NGX_OK) {
                rc = ngx_ahava_invalid(details, f->name,
                         "\"%s\" must be an array of %.0f to %.0f distinct "
                         "ids", f->name, f->min, f->max);
            }

            continue;

        default: /* NGX_AHAVA_FIELD_BOOLEAN */

            if (!json_is_boolean(v)) {
                rc = ngx_ahava_invalid(details, f->name,
                                            "\"%s\" must be true or false",
                                            f->name);
            }

            continue;
        }
    }

    return rc;
}


static ngx_int_t
ngx_ahava_validate_ids(json_t *v, ngx_ahava_field_t *f)
{
    size_t   i, j, n;
    json_t  *id, *other;

    if (!json_is_array(v)) {
        return NGX_DECLINED;
    }

    n = json_array_size(v);

    if (n < (size_t) f->min || n > (size_t) f->max) {
        return NGX_DECLINED;
    }

    for (i = 0; i < n; i++) {
        id = json_array_get(v, i);

        if (!json_is_string(id)
            || ngx_ahava_valid_id((u_char *) json_string_value(id),
                                  json_string_length(id))
               != NGX_OK)
        {
            return NGX_DECLINED;
        }

        /* at most 100 ids: quadratic is fine */
        for (j = 0; j < i; j++) {
            other = json_array_get(v, j);

            if (ngx_strcmp(json_string_value(other), json_string_value(id))
                == 0)
            {
                return NGX_DECLINED;
            }
        }
    }

    return NGX_OK;
}
