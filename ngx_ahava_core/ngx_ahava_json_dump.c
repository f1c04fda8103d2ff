
/*
 * JSON text of a jansson tree, written into an nginx pool.  jansson prints
 * every real with one fixed precision: 17 digits turn -26.2 into
 * -26.199999999999999, 15 digits round values that need more.  Here each
 * real gets the shortest form that reads back as the same double, as
 * JavaScript's JSON.stringify does; the rest is plain compact JSON.
 */


#include "ngx_ahava_core.h"


#define NGX_AHAVA_REAL_LEN  32


static size_t ngx_ahava_json_size(json_t *v);
static u_char *ngx_ahava_json_write(u_char *p, json_t *v);
static size_t ngx_ahava_json_real(double d, u_char *buf);


ngx_int_t
ngx_ahava_json_dump(ngx_pool_t *pool, json_t *root, ngx_str_t *out)
{
    size_t   size;
    u_char  *p;

    size = ngx_ahava_json_size(root);

    out->data = ngx_pnalloc(pool, size + 1);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_ahava_json_write(out->data, root);
    *p = '\0';
    out->len = p - out->data;

    return (out->len == size) ? NGX_OK : NGX_ERROR;
}


static size_t
ngx_ahava_json_size(json_t *v)
{
    u_char       buf[NGX_AHAVA_REAL_LEN];
    size_t       size, i;
    json_t      *e;
    const char  *key;

    switch (json_typeof(v)) {

    case JSON_OBJECT:
        size = 2;
        i = 0;

        json_object_foreach(v, key, e) {
            size += (i++ ? 1 : 0)
                    + ngx_ahava_json_string_size((u_char *) key, ngx_strlen(key)) + 1
                    + ngx_ahava_json_size(e);
        }

        return size;

    case JSON_ARRAY:
        size = 2;

        json_array_foreach(v, i, e) {
            size += (i ? 1 : 0) + ngx_ahava_json_size(e);
        }

        return size;

    case JSON_STRING:
        return ngx_ahava_json_string_size((u_char *) json_string_value(v),
                                          json_string_length(v));

    case JSON_INTEGER:
        return ngx_sprintf(buf, "%L", (int64_t) json_integer_value(v)) - buf;

    case JSON_REAL:
        return ngx_ahava_json_real(json_real_value(v), buf);

    case JSON_TRUE:
        return sizeof("true") - 1;

    case JSON_FALSE:
        return sizeof("false") - 1;

    default: /* JSON_NULL */
        return sizeof("null") - 1;
    }
}


static u_char *
ngx_ahava_json_write(u_char *p, json_t *v)
{
    size_t       i;
    json_t      *e;
    const char  *key;

    switch (json_typeof(v)) {

    case JSON_OBJECT:
        *p++ = '{';
        i = 0;

        json_object_foreach(v, key, e) {
            if (i++) {
                *p++ = ',';
            }

            p = ngx_ahava_json_string_write(p, (u_char *) key, ngx_strlen(key));
            *p++ = ':';
            p = ngx_ahava_json_write(p, e);
        }

        *p++ = '}';
        return p;

    case JSON_ARRAY:
        *p++ = '[';

        json_array_foreach(v, i, e) {
            if (i) {
                *p++ = ',';
            }

            p = ngx_ahava_json_write(p, e);
        }

        *p++ = ']';
        return p;

    case JSON_STRING:
        return ngx_ahava_json_string_write(p, (u_char *) json_string_value(v),
                                           json_string_length(v));

    case JSON_INTEGER:
        return ngx_sprintf(p, "%L", (int64_t) json_integer_value(v));

    case JSON_REAL:
        return p + ngx_ahava_json_real(json_real_value(v), p);

    case JSON_TRUE:
        return ngx_cpymem(p, "true", 4);

    case JSON_FALSE:
        return ngx_cpymem(p, "false", 5);

    default: /* JSON_NULL */
        return ngx_cpymem(p, "null", 4);
    }
}


/* The shortest %g that reads back as d (jansson never holds NaN or inf) */

static size_t
ngx_ahava_json_real(double d, u_char *buf)
{
    int   n, precision;
    char  tmp[NGX_AHAVA_REAL_LEN];

    n = 0;

    for (precision = 15; precision <= 17; precision++) {
        n = snprintf(tmp, sizeof(tmp), "%.*g", precision, d);

        if (strtod(tmp, NULL) == d) {
            break;
        }
    }

    ngx_memcpy(buf, tmp, n);

    return n;
}


/* The JSON string literal of UTF-8 text (escapes for the controls) */

size_t
ngx_ahava_json_string_size(const u_char *s, size_t len)
{
    size_t  i, size;
    u_char  c;

    size = 2;

    for (i = 0; i < len; i++) {
        c = (u_char) s[i];

        if (c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t'
            || c == '\b' || c == '\f')
        {
            size += 2;

        } else if (c < 0x20 || c == 0x7f) {
            size += 6;

        } else {
            size++;
        }
    }

    return size;
}


/* UTF-8 passes through (jansson validated it); control bytes escaped */

u_char *
ngx_ahava_json_string_write(u_char *p, const u_char *s, size_t len)
{
    size_t  i;
    u_char  c;

    static u_char  hex[] = "0123456789abcdef";

    *p++ = '"';

    for (i = 0; i < len; i++) {
        c = (u_char) s[i];

        switch (c) {

        case '"':
        case '\\':
            *p++ = '\\';
            *p++ = c;
            break;

        case '\n':
            *p++ = '\\';
            *p++ = 'n';
            break;

        case '\r':
            *p++ = '\\';
            *p++ = 'r';
            break;

        case '\t':
            *p++ = '\\';
            *p++ = 't';
            break;

        case '\b':
            *p++ = '\\';
            *p++ = 'b';
            break;

        case '\f':
            *p++ = '\\';
            *p++ = 'f';
            break;

        default:
            if (c < 0x20 || c == 0x7f) {
                p = ngx_cpymem(p, "\\u00", 4);
                *p++ = hex[c >> 4];
                *p++ = hex[c & 0xf];

            } else {
                *p++ = c;
            }
        }
    }

    *p++ = '"';

    return p;
}
