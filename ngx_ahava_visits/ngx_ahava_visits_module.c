
/*
 * ngx_ahava_visits_module: /api/visits and /api/exports (SPEC §5).  The
 * routes are the table below, a row per line of the SPEC; the reads are
 * here, the mutations in ngx_ahava_visits_update.c, the SQL of both in
 * ngx_ahava_visits_sql.c, visit reports in ngx_ahava_visits_export.c.
 * Each answer is one prepared statement.
 */


#include "ngx_ahava_visits.h"


static ngx_int_t ngx_ahava_visits_postconfiguration(ngx_conf_t *cf);
static ngx_ahava_rc_e ngx_ahava_visits_list(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_visits_listed(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_visit_detail(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_visit_detailed(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);


const char  *ngx_ahava_visit_statuses[] = {
    "SCHEDULED", "EN_ROUTE", "ARRIVED", "IN_PROGRESS", "COMPLETED",
    "CANCELLED", NULL
};

/* a visit as the list and the mutations show it, from its columns */
ngx_ahava_col_t  ngx_ahava_visit_cols[] = {
    { "id", NGX_AHAVA_COL_STRING, NULL },
    { "bookingId", NGX_AHAVA_COL_STRING, NULL },
    { "status", NGX_AHAVA_COL_STRING, NULL },
    { "patientId", NGX_AHAVA_COL_STRING, NULL },
    { "nurseId", NGX_AHAVA_COL_STRING, NULL },
    { "doctorId", NGX_AHAVA_COL_STRING, NULL },
    { "scheduledStart", NGX_AHAVA_COL_TIME, NULL },
    { "actualStart", NGX_AHAVA_COL_TIME, NULL },
    { "actualEnd", NGX_AHAVA_COL_TIME, NULL },
    { "doctorReview", NGX_AHAVA_COL_STRING, NULL },
    { "doctorRating", NGX_AHAVA_COL_RAW, NULL },
    { "createdAt", NGX_AHAVA_COL_TIME, NULL },
    { "updatedAt", NGX_AHAVA_COL_TIME, NULL },
    { "patient", NGX_AHAVA_COL_PERSON, NULL },
    { "nurse", NGX_AHAVA_COL_PERSON, NULL },
    { "doctor", NGX_AHAVA_COL_PERSON, NULL },
    { NULL, 0, NULL }
};

static const char  *ngx_ahava_visits_sort_by[] = {
    "createdAt", "scheduledStart", "updatedAt", "status", NULL
};

static const char  *ngx_ahava_visits_sort_order[] = {
    "desc", "asc", NULL
};


/* GET /api/visits: its query arguments, in ctx->args in this order */
enum {
    NGX_AHAVA_ARG_LIMIT = 0,
    NGX_AHAVA_ARG_OFFSET,
    NGX_AHAVA_ARG_STATUS,
    NGX_AHAVA_ARG_SORT_BY,
    NGX_AHAVA_ARG_SORT_ORDER
};

static ngx_ahava_arg_t  ngx_ahava_visits_list_args[] = {
    { "limit", NGX_AHAVA_ARG_UINT, 20, 1, 100, NULL },
    { "offset", NGX_AHAVA_ARG_UINT, 0, 0, 100000000, NULL },
    { "status", NGX_AHAVA_ARG_ENUM, -1, 0, 0, ngx_ahava_visit_statuses },
    { "sortBy", NGX_AHAVA_ARG_ENUM, 0, 0, 0, ngx_ahava_visits_sort_by },
    { "sortOrder", NGX_AHAVA_ARG_ENUM, 0, 0, 0, ngx_ahava_visits_sort_order },
    { NULL, 0, 0, 0, 0, NULL }
};


/* SPEC §5, row by row */

static ngx_ahava_route_t  ngx_ahava_visits_routes[] = {

    { NGX_HTTP_GET, "/api/visits", ngx_ahava_visits_list_args, NULL,
      ngx_ahava_visits_list, NULL, 0, 0 },

    { NGX_HTTP_GET, "/api/visits/:", NULL, NULL,
      ngx_ahava_visit_detail, NULL, 0, 0 },

    { NGX_HTTP_PATCH, "/api/visits/:/status", NULL,
      ngx_ahava_visit_status_fields, ngx_ahava_visit_status, NULL, 0, 0 },

    { NGX_HTTP_POST, "/api/visits/:/location", NULL,
      ngx_ahava_visit_location_fields, ngx_ahava_visit_location, NULL, 0, 0 },

    { NGX_HTTP_POST, "/api/visits/:/nurse-report", NULL,
      ngx_ahava_visit_report_fields, ngx_ahava_visit_report, NULL, 0, 0 },

    { NGX_HTTP_POST, "/api/visits/:/doctor-review", NULL,
      ngx_ahava_visit_review_fields, ngx_ahava_visit_review, NULL, 0, 0 },

    { NGX_HTTP_POST, "/api/visits/:/cancel", NULL,
      ngx_ahava_visit_cancel_fields, ngx_ahava_visit_cancel, NULL, 0, 0 },

    { NGX_HTTP_POST, "/api/visits/:/assign-nurse", NULL,
      ngx_ahava_visit_nurse_fields, ngx_ahava_visit_assign_nurse, NULL, 0, 0 },

    { NGX_HTTP_POST, "/api/visits/:/assign-doctor", NULL,
      ngx_ahava_visit_doctor_fields, ngx_ahava_visit_assign_doctor, NULL,
      0, 0 },

    { NGX_HTTP_POST, "/api/visits/:/export", NULL, NULL,
      ngx_ahava_visit_export, NULL, 0, 0 },

    { NGX_HTTP_GET, "/api/exports/:", NULL, NULL,
      ngx_ahava_export_status, NULL, 0, 0 },

    { 0, NULL, NULL, NULL, NULL, NULL, 0, 0 }
};


static ngx_command_t  ngx_ahava_visits_commands[] = {

    { ngx_string("ahava_visits"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_ahava_conf_set_routes,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      ngx_ahava_visits_routes },

      ngx_null_command
};


static ngx_http_module_t  ngx_ahava_visits_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_ahava_visits_postconfiguration,    /* postconfiguration */

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


static ngx_int_t
ngx_ahava_visits_postconfiguration(ngx_conf_t *cf)
{
    if (ngx_ahava_export_declare(cf) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_ahava_visits_declare(cf);
}


/* GET /api/visits: role-filtered, paginated, with the exact total */

static ngx_ahava_rc_e
ngx_ahava_visits_list(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    ngx_int_t              status;
    ngx_uint_t             i;
    ngx_ahava_pg_query_t  *q;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: visits list");

    status = ctx->args[NGX_AHAVA_ARG_STATUS];

    /* the variant of the caller's role, status filter, sortBy, sortOrder */
    i = NGX_AHAVA_VISITS_LIST_INDEX(ctx->user.role - 1, status >= 0,
                                    ctx->args[NGX_AHAVA_ARG_SORT_BY],
                                    ctx->args[NGX_AHAVA_ARG_SORT_ORDER] == 0);

    q = ngx_ahava_query_create(r, &ngx_ahava_visits_list_stmts[i]);
    if (q == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    q->values[0] = (char *) ctx->user.id;
    q->values[1] = (status >= 0) ? (char *) ngx_ahava_visit_statuses[status]
                                 : NULL;

    if (ngx_ahava_param_uint(r, q, 2, ctx->args[NGX_AHAVA_ARG_LIMIT])
        != NGX_OK
        || ngx_ahava_param_uint(r, q, 3, ctx->args[NGX_AHAVA_ARG_OFFSET])
           != NGX_OK)
    {
        return ngx_ahava_fail(r, ctx);
    }

    return ngx_ahava_query(r, ctx, q, ngx_ahava_visits_listed);
}


static ngx_ahava_rc_e
ngx_ahava_visits_listed(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    int        row, n;
    u_char    *body, *p;
    size_t     len;
    PGresult  *res;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: visits listed");

    if (ctx->query->rc != NGX_OK) {
        return ngx_ahava_query_failed(r, ctx);
    }

    res = ctx->query->result;
    n = PQntuples(res);

    if (n == 0) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ahava: unexpected visits list result");
        return ngx_ahava_fail(r, ctx);
    }

    /* an empty page is one row of NULLs after the total */
    if (PQgetisnull(res, 0, 1)) {
        n = 0;
    }

    len = sizeof("{\"success\":true,\"data\":[],\"meta\":{\"limit\":,"
                 "\"offset\":,\"total\":}}")
          + 2 * NGX_INT_T_LEN + PQgetlength(res, 0, 0);

    for (row = 0; row < n; row++) {
        len += ngx_ahava_row_size(res, row, 1, ngx_ahava_visit_cols) + 1;
    }

    body = ngx_pnalloc(r->pool, len);
    if (body == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    p = ngx_cpymem(body, "{\"success\":true,\"data\":[",
                   sizeof("{\"success\":true,\"data\":[") - 1);

    for (row = 0; row < n; row++) {
        if (row) {
            *p++ = ',';
        }

        p = ngx_ahava_row_write(r, p, res, row, 1, ngx_ahava_visit_cols, 0);
        if (p == NULL) {
            return ngx_ahava_fail(r, ctx);
        }
    }

    p = ngx_sprintf(p, "],\"meta\":{\"limit\":%i,\"offset\":%i,\"total\":",
                    ctx->args[NGX_AHAVA_ARG_LIMIT],
                    ctx->args[NGX_AHAVA_ARG_OFFSET]);
    p = ngx_ahava_pg_copy(p, res, 0, 0);
    *p++ = '}';
    *p++ = '}';

    return ngx_ahava_answer_text(r, ctx, NGX_HTTP_OK, body, p - body);
}


/* GET /api/visits/:id: participants and admins; anyone else 404 */

static ngx_ahava_rc_e
ngx_ahava_visit_detail(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    ngx_ahava_pg_query_t  *q;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: visit detail");

    q = ngx_ahava_query_create(r,
                               &ngx_ahava_visits_stmts[NGX_AHAVA_VISIT_DETAIL]);
    if (q == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    q->values[0] = (char *) ctx->ids[0].data;
    q->values[1] = (char *) ctx->user.id;
    q->values[2] = (ctx->user.role == NGX_AHAVA_ROLE_ADMIN) ? "t" : "f";

    return ngx_ahava_query(r, ctx, q, ngx_ahava_visit_detailed);
}


/*
 * Rows: the visit (kind 0) with its nurseReport ciphertext, then its
 * messages (kind 1) with theirs; decrypted and spliced into one object.
 */

static ngx_ahava_rc_e
ngx_ahava_visit_detailed(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    int        row, n;
    u_char    *body, *p;
    size_t     len;
    PGresult  *res;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: visit detailed");

    if (ctx->query->rc != NGX_OK) {
        return ngx_ahava_query_failed(r, ctx);
    }

    res = ctx->query->result;
    n = PQntuples(res);

    if (n == 0) {
        /* absent and not yours look the same (SPEC §3) */
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_NOT_FOUND, "NOT_FOUND",
                                      "Visit not found", NULL);
    }

    len = sizeof("{\"success\":true,\"data\":,\"messages\":[]}}");

    for (row = 0; row < n; row++) {
        len += ngx_ahava_splice_size(res, row, 1, 2) + 1;
    }

    body = ngx_pnalloc(r->pool, len);
    if (body == NULL || PQgetlength(res, 0, 1) < 2) {
        return ngx_ahava_fail(r, ctx);
    }

    p = ngx_cpymem(body, "{\"success\":true,\"data\":",
                   sizeof("{\"success\":true,\"data\":") - 1);

    /* the visit's object, open: its report and its messages follow */
    p = ngx_cpymem(p, PQgetvalue(res, 0, 1), PQgetlength(res, 0, 1) - 1);
    *p++ = ',';

    p = ngx_ahava_decrypted_field(r, p, res, 0, 2, "nurseReport",
                                  "nurseReportError");
    if (p == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    p = ngx_cpymem(p, ",\"messages\":[", sizeof(",\"messages\":[") - 1);

    for (row = 1; row < n; row++) {
        if (row > 1) {
            *p++ = ',';
        }

        p = ngx_ahava_splice(r, p, res, row, 1, 2, "content", "contentError");
        if (p == NULL) {
            return ngx_ahava_fail(r, ctx);
        }
    }

    p = ngx_cpymem(p, "]}}", 3);

    return ngx_ahava_answer_text(r, ctx, NGX_HTTP_OK, body, p - body);
}
