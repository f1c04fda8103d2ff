
/*
 * ngx_ahava_messages_module: /api/messages (SPEC §6), the conversation of a
 * visit.  Content is encrypted at rest by nginx (AES-256-GCM, SPEC §10) —
 * server-side encryption, not end-to-end: PostgreSQL never holds plaintext,
 * nginx holds the key.
 *
 *   POST   /api/messages                            send
 *   GET    /api/messages/visit/:visitId             page, oldest first
 *   GET    /api/messages/visit/:visitId/participants
 *   GET    /api/messages/unread/count
 *   POST   /api/messages/read                       read receipts
 *   DELETE /api/messages/:id                        the sender only
 */


#include "ngx_ahava_core.h"


typedef struct ngx_ahava_messages_route_s  ngx_ahava_messages_route_t;

struct ngx_ahava_messages_route_s {
    ngx_uint_t                   method;
    const char                  *path;          /* ':' is an id segment */
    ngx_ahava_field_t           *fields;        /* the body, or NULL */
    ngx_ahava_step_pt            handler;
};


typedef struct {
    ngx_ahava_messages_route_t  *route;
    ngx_str_t                    id;            /* the path's id */
    ngx_uint_t                   limit;
    ngx_uint_t                   offset;
    char                        *content;       /* sent, as plaintext */
} ngx_ahava_messages_ctx_t;


static ngx_int_t ngx_ahava_messages_handler(ngx_http_request_t *r);
static ngx_int_t ngx_ahava_messages_route(ngx_http_request_t *r,
    ngx_ahava_messages_ctx_t *mctx);
static ngx_int_t ngx_ahava_messages_step_auth(ngx_http_request_t *r);
static ngx_int_t ngx_ahava_messages_authorized(ngx_http_request_t *r);
static ngx_int_t ngx_ahava_message_send(ngx_http_request_t *r);
static ngx_int_t ngx_ahava_message_sent(ngx_http_request_t *r,
    ngx_ahava_pg_query_t *q);
static ngx_int_t ngx_ahava_messages_list(ngx_http_request_t *r);
static ngx_int_t ngx_ahava_messages_listed(ngx_http_request_t *r,
    ngx_ahava_pg_query_t *q);
static ngx_int_t ngx_ahava_messages_participants(ngx_http_request_t *r);
static ngx_int_t ngx_ahava_messages_participants_done(ngx_http_request_t *r,
    ngx_ahava_pg_query_t *q);
static ngx_int_t ngx_ahava_messages_unread(ngx_http_request_t *r);
static ngx_int_t ngx_ahava_messages_unread_done(ngx_http_request_t *r,
    ngx_ahava_pg_query_t *q);
static ngx_int_t ngx_ahava_messages_read(ngx_http_request_t *r);
static ngx_int_t ngx_ahava_messages_read_done(ngx_http_request_t *r,
    ngx_ahava_pg_query_t *q);
static ngx_int_t ngx_ahava_message_delete(ngx_http_request_t *r);
static ngx_int_t ngx_ahava_message_deleted(ngx_http_request_t *r,
    ngx_ahava_pg_query_t *q);
static ngx_ahava_pg_query_t *ngx_ahava_messages_query(ngx_http_request_t *r,
    ngx_ahava_pg_handler_pt done, size_t size, u_char **sql);
static const char *ngx_ahava_messages_visible(ngx_http_request_t *r);


static const char *ngx_ahava_message_types[] = {
    "TEXT", "IMAGE", "FILE", NULL               /* never SYSTEM */
};

static const char *ngx_ahava_booleans[] = {
    "false", "true", NULL
};


