
/*
 * GET /health (SPEC §1) answers from the state the pool and the Redis
 * client already keep, so it never queues behind API requests for a
 * PostgreSQL connection; and the JSON error page for nginx's own errors.
 */


#include "ngx_ahava_core.h"


ngx_int_t
ngx_ahava_health_handler(ngx_http_request_t *r)
{
    json_t                 *root;
    ngx_int_t               rc, pg_ok, redis_ok;
    ngx_ahava_main_conf_t  *amcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_ahava_send_status_error(r, NGX_HTTP_NOT_ALLOWED);
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    amcf = ngx_http_get_module_main_conf(r, ngx_ahava_core_module);

    pg_ok = (ngx_ahava_pg_healthy(amcf->pg) == NGX_OK);
    redis_ok = (ngx_ahava_redis_healthy(amcf->redis) == NGX_OK);

    root = json_pack("{s:s, s:s, s:s}",
                     "status", (pg_ok && redis_ok) ? "ok" : "error",
                     "postgres", pg_ok ? "ok" : "down",
                     "redis", redis_ok ? "ok" : "down");

    return ngx_ahava_send_json(r, (pg_ok && redis_ok)
                                  ? NGX_HTTP_OK
                                  : NGX_HTTP_SERVICE_UNAVAILABLE,
                               root);
}


/* location @ahava_error { ahava_error_page; } — for error_page */

ngx_int_t
ngx_ahava_error_page_handler(ngx_http_request_t *r)
{
    ngx_uint_t  status;

    status = r->err_status ? r->err_status : NGX_HTTP_NOT_FOUND;

    (void) ngx_http_discard_request_body(r);

    r->keepalive = r->keepalive && status < 500;

    return ngx_ahava_send_status_error(r, status);
}
