
/*
 * The mutations of /api/visits/:id (SPEC §5), one table row each.
 *
 * Every mutation is one SQL statement, hence one transaction: a CTE finds
 * the visit the caller may see, a conditional UPDATE changes it only if the
 * caller's role may and the visit's *current* state allows (under READ
 * COMMITTED a concurrent writer makes the UPDATE re-check its WHERE on the
 * new row version, so two conflicting mutations cannot both win), and the
 * result row says which of 404 / 403 / 400 / 409 / 200 it is.  Assignments
 * and cancellations write their audit_logs row in the same statement.
 * After the commit the event goes to Redis.
 */


#include "ngx_ahava_visits.h"


typedef struct {
    json_t                    *visit;
    ngx_str_t                  report;
    ngx_str_t                  previous;        /* status before */
    char                      *participants[5]; /* patient, nurse, doctor,
                                                   previous nurse, doctor */
} ngx_ahava_visit_result_t;


typedef ngx_int_t (*ngx_ahava_visit_params_pt)(ngx_http_request_t *r,
    json_t *body, ngx_ahava_pg_query_t *q);
typedef json_t *(*ngx_ahava_visit_event_pt)(ngx_http_request_t *r,
    json_t *body, ngx_ahava_visit_result_t *res);


struct ngx_ahava_visit_action_s {
    ngx_str_t                  name;
    ngx_uint_t                 method;
    ngx_ahava_field_t         *fields;
    const char                *permitted[5];    /* by role; %s: alias */
    const char                *condition[5];    /* by role; the state */
    const char                *set;
    const char                *extra;           /* more CTEs */
    const char                *target;          /* the assigned user */
    const char                *target_field;
    const char                *audit;           /* audit_logs action */
    const char                *audit_meta;
    const char                *event;
    ngx_ahava_visit_params_pt  params;          /* $3, $4 */
    ngx_ahava_visit_event_pt   event_data;
};


static ngx_int_t ngx_ahava_visit_update_done(ngx_http_request_t *r,
    ngx_ahava_pg_query_t *q);
static ngx_int_t ngx_ahava_visit_status_params(ngx_http_request_t *r,
    json_t *body, ngx_ahava_pg_query_t *q);
static ngx_int_t ngx_ahava_visit_location_params(ngx_http_request_t *r,
    json_t *body, ngx_ahava_pg_query_t *q);
static ngx_int_t ngx_ahava_visit_report_params(ngx_http_request_t *r,
    json_t *body, ngx_ahava_pg_query_t *q);
static ngx_int_t ngx_ahava_visit_review_params(ngx_http_request_t *r,
    json_t *body, ngx_ahava_pg_query_t *q);
static ngx_int_t ngx_ahava_visit_string_params(ngx_http_request_t *r,
    json_t *body, ngx_ahava_pg_query_t *q);
static json_t *ngx_ahava_visit_status_event(ngx_http_request_t *r,
    json_t *body, ngx_ahava_visit_result_t *res);
static json_t *ngx_ahava_visit_location_event(ngx_http_request_t *r,
    json_t *body, ngx_ahava_visit_result_t *res);
static json_t *ngx_ahava_visit_report_event(ngx_http_request_t *r,
    json_t *body, ngx_ahava_visit_result_t *res);
static json_t *ngx_ahava_visit_review_event(ngx_http_request_t *r,
    json_t *body, ngx_ahava_visit_result_t *res);
static json_t *ngx_ahava_visit_cancel_event(ngx_http_request_t *r,
    json_t *body, ngx_ahava_visit_result_t *res);
static json_t *ngx_ahava_visit_assign_event(ngx_http_request_t *r,
    json_t *body, ngx_ahava_visit_result_t *res);
static char *ngx_ahava_visit_param(ngx_http_request_t *r, json_t *v);


#define NGX_AHAVA_NOBODY    "FALSE"
#define NGX_AHAVA_ANYONE    "TRUE"
#define NGX_AHAVA_NURSE     "%s.\"nurseId\" = $2"
#define NGX_AHAVA_DOCTOR    "%s.\"doctorId\" = $2"
#define NGX_AHAVA_PATIENT   "ok.\"patientId\" = $2"
#define NGX_AHAVA_NOT_FINAL "v.status NOT IN ('COMPLETED', 'CANCELLED')"
#define NGX_AHAVA_ON_ROAD   "v.status IN ('EN_ROUTE', 'ARRIVED', 'IN_PROGRESS')"

