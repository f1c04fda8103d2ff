
/*
 * ngx_ahava_visits_module: /api/visits (SPEC §5).
 *
 *   GET /api/visits        role-filtered, paginated list with total
 *   GET /api/visits/:id    detail: participants, payments, GPS history,
 *                          decrypted nurse report, latest 50 messages
 *
 * Each answer is one SQL statement; PostgreSQL builds the JSON of the rows
 * and we only decrypt what is encrypted at rest.
 */


#include "ngx_ahava_core.h"
#include "ngx_ahava_visits.h"


static ngx_int_t ngx_ahava_visits_handler(ngx_http_request_t *r);
static ngx_int_t ngx_ahava_visits_step_auth(ngx_http_request_t *r);
static ngx_int_t ngx_ahava_visits_authorized(ngx_http_request_t *r);
static ngx_int_t ngx_ahava_visits_list(ngx_http_request_t *r);
static ngx_int_t ngx_ahava_visits_list_done(ngx_http_request_t *r,
    ngx_ahava_pg_query_t *q);
static ngx_int_t ngx_ahava_visits_detail(ngx_http_request_t *r);
static ngx_int_t ngx_ahava_visits_detail_done(ngx_http_request_t *r,
    ngx_ahava_pg_query_t *q);


/* who sees which visits: $1 is the caller's id */
static const char *ngx_ahava_visits_filter[] = {
    "FALSE AND $1::text IS NULL",                       /* no role */
    "v.\"patientId\" = $1",                             /* PATIENT */
    "v.\"nurseId\" = $1",                               /* NURSE */
    "v.\"doctorId\" = $1",                              /* DOCTOR */
    "$1::text IS NOT NULL"                              /* ADMIN */
};


const char *ngx_ahava_visit_statuses[] = {
    "SCHEDULED", "EN_ROUTE", "ARRIVED", "IN_PROGRESS", "COMPLETED",
    "CANCELLED", NULL
};

static const char *ngx_ahava_visits_sort_by[] = {
    "createdAt", "scheduledStart", "updatedAt", "status", NULL
};

static const char *ngx_ahava_visits_sort_order[] = {
    "desc", "asc", NULL
};


