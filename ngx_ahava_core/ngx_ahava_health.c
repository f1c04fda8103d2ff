
/*
 * GET /health (SPEC §1) answers from the state the pool and the Redis
 * client already keep, so it never queues behind API requests for a
 * PostgreSQL connection; and the JSON error page for nginx's own errors
 * on API locations (SPEC §4).
 */


#include "ngx_ahava_core.h"


static ngx_ahava_rc_e ngx_ahava_health(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);


ngx_ahava_route_t  ngx_ahava_health_routes[] = {

    /* SPEC §1: GET /health, no token */
    { NGX_HTTP_GET, "/health", NULL, NULL, ngx_ahava_health, NULL,
      NGX_AHAVA_ROUTE_PUBLIC, 0 },

    { 0, NULL, NULL, NULL, NULL, NULL, 0, 0 }
};


static ngx_ahava_rc_e
ngx_ahava_health(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    json_t                 *root;
    ngx_int_t               pg_ok, redis_ok;
    ngx_ahava_main_conf_t  *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_ahava_core_module);

    pg_ok = (ngx_ahava_pg_healthy(amcf->pg) == NGX_OK);
    redis_ok = (ngx_ahava_redis_healthy(amcf->redis) == NGX_OK);

    root = json_pack("{s:s, s:s, s:s}",
                     "status", (pg_ok && redis_ok) ? "ok" : "error",
                     "postgres", pg_ok ? "ok" : "down",
                     "redis", redis_ok ? "ok" : "down");

    return ngx_ahava_answer_json(r, ctx, (pg_ok && redis_ok)
                                         ? NGX_HTTP_OK
                                         : NGX_HTTP_SERVICE_UNAVAILABLE,
                                 root);
}


/*
 * location = /_ahava_error { internal; ahava_error_page; } — what
 * error_page sends nginx's own errors to.  Two of them are told apart by
 * what nginx refused: a path that decodes to a NUL byte names nothing
 * (404, SPEC §4), and an Authorization header too long for nginx's header
 * buffers is a bad token (401), not a bad request.
 */

/*
 * A download that ends in an error (a Range past the end: 416) had set its
 * file's headers before nginx's error_page took over: they are not the
 * error's.  The others (Allow, Content-Range, Retry-After, nosniff) stay.
 */
static void
ngx_ahava_error_page_clear(ngx_http_request_t *r)
{
    ngx_uint_t        i, k;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    static ngx_str_t  file_headers[] = {
        ngx_string("Cache-Control"),
        ngx_string("Content-Disposition"),
    };

    for (part = &r->headers_out.headers.part; part; part = part->next) {
        h = part->elts;

        for (i = 0; i < part->nelts; i++) {
            for (k = 0; k < sizeof(file_headers) / sizeof(ngx_str_t); k++) {
                if (h[i].key.len == file_headers[k].len
                    && ngx_strncasecmp(h[i].key.data, file_headers[k].data,
                                       h[i].key.len) == 0)
                {
                    h[i].hash = 0;
                }
            }
        }
    }

    if (r->headers_out.etag) {
        r->headers_out.etag->hash = 0;
        r->headers_out.etag = NULL;
    }

    if (r->headers_out.last_modified) {
        r->headers_out.last_modified->hash = 0;
        r->headers_out.last_modified = NULL;
    }

    r->headers_out.last_modified_time = -1;
}


ngx_int_t
ngx_ahava_error_page_handler(ngx_http_request_t *r)
{
    u_char      *p, *last;
    ngx_uint_t   status;

    status = r->err_status ? r->err_status : NGX_HTTP_NOT_FOUND;

    if (status == NGX_HTTP_BAD_REQUEST && r->uri_start && r->uri_end
        && r->uri_end > r->uri_start)
    {
        last = r->args_start ? r->args_start : r->uri_end;

        for (p = r->uri_start; p + 2 < last; p++) {
            if (p[0] == '%' && p[1] == '0' && p[2] == '0') {
                status = NGX_HTTP_NOT_FOUND;
                break;
            }
        }
    }

    /*
     * error_page turns 494 into 400: an Authorization line that never
     * ended in nginx's buffer, and was never parsed, was too long
     */
    if (status == NGX_HTTP_BAD_REQUEST
        && r->headers_in.authorization == NULL
        && r->header_name_start && r->header_name_end
        && r->header_name_end - r->header_name_start
           == sizeof("Authorization") - 1
        && ngx_strncasecmp(r->header_name_start, (u_char *) "Authorization",
                           sizeof("Authorization") - 1) == 0
        && r->header_in
        && r->header_name_start >= r->header_in->start
        && r->header_name_start < r->header_in->last
        && ngx_strlchr(r->header_name_start, r->header_in->last, '\n')
           == NULL)
    {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "ahava: authentication failed: token too long "
                      "(TOKEN_INVALID)");
        status = NGX_HTTP_UNAUTHORIZED;
    }

    ngx_ahava_error_page_clear(r);

    /* what nginx sends as the status (ngx_http_send_header) */
    r->err_status = status;

    r->keepalive = r->keepalive && status < 500;

    return ngx_ahava_send_status_error(r, status);
}
