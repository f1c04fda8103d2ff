
/*
 * Request bodies (SPEC §4): JSON only, UTF-8, at most 64 KiB, an object,
 * and validated field by field against a table — unknown fields, wrong
 * types, out-of-range values and non-finite numbers are a 400 with details.
 */


#include "ngx_ahava_core.h"

#include <math.h>


static void ngx_ahava_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_ahava_body_parse(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static void ngx_ahava_body_cleanup(void *data);
static ngx_int_t ngx_ahava_validate_ids(json_t *v, ngx_ahava_field_t *f);
static ngx_int_t ngx_ahava_field_detail(json_t *details, const char *field,
    const char *fmt, ...);


/*
 * Reads the body, then runs next.  Called from a content handler, which
 * returns what this returns.
 */

ngx_int_t
ngx_ahava_read_json_body(ngx_http_request_t *r, ngx_ahava_step_pt next)
{
    ngx_int_t         rc;
    ngx_ahava_ctx_t  *ctx;

    ctx = ngx_ahava_get_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (r->headers_in.content_length_n > NGX_AHAVA_BODY_MAX) {
        return ngx_ahava_send_status_error(r,
                                     NGX_HTTP_REQUEST_ENTITY_TOO_LARGE);
    }

    ctx->body_next = next;

    rc = ngx_http_read_client_request_body(r, ngx_ahava_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_ahava_body_handler(ngx_http_request_t *r)
{
    ngx_int_t         rc;
    ngx_ahava_ctx_t  *ctx;

    ctx = ngx_ahava_get_ctx(r);

    rc = ngx_ahava_body_parse(r, ctx);

    if (rc == NGX_OK) {
        rc = ctx->body_next(r);
    }

    if (rc != NGX_AGAIN) {
        ngx_http_finalize_request(r, rc);
    }
}


static ngx_int_t
ngx_ahava_body_parse(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    u_char              *p, *buf;
    off_t                size;
    ssize_t              n;
    json_t              *root;
    ngx_buf_t           *b;
    ngx_str_t           *ct;
    ngx_chain_t         *cl;
    json_error_t         err;
    ngx_pool_cleanup_t  *cln;

    size = 0;

    if (r->request_body) {
        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            size += ngx_buf_size(cl->buf);
        }
    }

    if (size > NGX_AHAVA_BODY_MAX) {
        return ngx_ahava_send_status_error(r,
                                     NGX_HTTP_REQUEST_ENTITY_TOO_LARGE);
    }

    if (size == 0) {
        /* an absent body is an empty object: required fields say the rest */
        root = json_object();
        goto parsed;
    }

    ct = r->headers_in.content_type ? &r->headers_in.content_type->value
                                    : NULL;

    if (ct == NULL || ct->len < sizeof("application/json") - 1
        || ngx_strncasecmp(ct->data, (u_char *) "application/json",
                           sizeof("application/json") - 1) != 0
        || (ct->len > sizeof("application/json") - 1
            && ct->data[sizeof("application/json") - 1] != ';'
            && ct->data[sizeof("application/json") - 1] != ' '))
    {
        return ngx_ahava_send_error(r, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                                    "UNSUPPORTED_MEDIA_TYPE",
                                    "Content-Type must be application/json",
                                    NULL);
    }

    buf = ngx_pnalloc(r->pool, (size_t) size);
    if (buf == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = buf;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (!b->in_file) {
            p = ngx_cpymem(p, b->pos, b->last - b->pos);
            continue;
        }

        /* only with a client_body_buffer_size under 64k: a small read */
        n = ngx_read_file(b->file, p, (size_t) (b->file_last - b->file_pos),
                          b->file_pos);

        if (n != b->file_last - b->file_pos) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        p += n;
    }

    root = json_loadb((char *) buf, p - buf, JSON_REJECT_DUPLICATES, &err);

    if (root == NULL) {
        return ngx_ahava_send_error(r, NGX_HTTP_BAD_REQUEST,
                                    "VALIDATION_ERROR",
                                    "Request body is not valid JSON",
                                    json_pack("[{s:s, s:s}]", "field", "body",
                                              "message", err.text));
    }

parsed:

    if (root == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        json_decref(root);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_ahava_body_cleanup;
    cln->data = root;

    if (!json_is_object(root)) {
        return ngx_ahava_send_error(r, NGX_HTTP_BAD_REQUEST,
                                    "VALIDATION_ERROR",
                                    "Request body must be a JSON object",
                                    json_pack("[{s:s, s:s}]", "field", "body",
                                              "message",
                                              "must be a JSON object"));
    }

    ctx->body = root;

    return NGX_OK;
}


static void
ngx_ahava_body_cleanup(void *data)
{
    json_decref((json_t *) data);
}


/* Unicode code points of a UTF-8 string jansson already validated */

size_t
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
            rc = ngx_ahava_field_detail(details, key, "\"%s\" is not allowed",
                                        key);
        }
    }

    for (f = fields; f->name; f++) {
        v = json_object_get(body, f->name);

        if (v == NULL || (json_is_null(v) && !f->required)) {
            if (f->required) {
                rc = ngx_ahava_field_detail(details, f->name,
                                            "\"%s\" is required", f->name);
            }

            continue;
        }

        switch (f->type) {

        case NGX_AHAVA_FIELD_STRING:
        case NGX_AHAVA_FIELD_ENUM:
        case NGX_AHAVA_FIELD_ID:

            if (!json_is_string(v)) {
                rc = ngx_ahava_field_detail(details, f->name,
                                            "\"%s\" must be a string",
                                            f->name);
                continue;
            }

            len = json_string_length(v);

            if (f->type == NGX_AHAVA_FIELD_ID) {
                if (ngx_ahava_valid_id((u_char *) json_string_value(v), len)
                    != NGX_OK)
                {
                    rc = ngx_ahava_field_detail(details, f->name,
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
                    rc = ngx_ahava_field_detail(details, f->name,
                                                "\"%s\" has an invalid value",
                                                f->name);
                }

                continue;
            }

            len = ngx_ahava_utf8_length(json_string_value(v), len);

            if (len < (size_t) f->min || len > (size_t) f->max) {
                rc = ngx_ahava_field_detail(details, f->name,
                         "\"%s\" must be %.0f to %.0f characters long",
                         f->name, f->min, f->max);
            }

            continue;

        case NGX_AHAVA_FIELD_INTEGER:

            if (!json_is_integer(v)
                || (double) json_integer_value(v) < f->min
                || (double) json_integer_value(v) > f->max)
            {
                rc = ngx_ahava_field_detail(details, f->name,
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
                rc = ngx_ahava_field_detail(details, f->name,
                         "\"%s\" must be a number from %g to %g",
                         f->name, f->min, f->max);
            }

            continue;

        case NGX_AHAVA_FIELD_ID_ARRAY:

            if (ngx_ahava_validate_ids(v, f) != NGX_OK) {
                rc = ngx_ahava_field_detail(details, f->name,
                         "\"%s\" must be an array of %.0f to %.0f distinct "
                         "ids", f->name, f->min, f->max);
            }

            continue;

        default: /* NGX_AHAVA_FIELD_BOOLEAN */

            if (!json_is_boolean(v)) {
                rc = ngx_ahava_field_detail(details, f->name,
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


static ngx_int_t
ngx_ahava_field_detail(json_t *details, const char *field, const char *fmt,
    ...)
{
    char     msg[256];
    va_list  args;

    va_start(args, fmt);
    vsnprintf(msg, sizeof(msg), fmt, args);
    va_end(args);

    json_array_append_new(details, json_pack("{s:s, s:s}", "field", field,
                                             "message", msg));
    return NGX_DECLINED;
}