#define NGX_AHAVA_GPS_POINT                                                  \
    "jsonb_build_array(jsonb_build_object('lat', $3::float8,"                \
    " 'lng', $4::float8, 'timestamp', to_char(LOCALTIMESTAMP(3),"            \
    " 'YYYY-MM-DD\"T\"HH24\":\"MI\":\"SS.MS\"Z\"')))"

#define NGX_AHAVA_GPS_HISTORY                                                \
    "(CASE WHEN jsonb_typeof(v.\"gpsCoordinates\") = 'array'"                \
    " THEN v.\"gpsCoordinates\" ELSE '[]'::jsonb END)"


/* SCHEDULED→EN_ROUTE/ARRIVED/IN_PROGRESS, EN_ROUTE→ARRIVED/IN_PROGRESS,
 * ARRIVED→IN_PROGRESS, IN_PROGRESS→COMPLETED: the from-states of each */
static const char *ngx_ahava_visit_transitions[] = {
    "{}",                                       /* SCHEDULED */
    "{SCHEDULED}",                              /* EN_ROUTE */
    "{SCHEDULED,EN_ROUTE}",                     /* ARRIVED */
    "{SCHEDULED,EN_ROUTE,ARRIVED}",             /* IN_PROGRESS */
    "{IN_PROGRESS}",                            /* COMPLETED */
    "{}"                                        /* CANCELLED: /cancel */
};


static ngx_ahava_field_t  ngx_ahava_visit_status_fields[] = {
    { "status", NGX_AHAVA_FIELD_ENUM, 1, 0, 0, ngx_ahava_visit_statuses },
    { NULL, 0, 0, 0, 0, NULL }
};

static ngx_ahava_field_t  ngx_ahava_visit_location_fields[] = {
    { "lat", NGX_AHAVA_FIELD_NUMBER, 1, -90, 90, NULL },
    { "lng", NGX_AHAVA_FIELD_NUMBER, 1, -180, 180, NULL },
    { NULL, 0, 0, 0, 0, NULL }
};

static ngx_ahava_field_t  ngx_ahava_visit_report_fields[] = {
    { "nurseReport", NGX_AHAVA_FIELD_STRING, 1, 1, 20000, NULL },
    { NULL, 0, 0, 0, 0, NULL }
};

static ngx_ahava_field_t  ngx_ahava_visit_review_fields[] = {
    { "doctorReview", NGX_AHAVA_FIELD_STRING, 1, 1, 5000, NULL },
    { "doctorRating", NGX_AHAVA_FIELD_INTEGER, 1, 1, 5, NULL },
    { NULL, 0, 0, 0, 0, NULL }
};

static ngx_ahava_field_t  ngx_ahava_visit_cancel_fields[] = {
    { "reason", NGX_AHAVA_FIELD_STRING, 0, 1, 1000, NULL },
    { NULL, 0, 0, 0, 0, NULL }
};

static ngx_ahava_field_t  ngx_ahava_visit_nurse_fields[] = {
    { "nurseId", NGX_AHAVA_FIELD_ID, 1, 0, 0, NULL },
    { NULL, 0, 0, 0, 0, NULL }
};

static ngx_ahava_field_t  ngx_ahava_visit_doctor_fields[] = {
    { "doctorId", NGX_AHAVA_FIELD_ID, 1, 0, 0, NULL },
    { NULL, 0, 0, 0, 0, NULL }
};


/*
 * SPEC §5, row by row.  permitted/condition are indexed by role:
 * none, PATIENT, NURSE, DOCTOR, ADMIN.
 */

