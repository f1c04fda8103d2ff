
/*
 * Visit reports (SPEC §5, §9): POST /api/visits/:id/export asks for one —
 * an export_jobs row (PENDING) and its pdf-export job, committed together
 * (the job through the outbox); GET /api/exports/:id says how it stands.
 * ahava-worker renders the PDF and completes the row.
 */


#include "ngx_ahava_visits.h"


/* a caller's exports waiting or rendering at once (SPEC is silent; the
 * pdf-export queue renders 10 a minute): more answer 429 */
#define NGX_AHAVA_EXPORTS_IN_PROGRESS  "5"


static ngx_ahava_rc_e ngx_ahava_visit_export_queued(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_export_read(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);


/* an export as the API shows it */
static ngx_ahava_col_t  ngx_ahava_export_cols[] = {
    { "id", NGX_AHAVA_COL_STRING, NULL },
    { "type", NGX_AHAVA_COL_STRING, NULL },
    { "status", NGX_AHAVA_COL_STRING, NULL },
    { "filters", NGX_AHAVA_COL_RAW, NULL },
    { "fileUrl", NGX_AHAVA_COL_STRING, NULL },
    { "fileSize", NGX_AHAVA_COL_RAW, NULL },
    { "checksum", NGX_AHAVA_COL_STRING, NULL },
    { "createdAt", NGX_AHAVA_COL_TIME, NULL },
    { "completedAt", NGX_AHAVA_COL_TIME, NULL },
    { "error", NGX_AHAVA_COL_STRING, NULL },
    { NULL, 0, NULL }
};


enum {
    NGX_AHAVA_EXPORT_CREATE = 0,
    NGX_AHAVA_EXPORT_READ,
    NGX_AHAVA_EXPORT_NSTMTS
};

/* $1 the path's id, $2 the caller, $3 the caller's role */
static ngx_ahava_stmt_t  ngx_ahava_export_stmts[] = {

    /* POST /api/visits/:id/export — participants, admin; $4 the new id.
     * The caller's export of this visit still in progress is answered
     * again rather than queued twice (a double tap, a retry), and no more
     * than NGX_AHAVA_EXPORTS_IN_PROGRESS of the caller's wait at once: the
     * queue renders 10 a minute.  A function (sql/011) takes one caller's
     * requests one at a time, so both hold under concurrent requests.  One
     * row: the visit seen (0: not one the caller may see), the new
     * export's outbox row, created, the export in progress */
    { ngx_string("visit export"),
      "SELECT seen, outbox, created, \"inProgress\""
      " FROM ahava_export_request($1, $2, $3, $4, "
      NGX_AHAVA_EXPORTS_IN_PROGRESS ")",
      4, 0, "" },

    /* GET /api/exports/:id — its owner, admin */
    { ngx_string("export read"),
      "SELECT e.id, e.type, e.status, e.filters, e.\"fileUrl\","
      " e.\"fileSize\", e.checksum, e.\"createdAt\", e.\"completedAt\","
      " e.error FROM export_jobs e WHERE e.id = $1"
      " AND (e.\"userId\" = $2 OR $3::text = 'ADMIN')",
      3, 0, "" },
};


ngx_int_t
ngx_ahava_export_declare(ngx_conf_t *cf)
{
    return ngx_ahava_declare(cf, ngx_ahava_export_stmts,
                             NGX_AHAVA_EXPORT_NSTMTS);
}


static ngx_ahava_pg_query_t *
ngx_ahava_export_query(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    ngx_uint_t stmt)
{
    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: export \"%V\"", &ngx_ahava_export_stmts[stmt].name);

    return ngx_ahava_visits_role_query(r, ctx, &ngx_ahava_export_stmts[stmt]);
}


/* POST /api/visits/:id/export */

ngx_ahava_rc_e
ngx_ahava_visit_export(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    u_char                *id;
    ngx_ahava_pg_query_t  *q;

    q = ngx_ahava_export_query(r, ctx, NGX_AHAVA_EXPORT_CREATE);
    id = ngx_pnalloc(r->pool, NGX_AHAVA_NEW_ID_LEN + 1);
    if (q == NULL || id == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    ngx_ahava_id_generate(id);
    id[NGX_AHAVA_NEW_ID_LEN] = '\0';
    q->values[3] = (char *) id;

    return ngx_ahava_query(r, ctx, q, ngx_ahava_visit_export_queued);
}


static ngx_ahava_rc_e
ngx_ahava_visit_export_queued(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    char      *id;
    u_char    *body, *p;
    PGresult  *res;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: export queued");

    if (ctx->query->rc != NGX_OK) {
        return ngx_ahava_query_failed(r, ctx);
    }

    res = ctx->query->result;

    if (PQntuples(res) != 1) {
        return ngx_ahava_fail(r, ctx);
    }

    if (PQgetvalue(res, 0, 0)[0] == '0') {
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_NOT_FOUND, "NOT_FOUND",
                                      "Visit not found", NULL);
    }

    if (!PQgetisnull(res, 0, 3)) {
        /* this visit's export of the caller's is still in progress */
        id = PQgetvalue(res, 0, 3);

    } else if (PQgetvalue(res, 0, 2)[0] == '0') {
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_TOO_MANY_REQUESTS,
                                      "RATE_LIMITED",
                                      "Too many exports in progress", NULL);

    } else {
        /* committed: the pdf-export job goes to Redis */
        ngx_ahava_outbox_relay((u_char *) PQgetvalue(res, 0, 1),
                               PQgetlength(res, 0, 1));
        id = ctx->query->values[3];
    }

    body = ngx_pnalloc(r->pool, 64 + ngx_strlen(id));
    if (body == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    p = ngx_sprintf(body, "{\"success\":true,\"data\":{\"exportJobId\":\"%s\""
                    "}}", id);

    return ngx_ahava_answer_text(r, ctx, NGX_HTTP_ACCEPTED, body, p - body);
}


/* GET /api/exports/:id */

ngx_ahava_rc_e
ngx_ahava_export_status(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    ngx_ahava_pg_query_t  *q;

    q = ngx_ahava_export_query(r, ctx, NGX_AHAVA_EXPORT_READ);
    if (q == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    return ngx_ahava_query(r, ctx, q, ngx_ahava_export_read);
}


static ngx_ahava_rc_e
ngx_ahava_export_read(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    u_char    *body, *p;
    size_t     len;
    PGresult  *res;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: export read");

    if (ctx->query->rc != NGX_OK) {
        return ngx_ahava_query_failed(r, ctx);
    }

    res = ctx->query->result;

    if (PQntuples(res) != 1) {
        /* another's export is no more found than one that does not exist */
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_NOT_FOUND, "NOT_FOUND",
                                      "Export not found", NULL);
    }

    len = sizeof("{\"success\":true,\"data\":}")
          + ngx_ahava_row_size(res, 0, 0, ngx_ahava_export_cols);

    body = ngx_pnalloc(r->pool, len);
    if (body == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    p = ngx_cpymem(body, "{\"success\":true,\"data\":",
                   sizeof("{\"success\":true,\"data\":") - 1);

    p = ngx_ahava_row_write(r, p, res, 0, 0, ngx_ahava_export_cols, 0);
    if (p == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    *p++ = '}';

    return ngx_ahava_answer_text(r, ctx, NGX_HTTP_OK, body, p - body);
}
