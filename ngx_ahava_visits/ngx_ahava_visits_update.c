
/*
 * The mutations of /api/visits/:id (SPEC §5): a function each, binding
 * the parameters of its statement (ngx_ahava_visits_sql.c: one statement,
 * one transaction, that changes the visit only if the caller's role may
 * and its current state allows), and one shared continuation reading the
 * result row as 404 / 403 / 400 / 409 / 200 and, after the commit,
 * telling the participants (the actor excepted).
 */


#include "ngx_ahava_visits.h"


typedef struct {
    ngx_ahava_visits_stmt_e    stmt;
    const char                *event;           /* SPEC §8 */
    const char                *audit;           /* written with it, or NULL */
    const char                *target_field;    /* the assignee's field */
    ngx_uint_t                 answer_event;    /* answered with the event */
} ngx_ahava_visit_mutation_t;


static ngx_ahava_rc_e ngx_ahava_visit_assign(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx, ngx_ahava_visits_stmt_e stmt);
static ngx_ahava_pg_query_t *ngx_ahava_visit_query(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx, ngx_ahava_visits_stmt_e stmt);
static ngx_ahava_rc_e ngx_ahava_visit_mutated(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_int_t ngx_ahava_visit_number(ngx_http_request_t *r,
    ngx_ahava_pg_query_t *q, ngx_uint_t i, json_t *v);
static ngx_int_t ngx_ahava_visit_audit_id(ngx_http_request_t *r,
    ngx_ahava_pg_query_t *q, ngx_uint_t i);


static ngx_ahava_visit_mutation_t  ngx_ahava_visit_mutations[] = {
    { NGX_AHAVA_VISIT_DETAIL, NULL, NULL, NULL, 0 },
    { NGX_AHAVA_VISIT_STATUS, "VISIT_STATUS_UPDATED", NULL, NULL, 0 },
    { NGX_AHAVA_VISIT_LOCATION, "NURSE_LOCATION_UPDATE", NULL, NULL, 1 },
    { NGX_AHAVA_VISIT_REPORT, "NURSE_REPORT_ADDED", NULL, NULL, 0 },
    { NGX_AHAVA_VISIT_REVIEW, "DOCTOR_REVIEW_ADDED", NULL, NULL, 0 },
    { NGX_AHAVA_VISIT_CANCEL, "VISIT_CANCELLED", "VISIT_CANCELLED", NULL, 0 },
    { NGX_AHAVA_VISIT_ASSIGN_NURSE, "NURSE_ASSIGNED", "NURSE_ASSIGNED",
      "nurseId", 0 },
    { NGX_AHAVA_VISIT_ASSIGN_DOCTOR, "DOCTOR_ASSIGNED", "DOCTOR_ASSIGNED",
      "doctorId", 0 }
};


/* what a mutation's answer shows beyond the visit as the list shows it */
static ngx_ahava_col_t  ngx_ahava_visit_more_cols[] = {
    { "gpsCoordinates", NGX_AHAVA_COL_RAW, NULL },
    { "nurseReport", NGX_AHAVA_COL_DECRYPT, "nurseReportError" },
    { NULL, 0, NULL }
};


/* SCHEDULED→EN_ROUTE/ARRIVED/IN_PROGRESS, EN_ROUTE→ARRIVED/IN_PROGRESS,
 * ARRIVED→IN_PROGRESS, IN_PROGRESS→COMPLETED: the from-states of each */
static const char  *ngx_ahava_visit_transitions[] = {
    "{}",                                       /* SCHEDULED */
    "{SCHEDULED}",                              /* EN_ROUTE */
    "{SCHEDULED,EN_ROUTE}",                     /* ARRIVED */
    "{SCHEDULED,EN_ROUTE,ARRIVED}",             /* IN_PROGRESS */
    "{IN_PROGRESS}",                            /* COMPLETED */
    "{}"                                        /* CANCELLED: /cancel */
};


ngx_ahava_field_t  ngx_ahava_visit_status_fields[] = {
    { "status", NGX_AHAVA_FIELD_ENUM, 1, 0, 0, ngx_ahava_visit_statuses },
    { NULL, 0, 0, 0, 0, NULL }
};

ngx_ahava_field_t  ngx_ahava_visit_location_fields[] = {
    { "lat", NGX_AHAVA_FIELD_NUMBER, 1, -90, 90, NULL },
    { "lng", NGX_AHAVA_FIELD_NUMBER, 1, -180, 180, NULL },
    { NULL, 0, 0, 0, 0, NULL }
};

ngx_ahava_field_t  ngx_ahava_visit_report_fields[] = {
    /* stored encrypted: U+0000 is kept, never cut */
    { "nurseReport", NGX_AHAVA_FIELD_TEXT, 1, 1, 20000, NULL },
    { NULL, 0, 0, 0, 0, NULL }
};

ngx_ahava_field_t  ngx_ahava_visit_review_fields[] = {
    { "doctorReview", NGX_AHAVA_FIELD_STRING, 1, 1, 5000, NULL },
    { "doctorRating", NGX_AHAVA_FIELD_INTEGER, 1, 1, 5, NULL },
    { NULL, 0, 0, 0, 0, NULL }
};

ngx_ahava_field_t  ngx_ahava_visit_cancel_fields[] = {
    { "reason", NGX_AHAVA_FIELD_STRING, 0, 1, 1000, NULL },
    { NULL, 0, 0, 0, 0, NULL }
};

ngx_ahava_field_t  ngx_ahava_visit_nurse_fields[] = {
    { "nurseId", NGX_AHAVA_FIELD_ID, 1, 0, 0, NULL },
    { NULL, 0, 0, 0, 0, NULL }
};

ngx_ahava_field_t  ngx_ahava_visit_doctor_fields[] = {
    { "doctorId", NGX_AHAVA_FIELD_ID, 1, 0, 0, NULL },
    { NULL, 0, 0, 0, 0, NULL }
};


/* PATCH /api/visits/:id/status {status} — assigned nurse, admin */

ngx_ahava_rc_e
ngx_ahava_visit_status(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    ngx_uint_t             i;
    const char            *status;
    ngx_ahava_pg_query_t  *q;

    q = ngx_ahava_visit_query(r, ctx, NGX_AHAVA_VISIT_STATUS);
    if (q == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    status = json_string_value(json_object_get(ctx->body, "status"));

    for (i = 0; ngx_ahava_visit_statuses[i]; i++) {
        if (ngx_strcmp(ngx_ahava_visit_statuses[i], status) == 0) {
            break;
        }
    }

    if (ngx_ahava_visit_statuses[i] == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    q->values[3] = (char *) ngx_ahava_visit_transitions[i];
    q->values[4] = (char *) ngx_ahava_visit_statuses[i];

    return ngx_ahava_query(r, ctx, q, ngx_ahava_visit_mutated);
}


/* POST /api/visits/:id/location {lat, lng} — the assigned nurse */

ngx_ahava_rc_e
ngx_ahava_visit_location(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    ngx_ahava_pg_query_t  *q;

    q = ngx_ahava_visit_query(r, ctx, NGX_AHAVA_VISIT_LOCATION);

    if (q == NULL
        || ngx_ahava_visit_number(r, q, 3, json_object_get(ctx->body, "lat"))
           != NGX_OK
        || ngx_ahava_visit_number(r, q, 4, json_object_get(ctx->body, "lng"))
           != NGX_OK)
    {
        return ngx_ahava_fail(r, ctx);
    }

    return ngx_ahava_query(r, ctx, q, ngx_ahava_visit_mutated);
}


/* POST /api/visits/:id/nurse-report {nurseReport} — encrypted first */

ngx_ahava_rc_e
ngx_ahava_visit_report(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    json_t                *v;
    ngx_ahava_pg_query_t  *q;

    q = ngx_ahava_visit_query(r, ctx, NGX_AHAVA_VISIT_REPORT);
    if (q == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    v = json_object_get(ctx->body, "nurseReport");

    q->values[3] = ngx_ahava_encrypt_param(r,
                                        (u_char *) json_string_value(v),
                                        json_string_length(v));
    if (q->values[3] == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    return ngx_ahava_query(r, ctx, q, ngx_ahava_visit_mutated);
}


/* POST /api/visits/:id/doctor-review {doctorReview, doctorRating} */

ngx_ahava_rc_e
ngx_ahava_visit_review(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    json_t                *v;
    ngx_ahava_pg_query_t  *q;

    q = ngx_ahava_visit_query(r, ctx, NGX_AHAVA_VISIT_REVIEW);
    if (q == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    v = json_object_get(ctx->body, "doctorReview");

    if (ngx_ahava_param(r, q, 3, (u_char *) json_string_value(v),
                        json_string_length(v))
        != NGX_OK
        || ngx_ahava_param_uint(r, q, 4, json_integer_value(
                                   json_object_get(ctx->body, "doctorRating")))
           != NGX_OK)
    {
        return ngx_ahava_fail(r, ctx);
    }

    return ngx_ahava_query(r, ctx, q, ngx_ahava_visit_mutated);
}


/* POST /api/visits/:id/cancel {reason?} — its patient, admin */

ngx_ahava_rc_e
ngx_ahava_visit_cancel(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    json_t                *v;
    ngx_ahava_pg_query_t  *q;

    q = ngx_ahava_visit_query(r, ctx, NGX_AHAVA_VISIT_CANCEL);
    if (q == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    v = json_object_get(ctx->body, "reason");

    if ((json_is_string(v)
         && ngx_ahava_param(r, q, 3, (u_char *) json_string_value(v),
                            json_string_length(v))
            != NGX_OK)
        || ngx_ahava_visit_audit_id(r, q, 4) != NGX_OK)
    {
        return ngx_ahava_fail(r, ctx);
    }

    return ngx_ahava_query(r, ctx, q, ngx_ahava_visit_mutated);
}


/* POST /api/visits/:id/assign-nurse {nurseId} — admin */

ngx_ahava_rc_e
ngx_ahava_visit_assign_nurse(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    return ngx_ahava_visit_assign(r, ctx, NGX_AHAVA_VISIT_ASSIGN_NURSE);
}


/* POST /api/visits/:id/assign-doctor {doctorId} — admin */

ngx_ahava_rc_e
ngx_ahava_visit_assign_doctor(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    return ngx_ahava_visit_assign(r, ctx, NGX_AHAVA_VISIT_ASSIGN_DOCTOR);
}


static ngx_ahava_rc_e
ngx_ahava_visit_assign(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    ngx_ahava_visits_stmt_e stmt)
{
    json_t                      *v;
    ngx_ahava_pg_query_t        *q;
    ngx_ahava_visit_mutation_t  *m;

    m = &ngx_ahava_visit_mutations[stmt];

    q = ngx_ahava_visit_query(r, ctx, stmt);
    if (q == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    v = json_object_get(ctx->body, m->target_field);

    if (ngx_ahava_param(r, q, 3, (u_char *) json_string_value(v),
                        json_string_length(v))
        != NGX_OK
        || ngx_ahava_visit_audit_id(r, q, 4) != NGX_OK)
    {
        return ngx_ahava_fail(r, ctx);
    }

    return ngx_ahava_query(r, ctx, q, ngx_ahava_visit_mutated);
}


/* a mutation's statement, its continuation's table row in ctx->data */

static ngx_ahava_pg_query_t *
ngx_ahava_visit_query(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    ngx_ahava_visits_stmt_e stmt)
{
    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: visit mutation \"%V\"",
                   &ngx_ahava_visits_stmts[stmt].name);

    ctx->data = &ngx_ahava_visit_mutations[stmt];

    return ngx_ahava_visits_role_query(r, ctx, &ngx_ahava_visits_stmts[stmt]);
}


/* $1 the path's id, $2 the caller, $3 the caller's role */

ngx_ahava_pg_query_t *
ngx_ahava_visits_role_query(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    ngx_ahava_stmt_t *stmt)
{
    ngx_ahava_pg_query_t  *q;

    q = ngx_ahava_query_create(r, stmt);
    if (q == NULL) {
        return NULL;
    }

    q->values[0] = (char *) ctx->ids[0].data;
    q->values[1] = (char *) ctx->user.id;
    q->values[2] = (char *) ngx_ahava_role_name(ctx->user.role);

    return q;
}


static ngx_ahava_rc_e
ngx_ahava_visit_mutated(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    int                          more;
    u_char                      *body, *p, msg[128];
    size_t                       len;
    PGresult                    *res;
    ngx_ahava_visit_mutation_t  *m;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: visit mutated");

    if (ctx->query->rc != NGX_OK) {
        return ngx_ahava_query_failed(r, ctx);
    }

    m = ctx->data;
    res = ctx->query->result;

    if (PQntuples(res) != 1) {
        return ngx_ahava_fail(r, ctx);
    }

    if (PQgetvalue(res, 0, NGX_AHAVA_MUT_VISIBLE)[0] == '0') {
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_NOT_FOUND, "NOT_FOUND",
                                      "Visit not found", NULL);
    }

    if (PQgetvalue(res, 0, NGX_AHAVA_MUT_PERMITTED)[0] != 't') {
        ngx_ahava_audit(r, ctx, "ACCESS_DENIED", "visit", &ctx->ids[0],
                        json_pack("{s:s}", "action",
                                  ctx->route->path
                                  + sizeof("/api/visits/:/") - 1));

        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_FORBIDDEN, "FORBIDDEN",
                                      "Your role may not do this on this "
                                      "visit", NULL);
    }

    if (PQgetvalue(res, 0, NGX_AHAVA_MUT_TARGET_OK)[0] != 't') {
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_BAD_REQUEST,
                   "VALIDATION_ERROR", "Invalid assignee",
                   ngx_ahava_detail(NULL, m->target_field, "must name an "
                                    "active user of the right role"));
    }

    if (PQgetisnull(res, 0, NGX_AHAVA_MUT_VISIT)) {
        ngx_snprintf(msg, sizeof(msg), "Not allowed while the visit is %s%Z",
                     PQgetvalue(res, 0, NGX_AHAVA_MUT_PREVIOUS));

        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_CONFLICT, "CONFLICT",
                                      (char *) msg, NULL);
    }

    if (m->audit) {
        ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                      "ahava: security event %s on visit \"%V\" by user "
                      "\"%s\" (%s)", m->audit, &ctx->ids[0], ctx->user.id,
                      ngx_ahava_role_name(ctx->user.role));
    }

    /* committed: the participants are told, the actor excepted, and the
     * jobs it triggers are queued (the outbox rows of the statement) */
    ngx_ahava_outbox_relay((u_char *) PQgetvalue(res, 0, NGX_AHAVA_MUT_OUTBOX),
                           PQgetlength(res, 0, NGX_AHAVA_MUT_OUTBOX));

    if (m->answer_event) {
        /* {visitId, nurseId, lat, lng, timestamp}, as the event says it */
        len = PQgetlength(res, 0, NGX_AHAVA_MUT_EVENT);

        body = ngx_pnalloc(r->pool, sizeof("{\"success\":true,\"data\":}")
                                    + len);
        if (body == NULL) {
            return ngx_ahava_fail(r, ctx);
        }

        p = ngx_cpymem(body, "{\"success\":true,\"data\":",
                       sizeof("{\"success\":true,\"data\":") - 1);
        p = ngx_cpymem(p, PQgetvalue(res, 0, NGX_AHAVA_MUT_EVENT), len);
        *p++ = '}';

        return ngx_ahava_answer_text(r, ctx, NGX_HTTP_OK, body, p - body);
    }

    more = NGX_AHAVA_MUT_VISIT + ngx_ahava_row_ncols(ngx_ahava_visit_cols);

    len = sizeof("{\"success\":true,\"data\":}")
          + ngx_ahava_row_size(res, 0, NGX_AHAVA_MUT_VISIT,
                               ngx_ahava_visit_cols)
          + ngx_ahava_row_size(res, 0, more, ngx_ahava_visit_more_cols);

    body = ngx_pnalloc(r->pool, len);
    if (body == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    p = ngx_cpymem(body, "{\"success\":true,\"data\":",
                   sizeof("{\"success\":true,\"data\":") - 1);
    p = ngx_ahava_row_write(r, p, res, 0, NGX_AHAVA_MUT_VISIT,
                            ngx_ahava_visit_cols, NGX_AHAVA_ROW_OPEN);
    if (p) {
        p = ngx_ahava_row_write(r, p, res, 0, more, ngx_ahava_visit_more_cols,
                                NGX_AHAVA_ROW_MORE);
    }

    if (p == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    *p++ = '}';

    return ngx_ahava_answer_text(r, ctx, NGX_HTTP_OK, body, p - body);
}


/* A validated number as the shortest text that reads back as itself */

static ngx_int_t
ngx_ahava_visit_number(ngx_http_request_t *r, ngx_ahava_pg_query_t *q,
    ngx_uint_t i, json_t *v)
{
    u_char  *p;

    p = ngx_pnalloc(r->pool, 32);
    if (p == NULL) {
        return NGX_ERROR;
    }

    if (json_is_integer(v)) {
        ngx_snprintf(p, 32, "%L%Z", (int64_t) json_integer_value(v));

    } else {
        /* the shortest of 15 or 17 digits that gives the same double */
        snprintf((char *) p, 32, "%.15g", json_number_value(v));

        if (strtod((char *) p, NULL) != json_number_value(v)) {
            snprintf((char *) p, 32, "%.17g", json_number_value(v));
        }
    }

    q->values[i] = (char *) p;

    return NGX_OK;
}


/* A new id for the audit row the statement writes */

static ngx_int_t
ngx_ahava_visit_audit_id(ngx_http_request_t *r, ngx_ahava_pg_query_t *q,
    ngx_uint_t i)
{
    u_char  *id;

    id = ngx_pnalloc(r->pool, NGX_AHAVA_NEW_ID_LEN + 1);
    if (id == NULL) {
        return NGX_ERROR;
    }

    ngx_ahava_id_generate(id);
    id[NGX_AHAVA_NEW_ID_LEN] = '\0';
    q->values[i] = (char *) id;

    return NGX_OK;
}