static ngx_ahava_visit_action_t  ngx_ahava_visit_actions[] = {

    { ngx_string("status"), NGX_HTTP_PATCH, ngx_ahava_visit_status_fields,
      { NGX_AHAVA_NOBODY, NGX_AHAVA_NOBODY, NGX_AHAVA_NURSE, NGX_AHAVA_NOBODY,
        NGX_AHAVA_ANYONE },
      { "v.status = ANY($3::\"VisitStatus\"[])", NULL, NULL, NULL, NULL },
      "status = $4::\"VisitStatus\","
      " \"actualStart\" = CASE WHEN $4::text = 'IN_PROGRESS'"
      " THEN coalesce(v.\"actualStart\", LOCALTIMESTAMP(3))"
      " ELSE v.\"actualStart\" END,"
      " \"actualEnd\" = CASE WHEN $4::text = 'COMPLETED'"
      " THEN LOCALTIMESTAMP(3) ELSE v.\"actualEnd\" END",
      NULL, NULL, NULL, NULL, NULL,
      "VISIT_STATUS_UPDATED",
      ngx_ahava_visit_status_params, ngx_ahava_visit_status_event },

    { ngx_string("location"), NGX_HTTP_POST, ngx_ahava_visit_location_fields,
      { NGX_AHAVA_NOBODY, NGX_AHAVA_NOBODY, NGX_AHAVA_NURSE, NGX_AHAVA_NOBODY,
        NGX_AHAVA_NOBODY },
      { NGX_AHAVA_ON_ROAD, NULL, NULL, NULL, NULL },
      /* append, keeping the newest 1000 points */
      "\"gpsCoordinates\" = CASE"
      " WHEN jsonb_array_length(" NGX_AHAVA_GPS_HISTORY ") < 1000"
      " THEN " NGX_AHAVA_GPS_HISTORY " || " NGX_AHAVA_GPS_POINT
      " ELSE (SELECT jsonb_agg(e ORDER BY o) FROM (SELECT e, o"
      " FROM jsonb_array_elements(" NGX_AHAVA_GPS_HISTORY " || "
      NGX_AHAVA_GPS_POINT ") WITH ORDINALITY AS x(e, o)"
      " ORDER BY o DESC LIMIT 1000) y) END",
      ", nurse AS (UPDATE users u SET \"lastKnownLat\" = $3::float8,"
      " \"lastKnownLng\" = $4::float8,"
      " \"lastLocationUpdate\" = LOCALTIMESTAMP(3),"
      " \"updatedAt\" = LOCALTIMESTAMP(3) FROM upd"
      " WHERE u.id = upd.\"nurseId\")",
      NULL, NULL, NULL, NULL,
      "NURSE_LOCATION_UPDATE",
      ngx_ahava_visit_location_params, ngx_ahava_visit_location_event },

    { ngx_string("nurse-report"), NGX_HTTP_POST,
      ngx_ahava_visit_report_fields,
      { NGX_AHAVA_NOBODY, NGX_AHAVA_NOBODY, NGX_AHAVA_NURSE, NGX_AHAVA_NOBODY,
        NGX_AHAVA_NOBODY },
      { "v.status IN ('IN_PROGRESS', 'COMPLETED')", NULL, NULL, NULL, NULL },
      "\"nurseReport\" = $3",
      NULL, NULL, NULL, NULL, NULL,
      "NURSE_REPORT_ADDED",
      ngx_ahava_visit_report_params, ngx_ahava_visit_report_event },

    { ngx_string("doctor-review"), NGX_HTTP_POST,
      ngx_ahava_visit_review_fields,
      { NGX_AHAVA_NOBODY, NGX_AHAVA_NOBODY, NGX_AHAVA_NOBODY,
        NGX_AHAVA_DOCTOR, NGX_AHAVA_ANYONE },
      { "v.\"nurseReport\" IS NOT NULL", NULL, NULL, NULL, NULL },
      "\"doctorReview\" = $3, \"doctorRating\" = $4::int",
      NULL, NULL, NULL, NULL, NULL,
      "DOCTOR_REVIEW_ADDED",
      ngx_ahava_visit_review_params, ngx_ahava_visit_review_event },

    { ngx_string("cancel"), NGX_HTTP_POST, ngx_ahava_visit_cancel_fields,
      { NGX_AHAVA_NOBODY, NGX_AHAVA_PATIENT, NGX_AHAVA_NOBODY,
        NGX_AHAVA_NOBODY, NGX_AHAVA_ANYONE },
      { NGX_AHAVA_NOT_FINAL, "v.status IN ('SCHEDULED', 'EN_ROUTE')", NULL,
        NULL, NULL },
      "status = 'CANCELLED'",
      NULL, NULL, NULL,
      "VISIT_CANCELLED",
      "jsonb_build_object('previousStatus', ok.status, 'reason', $3::text)",
      "VISIT_CANCELLED",
      ngx_ahava_visit_string_params, ngx_ahava_visit_cancel_event },

    { ngx_string("assign-nurse"), NGX_HTTP_POST, ngx_ahava_visit_nurse_fields,
      { NGX_AHAVA_NOBODY, NGX_AHAVA_NOBODY, NGX_AHAVA_NOBODY,
        NGX_AHAVA_NOBODY, NGX_AHAVA_ANYONE },
      { NGX_AHAVA_NOT_FINAL, NULL, NULL, NULL, NULL },
      "\"nurseId\" = $3",
      NULL,
      "EXISTS (SELECT 1 FROM users t WHERE t.id = $3 AND t.role = 'NURSE'"
      " AND t.\"isActive\")",
      "nurseId",
      "NURSE_ASSIGNED",
      "jsonb_build_object('nurseId', $3::text, 'previousNurseId',"
      " ok.\"nurseId\")",
      "NURSE_ASSIGNED",
      ngx_ahava_visit_string_params, ngx_ahava_visit_assign_event },

    { ngx_string("assign-doctor"), NGX_HTTP_POST,
      ngx_ahava_visit_doctor_fields,
      { NGX_AHAVA_NOBODY, NGX_AHAVA_NOBODY, NGX_AHAVA_NOBODY,
        NGX_AHAVA_NOBODY, NGX_AHAVA_ANYONE },
      { NGX_AHAVA_NOT_FINAL, NULL, NULL, NULL, NULL },
      "\"doctorId\" = $3",
      NULL,
      "EXISTS (SELECT 1 FROM users t WHERE t.id = $3 AND t.role = 'DOCTOR'"
      " AND t.\"isActive\")",
      "doctorId",
      "DOCTOR_ASSIGNED",
      "jsonb_build_object('doctorId', $3::text, 'previousDoctorId',"
      " ok.\"doctorId\")",
      "DOCTOR_ASSIGNED",
      ngx_ahava_visit_string_params, ngx_ahava_visit_assign_event },

    { ngx_null_string, 0, NULL, { NULL }, { NULL }, NULL, NULL, NULL, NULL,
      NULL, NULL, NULL, NULL, NULL }
};