static ngx_ahava_field_t  ngx_ahava_message_fields[] = {
    { "visitId", NGX_AHAVA_FIELD_ID, 1, 0, 0, NULL },
    { "recipientId", NGX_AHAVA_FIELD_ID, 1, 0, 0, NULL },
    { "content", NGX_AHAVA_FIELD_STRING, 1, 1, 5000, NULL },
    { "type", NGX_AHAVA_FIELD_ENUM, 0, 0, 0, ngx_ahava_message_types },
    { "attachmentUrl", NGX_AHAVA_FIELD_STRING, 0, 1, 2048, NULL },
    { "attachmentType", NGX_AHAVA_FIELD_STRING, 0, 1, 255, NULL },
    { NULL, 0, 0, 0, 0, NULL }
};

static ngx_ahava_field_t  ngx_ahava_read_fields[] = {
    { "messageIds", NGX_AHAVA_FIELD_ID_ARRAY, 1, 1, 100, NULL },
    { NULL, 0, 0, 0, 0, NULL }
};


/* SPEC §6, row by row; the first match of the path decides */
static ngx_ahava_messages_route_t  ngx_ahava_messages_routes[] = {
    { NGX_HTTP_POST, "", ngx_ahava_message_fields,
      ngx_ahava_message_send },
    { NGX_HTTP_GET|NGX_HTTP_HEAD, "/visit/:", NULL,
      ngx_ahava_messages_list },
    { NGX_HTTP_GET|NGX_HTTP_HEAD, "/visit/:/participants", NULL,
      ngx_ahava_messages_participants },
    { NGX_HTTP_GET|NGX_HTTP_HEAD, "/unread/count", NULL,
      ngx_ahava_messages_unread },
    { NGX_HTTP_POST, "/read", ngx_ahava_read_fields,
      ngx_ahava_messages_read },
    { NGX_HTTP_DELETE, "/:", NULL,
      ngx_ahava_message_delete },
    { 0, NULL, NULL, NULL }
};