static ngx_command_t  ngx_ahava_visits_commands[] = {

    { ngx_string("ahava_visits"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_ahava_conf_set_handler,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      (void *) ngx_ahava_visits_handler },

      ngx_null_command
};


static ngx_http_module_t  ngx_ahava_visits_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_ahava_visits_module = {
    NGX_MODULE_V1,
    &ngx_ahava_visits_module_ctx,          /* module context */
    ngx_ahava_visits_commands,             /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


/* Routing: the path after /api/visits */

static ngx_int_t
ngx_ahava_visits_handler(ngx_http_request_t *r)
{
    u_char                  *p, *last, *slash;
    ngx_int_t                rc;
    ngx_str_t                action;
    ngx_ahava_ctx_t         *ctx;
    ngx_ahava_visits_ctx_t  *vctx;

    static ngx_str_t  prefix = ngx_string("/api/visits");

    if (r->uri.len < prefix.len
        || ngx_strncmp(r->uri.data, prefix.data, prefix.len) != 0)
    {
        return ngx_ahava_send_status_error(r, NGX_HTTP_NOT_FOUND);
    }

    ctx = ngx_ahava_get_ctx(r);
    vctx = ngx_pcalloc(r->pool, sizeof(ngx_ahava_visits_ctx_t));
    if (ctx == NULL || vctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->data = vctx;

    p = r->uri.data + prefix.len;
    last = r->uri.data + r->uri.len;

    if (p < last && *p != '/') {
        return ngx_ahava_send_status_error(r, NGX_HTTP_NOT_FOUND);
    }

    if (p < last) {
        p++;
    }

    if (p < last && last[-1] == '/') {
        last--;
    }

    if (p == last) {
        vctx->route = NGX_AHAVA_VISITS_LIST;

    } else {
        slash = ngx_strlchr(p, last, '/');

        vctx->visit_id.data = p;
        vctx->visit_id.len = (slash ? slash : last) - p;

        if (ngx_ahava_valid_id(vctx->visit_id.data, vctx->visit_id.len)
            != NGX_OK)
        {
            /* a malformed id names nothing (SPEC §4) */
            return ngx_ahava_send_status_error(r, NGX_HTTP_NOT_FOUND);
        }

        vctx->route = NGX_AHAVA_VISITS_DETAIL;

        if (slash) {
            action.data = slash + 1;
            action.len = last - action.data;

            vctx->action = ngx_ahava_visit_action(&action);
            if (vctx->action == NULL) {
                return ngx_ahava_send_status_error(r, NGX_HTTP_NOT_FOUND);
            }

            vctx->route = NGX_AHAVA_VISITS_UPDATE;
        }
    }

    if (vctx->route == NGX_AHAVA_VISITS_UPDATE) {
        if (!(r->method & ngx_ahava_visit_action_method(vctx->action))) {
            return ngx_ahava_send_status_error(r, NGX_HTTP_NOT_ALLOWED);
        }

        return ngx_ahava_read_json_body(r, ngx_ahava_visits_step_auth);
    }

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_ahava_send_status_error(r, NGX_HTTP_NOT_ALLOWED);
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_ahava_content(r, ngx_ahava_visits_step_auth);
}


static ngx_int_t
ngx_ahava_visits_step_auth(ngx_http_request_t *r)
{
    return ngx_ahava_authenticate(r, ngx_ahava_visits_authorized);
}


static ngx_int_t
ngx_ahava_visits_authorized(ngx_http_request_t *r)
{
    ngx_ahava_ctx_t         *ctx;
    ngx_ahava_visits_ctx_t  *vctx;

    ctx = ngx_ahava_get_ctx(r);
    vctx = ctx->data;

    switch (vctx->route) {

    case NGX_AHAVA_VISITS_LIST:
        return ngx_ahava_visits_list(r);

    case NGX_AHAVA_VISITS_DETAIL:
        return ngx_ahava_visits_detail(r);

    default: /* NGX_AHAVA_VISITS_UPDATE */
        return ngx_ahava_visit_update(r);
    }
}


static ngx_int_t
ngx_ahava_visits_list(ngx_http_request_t *r)
{
    u_char                  *sql, *last;
    json_t                  *details;
    ngx_int_t                status, sort_by, sort_order;
    ngx_uint_t               limit, offset, bad;
    const char              *dir;
    ngx_ahava_ctx_t         *ctx;
    ngx_ahava_pg_query_t    *q;
    ngx_ahava_visits_ctx_t  *vctx;

    static const char *sort_column[] = {
        "\"createdAt\"", "\"scheduledStart\"", "\"updatedAt\"", "status"
    };

    ctx = ngx_ahava_get_ctx(r);

    details = json_array();
    if (details == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    bad = 0;
    bad |= ngx_ahava_arg_uint(r, "limit", 20, 1, 100, &limit, details);
    bad |= ngx_ahava_arg_uint(r, "offset", 0, 0, 100000000, &offset, details);
    bad |= ngx_ahava_arg_enum(r, "status", ngx_ahava_visit_statuses, -1,
                              &status, details);
    bad |= ngx_ahava_arg_enum(r, "sortBy", ngx_ahava_visits_sort_by, 0,
                              &sort_by, details);
    bad |= ngx_ahava_arg_enum(r, "sortOrder", ngx_ahava_visits_sort_order, 0,
                              &sort_order, details);

    if (bad) {
        return ngx_ahava_send_error(r, NGX_HTTP_BAD_REQUEST,
                                    "VALIDATION_ERROR",
                                    "Invalid query parameters", details);
    }

    json_decref(details);

    sql = ngx_pnalloc(r->pool, 4096);
    if (sql == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    dir = sort_order ? "ASC" : "DESC";

    /* only whitelisted fragments go into the text; values are bound */
    last = ngx_snprintf(sql, 4095,
        "WITH f AS (SELECT v.* FROM " NGX_AHAVA_VISITS_WITH_PATIENT
        " WHERE %s AND ($2::text IS NULL OR v.status = $2::\"VisitStatus\"))"
        " SELECT (SELECT count(*) FROM f),"
        " (SELECT coalesce(json_agg(json_build_object(" NGX_AHAVA_VISIT_JSON
        ") ORDER BY v.%s %s, v.id %s), '[]'::json) FROM"
        " (SELECT * FROM f ORDER BY f.%s %s, f.id %s"
        " LIMIT $3::int OFFSET $4::int) v)",
        ngx_ahava_visits_filter[ctx->user.role],
        sort_column[sort_by], dir, dir, sort_column[sort_by], dir, dir);
    *last = '\0';

    q = ngx_ahava_pg_query(r, (char *) sql, ngx_ahava_visits_list_done);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    q->nparams = 4;
    q->values[0] = ngx_ahava_user_param(r);
    q->values[1] = (status >= 0) ? (char *) ngx_ahava_visit_statuses[status]
                                 : NULL;
    q->values[2] = ngx_pnalloc(r->pool, NGX_INT_T_LEN + 1);
    q->values[3] = ngx_pnalloc(r->pool, NGX_INT_T_LEN + 1);

    if (q->values[0] == NULL || q->values[2] == NULL || q->values[3] == NULL)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_sprintf((u_char *) q->values[2], "%ui%Z", limit);
    ngx_sprintf((u_char *) q->values[3], "%ui%Z", offset);

    vctx = ctx->data;
    vctx->limit = limit;
    vctx->offset = offset;

    return ngx_ahava_pg_run(r, q);
}


static ngx_int_t
ngx_ahava_visits_list_done(ngx_http_request_t *r, ngx_ahava_pg_query_t *q)
{
    u_char                  *p;
    size_t                   len;
    ngx_str_t                body, total, items;
    ngx_ahava_ctx_t         *ctx;
    ngx_ahava_visits_ctx_t  *vctx;

    if (q->rc != NGX_OK) {
        return ngx_ahava_pg_result_error(r, q);
    }

    if (PQntuples(q->result) != 1
        || ngx_ahava_pg_str(r, q->result, 0, 0, &total) != NGX_OK
        || ngx_ahava_pg_str(r, q->result, 0, 1, &items) != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ahava: unexpected visits list result");
        return ngx_ahava_send_status_error(r,
                                           NGX_HTTP_INTERNAL_SERVER_ERROR);
    }

    ctx = ngx_ahava_get_ctx(r);
    vctx = ctx->data;

    /* PostgreSQL wrote the items' JSON: splice it into the envelope */
    len = sizeof("{\"success\":true,\"data\":,\"meta\":{\"limit\":,"
                 "\"offset\":,\"total\":}}") - 1
          + items.len + 2 * NGX_INT_T_LEN + total.len;

    body.data = ngx_pnalloc(r->pool, len);
    if (body.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf(body.data,
                    "{\"success\":true,\"data\":%V,\"meta\":{\"limit\":%ui,"
                    "\"offset\":%ui,\"total\":%V}}",
                    &items, vctx->limit, vctx->offset, &total);
    body.len = p - body.data;

    return ngx_ahava_send_raw(r, NGX_HTTP_OK, &body);
}


static ngx_int_t
ngx_ahava_visits_detail(ngx_http_request_t *r)
{
    u_char                  *sql, *last;
    ngx_ahava_ctx_t         *ctx;
    ngx_ahava_pg_query_t    *q;
    ngx_ahava_visits_ctx_t  *vctx;

    ctx = ngx_ahava_get_ctx(r);
    vctx = ctx->data;

    sql = ngx_pnalloc(r->pool, 4096);
    if (sql == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    last = ngx_snprintf(sql, 4095,
        "SELECT json_build_object(" NGX_AHAVA_VISIT_JSON ","
        " 'gpsCoordinates', coalesce(v.\"gpsCoordinates\", '[]'::jsonb),"
        " 'payments', (SELECT coalesce(json_agg(json_build_object("
        "'id', p.id, 'amountInCents', p.\"amountInCents\","
        " 'currency', p.currency, 'status', p.status,"
        " 'paystackReference', p.\"paystackReference\","
        " 'createdAt', " NGX_AHAVA_TS("p.\"createdAt\"") ","
        " 'updatedAt', " NGX_AHAVA_TS("p.\"updatedAt\"") ")"
        " ORDER BY p.\"createdAt\", p.id), '[]'::json)"
        " FROM payments p WHERE p.\"visitId\" = v.id)),"
        " v.\"nurseReport\","
        " (SELECT coalesce(json_agg(json_build_object("
        NGX_AHAVA_MESSAGE_JSON ")"
        " ORDER BY m.\"createdAt\", m.id), '[]'::json)"
        " FROM (SELECT * FROM messages WHERE \"visitId\" = v.id"
        " ORDER BY \"createdAt\" DESC, id DESC LIMIT 50) m)"
        " FROM " NGX_AHAVA_VISITS_WITH_PATIENT
        " WHERE v.id = $2 AND %s",
        ngx_ahava_visits_filter[ctx->user.role]);
    *last = '\0';

    q = ngx_ahava_pg_query(r, (char *) sql, ngx_ahava_visits_detail_done);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    q->nparams = 2;
    q->values[0] = ngx_ahava_user_param(r);
    q->values[1] = ngx_pnalloc(r->pool, vctx->visit_id.len + 1);

    if (q->values[0] == NULL || q->values[1] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_cpystrn((u_char *) q->values[1], vctx->visit_id.data,
                vctx->visit_id.len + 1);

    return ngx_ahava_pg_run(r, q);
}


static ngx_int_t
ngx_ahava_visits_detail_done(ngx_http_request_t *r, ngx_ahava_pg_query_t *q)
{
    json_t     *visit, *messages, *root;
    ngx_str_t   text, report;

    if (q->rc != NGX_OK) {
        return ngx_ahava_pg_result_error(r, q);
    }

    if (PQntuples(q->result) == 0) {
        /* absent and not yours look the same (SPEC §3) */
        return ngx_ahava_send_error(r, NGX_HTTP_NOT_FOUND, "NOT_FOUND",
                                    "Visit not found", NULL);
    }

    if (ngx_ahava_pg_str(r, q->result, 0, 0, &text) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    visit = ngx_ahava_json_loadn(r, &text);
    if (visit == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    root = NULL;

    if (ngx_ahava_pg_str(r, q->result, 0, 1, &report) == NGX_ERROR
        || ngx_ahava_decrypt_field(r, visit, "nurseReport",
                                   "nurseReportError", &report)
           == NGX_ERROR
        || ngx_ahava_pg_str(r, q->result, 0, 2, &text) != NGX_OK)
    {
        goto failed;
    }

    messages = ngx_ahava_json_loadn(r, &text);
    if (messages == NULL) {
        goto failed;
    }

    json_object_set_new(visit, "messages", messages);

    if (ngx_ahava_decrypt_messages(r, messages) != NGX_OK) {
        goto failed;
    }

    root = json_pack("{s:b, s:o}", "success", 1, "data", visit);

    return ngx_ahava_send_json(r, NGX_HTTP_OK, root);

failed:

    json_decref(visit);
    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}