ngx_ahava_visit_action_t *
ngx_ahava_visit_action(ngx_str_t *name)
{
    ngx_ahava_visit_action_t  *a;

    for (a = ngx_ahava_visit_actions; a->name.len; a++) {
        if (a->name.len == name->len
            && ngx_strncmp(a->name.data, name->data, name->len) == 0)
        {
            return a;
        }
    }

    return NULL;
}


ngx_uint_t
ngx_ahava_visit_action_method(ngx_ahava_visit_action_t *action)
{
    return action->method;
}


/* Runs once the caller is known: validate, then the one statement */

ngx_int_t
ngx_ahava_visit_update(ngx_http_request_t *r)
{
    u_char                    *sql, *last, perm_v[64], perm_ok[64], *p;
    json_t                    *details;
    ngx_int_t                  rc;
    ngx_uint_t                 n;
    const char                *visible, *condition;
    ngx_ahava_ctx_t           *ctx;
    ngx_ahava_pg_query_t      *q;
    ngx_ahava_visits_ctx_t    *vctx;
    ngx_ahava_visit_action_t  *a;
    u_char                     audit[1024];

    ctx = ngx_ahava_get_ctx(r);
    vctx = ctx->data;
    a = vctx->action;

    details = json_array();
    if (details == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_ahava_validate(ctx->body, a->fields, details) != NGX_OK) {
        return ngx_ahava_send_error(r, NGX_HTTP_BAD_REQUEST,
                                    "VALIDATION_ERROR", "Invalid request body",
                                    details);
    }

    json_decref(details);

    q = ngx_ahava_pg_query(r, NULL, ngx_ahava_visit_update_done);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    q->values[0] = ngx_pnalloc(r->pool, vctx->visit_id.len + 1);
    q->values[1] = ngx_ahava_user_param(r);
    if (q->values[0] == NULL || q->values[1] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_cpystrn((u_char *) q->values[0], vctx->visit_id.data,
                vctx->visit_id.len + 1);
    vctx->visit_id_param = q->values[0];

    q->nparams = 2;

    rc = a->params(r, ctx->body, q);
    if (rc != NGX_OK) {
        return rc;
    }

    visible = (ctx->user.role == NGX_AHAVA_ROLE_ADMIN)
              ? "$2::text IS NOT NULL"
              : NGX_AHAVA_PARTICIPANT("$2");

    condition = a->condition[ctx->user.role] ? a->condition[ctx->user.role]
                                             : a->condition[0];

    p = ngx_snprintf(perm_v, sizeof(perm_v) - 1,
                     a->permitted[ctx->user.role], "v");
    *p = '\0';
    p = ngx_snprintf(perm_ok, sizeof(perm_ok) - 1,
                     a->permitted[ctx->user.role], "ok");
    *p = '\0';

    audit[0] = '\0';

    if (a->audit) {
        n = q->nparams;

        if (ngx_ahava_audit_params(r, q) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        p = ngx_ahava_audit_cte(audit, audit + sizeof(audit) - 1, n + 1, 2,
                                n + 2, a->audit, "visit", "upd.id",
                                "upd, ok", a->audit_meta);
        *p = '\0';
    }

    sql = ngx_pnalloc(r->pool, 8192);
    if (sql == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    last = ngx_snprintf(sql, 8191,
        "WITH ok AS (SELECT v.*, b.\"patientId\" FROM visits v"
        " JOIN bookings b ON b.id = v.\"bookingId\" WHERE v.id = $1 AND %s),"
        " upd AS (UPDATE visits v SET %s, \"updatedAt\" = LOCALTIMESTAMP(3)"
        " FROM ok WHERE v.id = ok.id AND (%s) AND (%s) AND (%s)"
        " RETURNING v.*)%s%s"
        " SELECT (SELECT count(*) FROM ok),"
        " coalesce((SELECT %s FROM ok), false), %s,"
        " (SELECT json_build_object(" NGX_AHAVA_VISIT_JSON ","
        " 'gpsCoordinates', coalesce(v.\"gpsCoordinates\", '[]'::jsonb))"
        " FROM (SELECT upd.*, ok.\"patientId\" FROM upd"
        " JOIN ok ON ok.id = upd.id) v),"
        " (SELECT upd.\"nurseReport\" FROM upd),"
        " (SELECT ok.status::text FROM ok),"
        " (SELECT ok.\"patientId\" FROM ok),"
        " (SELECT upd.\"nurseId\" FROM upd),"
        " (SELECT upd.\"doctorId\" FROM upd),"
        " (SELECT ok.\"nurseId\" FROM ok),"
        " (SELECT ok.\"doctorId\" FROM ok)",
        visible, a->set, perm_v, condition,
        a->target ? a->target : "TRUE",
        a->extra ? a->extra : "", audit,
        perm_ok, a->target ? a->target : "TRUE");

    if (last == sql + 8191) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "ahava: visit update statement too long");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *last = '\0';

    q->sql.data = sql;
    q->sql.len = last - sql;

    return ngx_ahava_pg_run(r, q);
}


static ngx_int_t
ngx_ahava_visit_update_done(ngx_http_request_t *r, ngx_ahava_pg_query_t *q)
{
    ngx_int_t                  rc;
    json_t                    *root, *data, *details;
    PGresult                  *res;
    ngx_str_t                  text;
    ngx_uint_t                 i;
    ngx_ahava_ctx_t           *ctx;
    ngx_ahava_visits_ctx_t    *vctx;
    ngx_ahava_visit_action_t  *a;
    ngx_ahava_visit_result_t   vr;
    u_char                     msg[128];

    if (ngx_ahava_pg_visible(r, q, "Visit not found", &rc) != NGX_OK) {
        return rc;
    }

    ctx = ngx_ahava_get_ctx(r);
    vctx = ctx->data;
    a = vctx->action;
    res = q->result;

    if (PQgetvalue(res, 0, 1)[0] != 't') {
        ngx_ahava_audit(r, "ACCESS_DENIED", "visit", &vctx->visit_id,
                        json_pack("{s:s}", "action", a->name.data));

        return ngx_ahava_send_error(r, NGX_HTTP_FORBIDDEN, "FORBIDDEN",
                                    "Your role may not do this on this visit",
                                    NULL);
    }

    if (PQgetvalue(res, 0, 2)[0] != 't') {
        details = json_pack("[{s:s, s:s}]", "field", a->target_field,
                            "message", "must name an active user of the "
                                       "right role");

        return ngx_ahava_send_error(r, NGX_HTTP_BAD_REQUEST,
                                    "VALIDATION_ERROR", "Invalid assignee",
                                    details);
    }

    ngx_memzero(&vr, sizeof(ngx_ahava_visit_result_t));

    if (ngx_ahava_pg_str(r, res, 0, 5, &vr.previous) == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (PQgetisnull(res, 0, 3)) {
        (void) ngx_snprintf(msg, sizeof(msg) - 1,
                            "Not allowed while the visit is %V%Z",
                            &vr.previous);

        return ngx_ahava_send_error(r, NGX_HTTP_CONFLICT, "CONFLICT",
                                    (char *) msg, NULL);
    }

    if (ngx_ahava_pg_str(r, res, 0, 3, &text) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    vr.visit = ngx_ahava_json_loadn(r, &text);
    if (vr.visit == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_ahava_pg_str(r, res, 0, 4, &vr.report) == NGX_ERROR
        || ngx_ahava_decrypt_field(r, vr.visit, "nurseReport",
                                   "nurseReportError", &vr.report)
           == NGX_ERROR)
    {
        json_decref(vr.visit);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < 5; i++) {
        if (ngx_ahava_pg_str(r, res, 0, 6 + i, &text) == NGX_OK) {
            vr.participants[i] = (char *) text.data;
        }
    }

    if (a->audit) {
        ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                      "ahava: security event %s on visit \"%V\" by user "
                      "\"%s\" (%s)", a->audit, &vctx->visit_id,
                      ngx_ahava_user_param(r),
                      ngx_ahava_role_name(ctx->user.role));
    }

    /* committed: tell the participants, the actor excepted */
    data = a->event_data(r, ctx->body, &vr);
    if (data) {
        json_object_set_new(data, "visitId",
                            json_string(vctx->visit_id_param));
        (void) ngx_ahava_publish(r, a->event, data, vr.participants, 5, 0);
    }

    root = json_pack("{s:b, s:o}", "success", 1, "data", vr.visit);

    return ngx_ahava_send_json(r, NGX_HTTP_OK, root);
}


/* $3 and $4 of each action */

static ngx_int_t
ngx_ahava_visit_status_params(ngx_http_request_t *r, json_t *body,
    ngx_ahava_pg_query_t *q)
{
    const char  *status;
    ngx_uint_t   i;

    status = json_string_value(json_object_get(body, "status"));

    for (i = 0; ngx_ahava_visit_statuses[i]; i++) {
        if (ngx_strcmp(ngx_ahava_visit_statuses[i], status) == 0) {
            break;
        }
    }

    if (ngx_ahava_visit_statuses[i] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    q->values[2] = (char *) ngx_ahava_visit_transitions[i];
    q->values[3] = (char *) ngx_ahava_visit_statuses[i];
    q->nparams = 4;

    return NGX_OK;
}


static ngx_int_t
ngx_ahava_visit_location_params(ngx_http_request_t *r, json_t *body,
    ngx_ahava_pg_query_t *q)
{
    q->values[2] = ngx_ahava_visit_param(r, json_object_get(body, "lat"));
    q->values[3] = ngx_ahava_visit_param(r, json_object_get(body, "lng"));
    q->nparams = 4;

    return (q->values[2] && q->values[3]) ? NGX_OK
                                          : NGX_HTTP_INTERNAL_SERVER_ERROR;
}


/* the report is encrypted before it leaves nginx (SPEC §10) */

static ngx_int_t
ngx_ahava_visit_report_params(ngx_http_request_t *r, json_t *body,
    ngx_ahava_pg_query_t *q)
{
    json_t  *v;

    v = json_object_get(body, "nurseReport");

    q->values[2] = ngx_ahava_encrypt_param(r, json_string_value(v),
                                           json_string_length(v));
    q->nparams = 3;

    return q->values[2] ? NGX_OK : NGX_HTTP_INTERNAL_SERVER_ERROR;
}


static ngx_int_t
ngx_ahava_visit_review_params(ngx_http_request_t *r, json_t *body,
    ngx_ahava_pg_query_t *q)
{
    q->values[2] = ngx_ahava_visit_param(r,
                                     json_object_get(body, "doctorReview"));
    q->values[3] = ngx_ahava_visit_param(r,
                                     json_object_get(body, "doctorRating"));
    q->nparams = 4;

    return (q->values[2] && q->values[3]) ? NGX_OK
                                          : NGX_HTTP_INTERNAL_SERVER_ERROR;
}


/* the one optional or required string of cancel and the assignments */

static ngx_int_t
ngx_ahava_visit_string_params(ngx_http_request_t *r, json_t *body,
    ngx_ahava_pg_query_t *q)
{
    json_t           *v;
    ngx_ahava_ctx_t  *ctx;

    ctx = ngx_ahava_get_ctx(r);

    v = json_object_get(body, ((ngx_ahava_visits_ctx_t *) ctx->data)
                                  ->action->fields[0].name);

    q->values[2] = NULL;
    q->nparams = 3;

    if (v && json_is_string(v)) {
        q->values[2] = ngx_ahava_visit_param(r, v);
        if (q->values[2] == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    return NGX_OK;
}


/* A validated JSON scalar as a text parameter */

static char *
ngx_ahava_visit_param(ngx_http_request_t *r, json_t *v)
{
    u_char  *p;

    if (json_is_string(v)) {
        return ngx_ahava_pstrz(r, (u_char *) json_string_value(v),
                               json_string_length(v));
    }

    p = ngx_pnalloc(r->pool, 32);
    if (p == NULL) {
        return NULL;
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

    return (char *) p;
}


/* The data of each event (visitId is added by the caller) */

static json_t *
ngx_ahava_visit_status_event(ngx_http_request_t *r, json_t *body,
    ngx_ahava_visit_result_t *res)
{
    return json_pack("{s:O, s:s%, s:s}",
                     "status", json_object_get(res->visit, "status"),
                     "previousStatus", res->previous.data, res->previous.len,
                     "updatedBy", ngx_ahava_user_param(r));
}


static json_t *
ngx_ahava_visit_location_event(ngx_http_request_t *r, json_t *body,
    ngx_ahava_visit_result_t *res)
{
    json_t  *gps, *last;

    gps = json_object_get(res->visit, "gpsCoordinates");
    last = json_array_get(gps, json_array_size(gps) - 1);

    if (last == NULL) {
        return NULL;
    }

    /* the point as stored, so the event and the history agree */
    return json_pack("{s:s, s:O, s:O, s:O}",
                     "nurseId", ngx_ahava_user_param(r),
                     "lat", json_object_get(last, "lat"),
                     "lng", json_object_get(last, "lng"),
                     "timestamp", json_object_get(last, "timestamp"));
}


static json_t *
ngx_ahava_visit_report_event(ngx_http_request_t *r, json_t *body,
    ngx_ahava_visit_result_t *res)
{
    /* never the report itself: events are not encrypted */
    return json_pack("{s:s}", "nurseId", ngx_ahava_user_param(r));
}


static json_t *
ngx_ahava_visit_review_event(ngx_http_request_t *r, json_t *body,
    ngx_ahava_visit_result_t *res)
{
    return json_pack("{s:s, s:O}",
                     "reviewedBy", ngx_ahava_user_param(r),
                     "doctorRating", json_object_get(body, "doctorRating"));
}


static json_t *
ngx_ahava_visit_cancel_event(ngx_http_request_t *r, json_t *body,
    ngx_ahava_visit_result_t *res)
{
    json_t  *reason;

    reason = json_object_get(body, "reason");

    return json_pack("{s:s%, s:s, s:O}",
                     "previousStatus", res->previous.data, res->previous.len,
                     "cancelledBy", ngx_ahava_user_param(r),
                     "reason", reason ? reason : json_null());
}


static json_t *
ngx_ahava_visit_assign_event(ngx_http_request_t *r, json_t *body,
    ngx_ahava_visit_result_t *res)
{
    ngx_ahava_ctx_t         *ctx;
    ngx_ahava_visits_ctx_t  *vctx;

    ctx = ngx_ahava_get_ctx(r);
    vctx = ctx->data;

    if (vctx->action->target_field[0] == 'n') {
        return json_pack("{s:s?, s:s?}",
                         "nurseId", res->participants[1],
                         "previousNurseId", res->participants[3]);
    }

    return json_pack("{s:s?, s:s?}",
                     "doctorId", res->participants[2],
                     "previousDoctorId", res->participants[4]);
}