static ngx_command_t  ngx_ahava_messages_commands[] = {

    { ngx_string("ahava_messages"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_ahava_conf_set_handler,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      (void *) ngx_ahava_messages_handler },

      ngx_null_command
};


static ngx_http_module_t  ngx_ahava_messages_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_ahava_messages_module = {
    NGX_MODULE_V1,
    &ngx_ahava_messages_module_ctx,        /* module context */
    ngx_ahava_messages_commands,           /* module directives */
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
ngx_ahava_messages_handler(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_ahava_ctx_t           *ctx;
    ngx_ahava_messages_ctx_t  *mctx;

    ctx = ngx_ahava_get_ctx(r);
    mctx = ngx_pcalloc(r->pool, sizeof(ngx_ahava_messages_ctx_t));
    if (ctx == NULL || mctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->data = mctx;

    rc = ngx_ahava_messages_route(r, mctx);
    if (rc != NGX_OK) {
        return ngx_ahava_send_status_error(r, rc);
    }

    if (mctx->route->fields) {
        return ngx_ahava_read_json_body(r, ngx_ahava_messages_step_auth);
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_ahava_content(r, ngx_ahava_messages_step_auth);
}


/*
 * Matches the path after /api/messages against the routes: NGX_OK, 404
 * when no path matches (a malformed id included), 405 when only the method
 * is wrong.
 */

static ngx_int_t
ngx_ahava_messages_route(ngx_http_request_t *r, ngx_ahava_messages_ctx_t *mctx)
{
    u_char                      *p, *last, *seg;
    const char                  *pat;
    ngx_uint_t                   path_found;
    ngx_str_t                    id;
    ngx_ahava_messages_route_t  *rt;

    static ngx_str_t  prefix = ngx_string("/api/messages");

    if (r->uri.len < prefix.len
        || ngx_strncmp(r->uri.data, prefix.data, prefix.len) != 0)
    {
        return NGX_HTTP_NOT_FOUND;
    }

    last = r->uri.data + r->uri.len;

    if (last > r->uri.data + prefix.len && last[-1] == '/') {
        last--;
    }

    path_found = 0;

    for (rt = ngx_ahava_messages_routes; rt->path; rt++) {
        p = r->uri.data + prefix.len;
        pat = rt->path;
        ngx_str_null(&id);

        while (*pat && p < last) {
            if (*pat == ':') {
                seg = p;

                while (p < last && *p != '/') {
                    p++;
                }

                id.data = seg;
                id.len = p - seg;
                pat++;
                continue;
            }

            if ((u_char) *pat != *p) {
                break;
            }

            pat++;
            p++;
        }

        if (*pat != '\0' || p != last) {
            continue;
        }

        if (id.data && ngx_ahava_valid_id(id.data, id.len) != NGX_OK) {
            /* "/read" and "/unread/count" are ids of another shape */
            continue;
        }

        path_found = 1;

        if (!(r->method & rt->method)) {
            continue;
        }

        mctx->route = rt;
        mctx->id = id;

        return NGX_OK;
    }

    return path_found ? NGX_HTTP_NOT_ALLOWED : NGX_HTTP_NOT_FOUND;
}


static ngx_int_t
ngx_ahava_messages_step_auth(ngx_http_request_t *r)
{
    return ngx_ahava_authenticate(r, ngx_ahava_messages_authorized);
}


static ngx_int_t
ngx_ahava_messages_authorized(ngx_http_request_t *r)
{
    json_t                    *details;
    ngx_ahava_ctx_t           *ctx;
    ngx_ahava_messages_ctx_t  *mctx;

    ctx = ngx_ahava_get_ctx(r);
    mctx = ctx->data;

    if (mctx->route->fields) {
        details = json_array();
        if (details == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (ngx_ahava_validate(ctx->body, mctx->route->fields, details)
            != NGX_OK)
        {
            return ngx_ahava_send_error(r, NGX_HTTP_BAD_REQUEST,
                                        "VALIDATION_ERROR",
                                        "Invalid request body", details);
        }

        json_decref(details);
    }

    return mctx->route->handler(r);
}


/*
 * A query about the path's id ($1) by the caller ($2), with a statement
 * buffer of size bytes.
 */

static ngx_ahava_pg_query_t *
ngx_ahava_messages_query(ngx_http_request_t *r, ngx_ahava_pg_handler_pt done,
    size_t size, u_char **sql)
{
    ngx_ahava_ctx_t           *ctx;
    ngx_ahava_pg_query_t      *q;
    ngx_ahava_messages_ctx_t  *mctx;

    ctx = ngx_ahava_get_ctx(r);
    mctx = ctx->data;

    q = ngx_ahava_pg_query(r, NULL, done);
    *sql = ngx_pnalloc(r->pool, size);
    if (q == NULL || *sql == NULL) {
        return NULL;
    }

    q->nparams = 2;
    q->values[0] = ngx_ahava_pstrz(r, mctx->id.data, mctx->id.len);
    q->values[1] = ngx_ahava_user_param(r);

    if (q->values[0] == NULL || q->values[1] == NULL) {
        return NULL;
    }

    return q;
}


/* The visit is one the caller may see: a participant, or an admin */

static const char *
ngx_ahava_messages_visible(ngx_http_request_t *r)
{
    ngx_ahava_ctx_t  *ctx;

    ctx = ngx_ahava_get_ctx(r);

    return (ctx->user.role == NGX_AHAVA_ROLE_ADMIN)
           ? "$2::text IS NOT NULL" : NGX_AHAVA_PARTICIPANT("$2");
}


static ngx_int_t
ngx_ahava_message_send(ngx_http_request_t *r)
{
    u_char                    *sql, *last, *id;
    json_t                    *body, *type, *content, *url, *kind;
    ngx_ahava_ctx_t           *ctx;
    ngx_ahava_pg_query_t      *q;
    ngx_ahava_messages_ctx_t  *mctx;

    ctx = ngx_ahava_get_ctx(r);
    mctx = ctx->data;
    body = ctx->body;

    url = json_object_get(body, "attachmentUrl");
    kind = json_object_get(body, "attachmentType");

    if ((url && !json_is_null(url)) || (kind && !json_is_null(kind))) {
        /* an attachment must be the sender's upload: there are none yet */
        return ngx_ahava_send_error(r, NGX_HTTP_BAD_REQUEST,
                   "VALIDATION_ERROR", "Invalid request body",
                   json_pack("[{s:s, s:s}]", "field",
                             (url && !json_is_null(url)) ? "attachmentUrl"
                                                         : "attachmentType",
                             "message", "attachments are not accepted yet: "
                                        "uploads are not available"));
    }

    content = json_object_get(body, "content");
    type = json_object_get(body, "type");

    q = ngx_ahava_pg_query(r, NULL, ngx_ahava_message_sent);
    sql = ngx_pnalloc(r->pool, 2048);
    id = ngx_pnalloc(r->pool, NGX_AHAVA_NEW_ID_LEN + 1);
    if (q == NULL || sql == NULL || id == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_ahava_id_generate(id);
    id[NGX_AHAVA_NEW_ID_LEN] = '\0';

    mctx->content = ngx_ahava_pstrz(r, (u_char *) json_string_value(content),
                                    json_string_length(content));

    q->nparams = 6;
    q->values[0] = ngx_ahava_pstrz(r,
                       (u_char *) json_string_value(json_object_get(body,
                                                               "visitId")),
                       json_string_length(json_object_get(body, "visitId")));
    q->values[1] = ngx_ahava_user_param(r);
    q->values[2] = ngx_ahava_pstrz(r,
                       (u_char *) json_string_value(json_object_get(body,
                                                           "recipientId")),
                       json_string_length(json_object_get(body,
                                                          "recipientId")));
    q->values[3] = (char *) id;
    q->values[4] = (char *) (json_is_string(type) ? json_string_value(type)
                                                  : "TEXT");
    q->values[5] = ngx_ahava_encrypt_param(r, json_string_value(content),
                                           json_string_length(content));

    if (mctx->content == NULL || q->values[0] == NULL || q->values[1] == NULL
        || q->values[2] == NULL || q->values[5] == NULL)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    last = ngx_snprintf(sql, 2047,
        "WITH vis AS (SELECT v.id, b.\"patientId\", v.\"nurseId\","
        " v.\"doctorId\" FROM visits v JOIN bookings b"
        " ON b.id = v.\"bookingId\" WHERE v.id = $1 AND %s),"
        " ok AS (SELECT * FROM vis WHERE $3 <> $2 AND $3 IN"
        " (vis.\"patientId\", vis.\"nurseId\", vis.\"doctorId\")),"
        " ins AS (INSERT INTO messages (id, \"visitId\", \"senderId\","
        " \"recipientId\", type, content, \"isRead\", \"createdAt\","
        " \"updatedAt\") SELECT $4, ok.id, $2, $3, $5::\"MessageType\", $6,"
        " false, LOCALTIMESTAMP(3), LOCALTIMESTAMP(3) FROM ok RETURNING *)"
        " SELECT (SELECT count(*) FROM vis),"
        " (SELECT json_build_object(" NGX_AHAVA_MESSAGE_JSON ") FROM ins m)",
        ngx_ahava_messages_visible(r));
    *last = '\0';

    q->sql.data = sql;
    q->sql.len = last - sql;

    return ngx_ahava_pg_run(r, q);
}


static ngx_int_t
ngx_ahava_message_sent(ngx_http_request_t *r, ngx_ahava_pg_query_t *q)
{
    ngx_int_t                  rc;
    char                      *to[2];
    json_t                    *msg, *root;
    ngx_str_t                  text;
    ngx_ahava_ctx_t           *ctx;
    ngx_ahava_messages_ctx_t  *mctx;

    if (ngx_ahava_pg_visible(r, q, "Visit not found", &rc) != NGX_OK) {
        return rc;
    }

    ctx = ngx_ahava_get_ctx(r);
    mctx = ctx->data;

    if (ngx_ahava_pg_str(r, q->result, 0, 1, &text) != NGX_OK) {
        return ngx_ahava_send_error(r, NGX_HTTP_BAD_REQUEST,
                   "VALIDATION_ERROR", "Invalid request body",
                   json_pack("[{s:s, s:s}]", "field", "recipientId",
                             "message", "must be another participant of "
                                        "the visit"));
    }

    msg = ngx_ahava_json_loadn(r, &text);
    if (msg == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* what was sent is what was encrypted: no need to decrypt it back */
    json_object_set_new(msg, "content", json_string(mctx->content));

    /* the recipient, and the sender's other sessions */
    to[0] = q->values[2];
    to[1] = q->values[1];

    (void) ngx_ahava_publish(r, "NEW_MESSAGE", json_deep_copy(msg), to, 2,
                             NGX_AHAVA_PUBLISH_TO_ACTOR);

    root = json_pack("{s:b, s:o}", "success", 1, "data", msg);

    return ngx_ahava_send_json(r, NGX_HTTP_CREATED, root);
}


static ngx_int_t
ngx_ahava_messages_list(ngx_http_request_t *r)
{
    u_char                    *sql, *last;
    json_t                    *details;
    ngx_int_t                  unread;
    ngx_uint_t                 bad;
    ngx_ahava_ctx_t           *ctx;
    ngx_ahava_pg_query_t      *q;
    ngx_ahava_messages_ctx_t  *mctx;

    ctx = ngx_ahava_get_ctx(r);
    mctx = ctx->data;

    details = json_array();
    if (details == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    bad = 0;
    bad |= ngx_ahava_arg_uint(r, "limit", 20, 1, 100, &mctx->limit, details);
    bad |= ngx_ahava_arg_uint(r, "offset", 0, 0, 100000000, &mctx->offset,
                              details);
    bad |= ngx_ahava_arg_enum(r, "unreadOnly", ngx_ahava_booleans, 0,
                              &unread, details);

    if (bad) {
        return ngx_ahava_send_error(r, NGX_HTTP_BAD_REQUEST,
                                    "VALIDATION_ERROR",
                                    "Invalid query parameters", details);
    }

    json_decref(details);

    q = ngx_ahava_messages_query(r, ngx_ahava_messages_listed, 2048, &sql);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    q->nparams = 5;
    q->values[2] = (char *) ngx_ahava_booleans[unread];
    q->values[3] = ngx_pnalloc(r->pool, NGX_INT_T_LEN + 1);
    q->values[4] = ngx_pnalloc(r->pool, NGX_INT_T_LEN + 1);

    if (q->values[3] == NULL || q->values[4] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_sprintf((u_char *) q->values[3], "%ui%Z", mctx->limit);
    ngx_sprintf((u_char *) q->values[4], "%ui%Z", mctx->offset);

    last = ngx_snprintf(sql, 2047,
        "WITH vis AS (SELECT v.id FROM visits v JOIN bookings b"
        " ON b.id = v.\"bookingId\" WHERE v.id = $1 AND %s),"
        /* $1 itself, not a join with vis: the planner must see the
         * constant to use the (visitId, createdAt) index */
        " f AS (SELECT m.* FROM messages m WHERE m.\"visitId\" = $1"
        " AND EXISTS (SELECT 1 FROM vis)"
        " AND (NOT $3::bool OR (m.\"recipientId\" = $2"
        " AND NOT m.\"isRead\")))"
        " SELECT (SELECT count(*) FROM vis), (SELECT count(*) FROM f),"
        " (SELECT coalesce(json_agg(json_build_object(" NGX_AHAVA_MESSAGE_JSON
        ") ORDER BY m.\"createdAt\", m.id), '[]'::json) FROM"
        " (SELECT * FROM f ORDER BY \"createdAt\", id"
        " LIMIT $4::int OFFSET $5::int) m)",
        ngx_ahava_messages_visible(r));
    *last = '\0';

    q->sql.data = sql;
    q->sql.len = last - sql;

    return ngx_ahava_pg_run(r, q);
}


static ngx_int_t
ngx_ahava_messages_listed(ngx_http_request_t *r, ngx_ahava_pg_query_t *q)
{
    ngx_int_t                  rc;
    json_t                    *items, *root;
    ngx_str_t                  text;
    ngx_ahava_ctx_t           *ctx;
    ngx_ahava_messages_ctx_t  *mctx;

    if (ngx_ahava_pg_visible(r, q, "Visit not found", &rc) != NGX_OK) {
        return rc;
    }

    ctx = ngx_ahava_get_ctx(r);
    mctx = ctx->data;

    if (ngx_ahava_pg_str(r, q->result, 0, 2, &text) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    items = ngx_ahava_json_loadn(r, &text);
    if (items == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_ahava_decrypt_messages(r, items) != NGX_OK) {
        json_decref(items);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    root = json_pack("{s:b, s:o, s:{s:I, s:I, s:I}}", "success", 1,
                     "data", items, "meta",
                     "limit", (json_int_t) mctx->limit,
                     "offset", (json_int_t) mctx->offset,
                     "total", (json_int_t) ngx_atoof(
                                  (u_char *) PQgetvalue(q->result, 0, 1),
                                  PQgetlength(q->result, 0, 1)));

    return ngx_ahava_send_json(r, NGX_HTTP_OK, root);
}


static ngx_int_t
ngx_ahava_messages_participants(ngx_http_request_t *r)
{
    u_char                *sql, *last;
    ngx_ahava_pg_query_t  *q;

    q = ngx_ahava_messages_query(r, ngx_ahava_messages_participants_done,
                                 1024, &sql);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    last = ngx_snprintf(sql, 1023,
        "SELECT json_agg(json_build_object('id', u.id,"
        " 'firstName', u.\"firstName\", 'lastName', u.\"lastName\","
        " 'role', u.role) ORDER BY p.k) FROM visits v JOIN bookings b"
        " ON b.id = v.\"bookingId\" CROSS JOIN LATERAL (VALUES"
        " (1, b.\"patientId\"), (2, v.\"nurseId\"), (3, v.\"doctorId\"))"
        " p(k, uid)"
        " JOIN users u ON u.id = p.uid WHERE v.id = $1 AND %s",
        ngx_ahava_messages_visible(r));
    *last = '\0';

    q->sql.data = sql;
    q->sql.len = last - sql;

    return ngx_ahava_pg_run(r, q);
}


static ngx_int_t
ngx_ahava_messages_participants_done(ngx_http_request_t *r,
    ngx_ahava_pg_query_t *q)
{
    u_char     *p;
    ngx_str_t   items, body;

    if (q->rc != NGX_OK) {
        return ngx_ahava_pg_result_error(r, q);
    }

    if (PQntuples(q->result) != 1
        || ngx_ahava_pg_str(r, q->result, 0, 0, &items) != NGX_OK)
    {
        return ngx_ahava_send_error(r, NGX_HTTP_NOT_FOUND, "NOT_FOUND",
                                    "Visit not found", NULL);
    }

    body.data = ngx_pnalloc(r->pool, items.len + sizeof("{\"success\":true,"
                                                        "\"data\":}"));
    if (body.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf(body.data, "{\"success\":true,\"data\":%V}", &items);
    body.len = p - body.data;

    return ngx_ahava_send_raw(r, NGX_HTTP_OK, &body);
}


static ngx_int_t
ngx_ahava_messages_unread(ngx_http_request_t *r)
{
    ngx_ahava_pg_query_t  *q;

    q = ngx_ahava_pg_query(r,
            "SELECT coalesce(sum(n), 0)::bigint,"
            " coalesce(json_object_agg(\"visitId\", n), '{}'::json)"
            " FROM (SELECT \"visitId\", count(*) AS n FROM messages"
            " WHERE \"recipientId\" = $1 AND NOT \"isRead\""
            " GROUP BY \"visitId\") x",
            ngx_ahava_messages_unread_done);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    q->nparams = 1;
    q->values[0] = ngx_ahava_user_param(r);
    if (q->values[0] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_ahava_pg_run(r, q);
}


static ngx_int_t
ngx_ahava_messages_unread_done(ngx_http_request_t *r,
    ngx_ahava_pg_query_t *q)
{
    u_char     *p;
    ngx_str_t   count, by_visit, body;

    if (q->rc != NGX_OK) {
        return ngx_ahava_pg_result_error(r, q);
    }

    if (PQntuples(q->result) != 1
        || ngx_ahava_pg_str(r, q->result, 0, 0, &count) != NGX_OK
        || ngx_ahava_pg_str(r, q->result, 0, 1, &by_visit) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    body.data = ngx_pnalloc(r->pool, count.len + by_visit.len
                            + sizeof("{\"success\":true,\"data\":{\"count\":,"
                                     "\"byVisit\":}}"));
    if (body.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf(body.data,
                    "{\"success\":true,\"data\":{\"count\":%V,"
                    "\"byVisit\":%V}}", &count, &by_visit);
    body.len = p - body.data;

    return ngx_ahava_send_raw(r, NGX_HTTP_OK, &body);
}


static ngx_int_t
ngx_ahava_messages_read(ngx_http_request_t *r)
{
    u_char                *p, *last;
    size_t                 i, len;
    json_t                *ids, *id;
    ngx_ahava_ctx_t       *ctx;
    ngx_ahava_pg_query_t  *q;

    ctx = ngx_ahava_get_ctx(r);
    ids = json_object_get(ctx->body, "messageIds");

    q = ngx_ahava_pg_query(r,
            "WITH upd AS (UPDATE messages SET \"isRead\" = true,"
            " \"updatedAt\" = LOCALTIMESTAMP(3)"
            " WHERE id = ANY($2::text[]) AND \"recipientId\" = $1"
            " AND NOT \"isRead\" RETURNING id, \"senderId\", \"visitId\")"
            " SELECT (SELECT count(*) FROM upd),"
            " (SELECT coalesce(json_agg(json_build_object('senderId', s,"
            " 'visitId', vid, 'messageIds', ids)), '[]'::json) FROM"
            " (SELECT \"senderId\" s, \"visitId\" vid,"
            " json_agg(id ORDER BY id) ids FROM upd"
            " GROUP BY \"senderId\", \"visitId\") g)",
            ngx_ahava_messages_read_done);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* a PostgreSQL array literal: validated ids need no quoting */
    len = 2;
    json_array_foreach(ids, i, id) {
        len += json_string_length(id) + 1;
    }

    p = ngx_pnalloc(r->pool, len + 1);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    q->values[1] = (char *) p;
    last = p + len;

    *p++ = '{';
    json_array_foreach(ids, i, id) {
        p = ngx_slprintf(p, last, "%s%s", i ? "," : "",
                         json_string_value(id));
    }
    *p++ = '}';
    *p = '\0';

    q->nparams = 2;
    q->values[0] = ngx_ahava_user_param(r);
    if (q->values[0] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_ahava_pg_run(r, q);
}


static ngx_int_t
ngx_ahava_messages_read_done(ngx_http_request_t *r, ngx_ahava_pg_query_t *q)
{
    char       *to[1];
    size_t      i;
    json_t     *groups, *g, *root;
    ngx_str_t   text;

    if (q->rc != NGX_OK) {
        return ngx_ahava_pg_result_error(r, q);
    }

    if (PQntuples(q->result) != 1
        || ngx_ahava_pg_str(r, q->result, 0, 1, &text) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    groups = ngx_ahava_json_loadn(r, &text);
    if (groups == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* read receipts: each sender learns which of theirs were read */
    json_array_foreach(groups, i, g) {
        to[0] = (char *) json_string_value(json_object_get(g, "senderId"));

        (void) ngx_ahava_publish(r, "MESSAGES_READ",
                   json_pack("{s:O, s:O, s:s}",
                             "visitId", json_object_get(g, "visitId"),
                             "messageIds", json_object_get(g, "messageIds"),
                             "readBy", ngx_ahava_user_param(r)),
                   to, 1, 0);
    }

    json_decref(groups);

    root = json_pack("{s:b, s:{s:I}}", "success", 1, "data", "updated",
                     (json_int_t) ngx_atoof(
                         (u_char *) PQgetvalue(q->result, 0, 0),
                         PQgetlength(q->result, 0, 0)));

    return ngx_ahava_send_json(r, NGX_HTTP_OK, root);
}


static ngx_int_t
ngx_ahava_message_delete(ngx_http_request_t *r)
{
    u_char                *sql, *p, *last;
    ngx_ahava_pg_query_t  *q;

    q = ngx_ahava_messages_query(r, ngx_ahava_message_deleted, 4096, &sql);
    if (q == NULL || ngx_ahava_audit_params(r, q) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    last = sql + 4095;

    p = ngx_slprintf(sql, last,
        "WITH m AS (SELECT m.id FROM messages m JOIN visits v"
        " ON v.id = m.\"visitId\" JOIN bookings b ON b.id = v.\"bookingId\""
        " WHERE m.id = $1 AND %s),"
        " del AS (DELETE FROM messages d USING m WHERE d.id = m.id"
        " AND d.\"senderId\" = $2"
        " RETURNING d.id, d.\"recipientId\", d.\"visitId\")",
        ngx_ahava_messages_visible(r));

    /* deletions are security events (SPEC §11), kept with the delete */
    p = ngx_ahava_audit_cte(p, last, 3, 2, 4, "MESSAGE_DELETED", "message",
                            "del.id", "del",
                            "jsonb_build_object('visitId', del.\"visitId\","
                            " 'recipientId', del.\"recipientId\")");

    p = ngx_slprintf(p, last,
        " SELECT (SELECT count(*) FROM m), (SELECT count(*) FROM del),"
        " (SELECT \"recipientId\" FROM del), (SELECT \"visitId\" FROM del)");

    if (p == last) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *p = '\0';

    q->sql.data = sql;
    q->sql.len = p - sql;

    return ngx_ahava_pg_run(r, q);
}


static ngx_int_t
ngx_ahava_message_deleted(ngx_http_request_t *r, ngx_ahava_pg_query_t *q)
{
    ngx_int_t                  rc;
    char                      *to[1];
    json_t                    *root;
    ngx_ahava_ctx_t           *ctx;
    ngx_ahava_messages_ctx_t  *mctx;

    if (ngx_ahava_pg_visible(r, q, "Message not found", &rc) != NGX_OK) {
        return rc;
    }

    ctx = ngx_ahava_get_ctx(r);
    mctx = ctx->data;

    if (PQgetvalue(q->result, 0, 1)[0] == '0') {
        ngx_ahava_audit(r, "ACCESS_DENIED", "message", &mctx->id,
                        json_pack("{s:s}", "action", "delete"));

        return ngx_ahava_send_error(r, NGX_HTTP_FORBIDDEN, "FORBIDDEN",
                                    "Only the sender may delete a message",
                                    NULL);
    }

    ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                  "ahava: security event MESSAGE_DELETED on message \"%V\" "
                  "by user \"%s\"", &mctx->id, ngx_ahava_user_param(r));

    to[0] = PQgetvalue(q->result, 0, 2);

    root = json_pack("{s:s%, s:s}", "messageId", mctx->id.data, mctx->id.len,
                     "visitId", PQgetvalue(q->result, 0, 3));

    (void) ngx_ahava_publish(r, "MESSAGE_DELETED", root, to, 1, 0);

    root = json_pack("{s:b, s:{s:s%, s:s, s:b}}", "success", 1, "data",
                     "id", mctx->id.data, mctx->id.len,
                     "visitId", PQgetvalue(q->result, 0, 3),
                     "deleted", 1);

    return ngx_ahava_send_json(r, NGX_HTTP_OK, root);
}
