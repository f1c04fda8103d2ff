
/*
 * ngx_ahava_messages_module: /api/messages (SPEC §6), the conversation of a
 * visit.  Content is encrypted at rest by nginx (AES-256-GCM, SPEC §10) —
 * server-side encryption, not end-to-end: PostgreSQL never holds plaintext,
 * nginx holds the key.  The routes are the table below, a row per line of
 * the SPEC; the statements are the table after it.  $2 is always the
 * caller, $3 whether the caller is an admin (who may see every visit).
 */


#include "ngx_ahava_messages.h"


static ngx_int_t ngx_ahava_messages_postconfiguration(ngx_conf_t *cf);
static ngx_ahava_rc_e ngx_ahava_message_send(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_message_sent(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_messages_page(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_messages_paged(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_messages_participants(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_messages_unread(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_messages_read(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_messages_marked(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_message_delete(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_message_deleted(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_messages_wrap(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_pg_query_t *ngx_ahava_messages_query(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx, ngx_uint_t stmt);


static const char  *ngx_ahava_message_types[] = {
    "TEXT", "IMAGE", "FILE", NULL               /* never SYSTEM */
};

static const char  *ngx_ahava_booleans[] = {
    "false", "true", NULL
};


/* a message as the API shows it, from NGX_AHAVA_MESSAGE_COLUMNS */
ngx_ahava_col_t  ngx_ahava_message_cols[] = {
    { "id", NGX_AHAVA_COL_STRING, NULL },
    { "visitId", NGX_AHAVA_COL_STRING, NULL },
    { "senderId", NGX_AHAVA_COL_STRING, NULL },
    { "recipientId", NGX_AHAVA_COL_STRING, NULL },
    { "type", NGX_AHAVA_COL_STRING, NULL },
    { "isRead", NGX_AHAVA_COL_BOOL, NULL },
    { "attachmentUrl", NGX_AHAVA_COL_STRING, NULL },
    { "attachmentType", NGX_AHAVA_COL_STRING, NULL },
    { "createdAt", NGX_AHAVA_COL_TIME, NULL },
    { "updatedAt", NGX_AHAVA_COL_TIME, NULL },
    { "content", NGX_AHAVA_COL_DECRYPT, "contentError" },
    { NULL, 0, NULL }
};

/* the same without its content, for the one just sent (known in clear),
 * from the send statement's fourth column on */
#define NGX_AHAVA_MESSAGE_SENT_COLS   10
#define NGX_AHAVA_MESSAGE_SENT_FIRST  4
#define NGX_AHAVA_MESSAGE_SENT_OUTBOX 3


static ngx_ahava_field_t  ngx_ahava_message_fields[] = {
    { "visitId", NGX_AHAVA_FIELD_ID, 1, 0, 0, NULL },
    { "recipientId", NGX_AHAVA_FIELD_ID, 1, 0, 0, NULL },
    /* stored encrypted: U+0000 is kept, never cut */
    { "content", NGX_AHAVA_FIELD_TEXT, 1, 1, 5000, NULL },
    { "type", NGX_AHAVA_FIELD_ENUM, 0, 0, 0, ngx_ahava_message_types },
    { "attachmentUrl", NGX_AHAVA_FIELD_STRING, 0, 1, 2048, NULL },
    { "attachmentType", NGX_AHAVA_FIELD_STRING, 0, 1, 255, NULL },
    { NULL, 0, 0, 0, 0, NULL }
};

static ngx_ahava_field_t  ngx_ahava_read_fields[] = {
    { "messageIds", NGX_AHAVA_FIELD_ID_ARRAY, 1, 1, 100, NULL },
    { NULL, 0, 0, 0, 0, NULL }
};

/* the page's query arguments, in ctx->args in this order */
static ngx_ahava_arg_t  ngx_ahava_page_args[] = {
    { "limit", NGX_AHAVA_ARG_UINT, 20, 1, 100, NULL },
    { "offset", NGX_AHAVA_ARG_UINT, 0, 0, 100000000, NULL },
    { "unreadOnly", NGX_AHAVA_ARG_ENUM, 0, 0, 0, ngx_ahava_booleans },
    { NULL, 0, 0, 0, 0, NULL }
};


/* SPEC §6, row by row */

static ngx_ahava_route_t  ngx_ahava_messages_routes[] = {

    { NGX_HTTP_POST, "/api/messages", NULL, ngx_ahava_message_fields,
      ngx_ahava_message_send, NULL, 0, 0 },

    { NGX_HTTP_GET, "/api/messages/visit/:", ngx_ahava_page_args, NULL,
      ngx_ahava_messages_page, NULL, 0, 0 },

    { NGX_HTTP_GET, "/api/messages/visit/:/participants", NULL, NULL,
      ngx_ahava_messages_participants, NULL, 0, 0 },

    { NGX_HTTP_GET, "/api/messages/unread/count", NULL, NULL,
      ngx_ahava_messages_unread, NULL, 0, 0 },

    { NGX_HTTP_POST, "/api/messages/read", NULL, ngx_ahava_read_fields,
      ngx_ahava_messages_read, NULL, 0, 0 },

    { NGX_HTTP_DELETE, "/api/messages/:", NULL, NULL,
      ngx_ahava_message_delete, NULL, 0, 0 },

    { 0, NULL, NULL, NULL, NULL, NULL, 0, 0 }
};


/* the visit $1 is one the caller may see: a participant, or an admin */
#define NGX_AHAVA_VISIBLE_VISIT                                              \
    "SELECT v.id, b.\"patientId\", v.\"nurseId\", v.\"doctorId\""            \
    " FROM visits v JOIN bookings b ON b.id = v.\"bookingId\""               \
    " WHERE v.id = $1"                                                       \
    " AND ($3::bool OR $2 IN (b.\"patientId\", v.\"nurseId\","               \
    " v.\"doctorId\"))"

#define NGX_AHAVA_MESSAGES_PAGE_SQL(which)                                   \
    "SELECT t.ok, t.total, m.* FROM (SELECT vis.ok, CASE WHEN vis.ok"        \
    " THEN (SELECT count(*) FROM messages m WHERE m.\"visitId\" = $1"        \
    " AND " which ") END AS total"                                           \
    " FROM (SELECT EXISTS (" NGX_AHAVA_VISIBLE_VISIT ") AS ok) vis) t"       \
    " LEFT JOIN LATERAL (SELECT " NGX_AHAVA_MESSAGE_COLUMNS                  \
    " FROM messages m WHERE t.ok AND m.\"visitId\" = $1 AND " which          \
    " ORDER BY m.\"createdAt\", m.id LIMIT $4::int OFFSET $5::int) m ON true"  \
    " ORDER BY m.\"createdAt\", m.id"

enum {
    NGX_AHAVA_MESSAGE_SEND = 0,
    NGX_AHAVA_MESSAGES_PAGE,
    NGX_AHAVA_MESSAGES_PAGE_UNREAD,
    NGX_AHAVA_MESSAGES_PARTICIPANTS,
    NGX_AHAVA_MESSAGES_UNREAD,
    NGX_AHAVA_MESSAGES_READ,
    NGX_AHAVA_MESSAGE_DELETE,
    NGX_AHAVA_MESSAGES_NSTMTS
};

/*
 * A new message's outbox row (SPEC §8, §9): NEW_MESSAGE to its recipient
 * ($4) and to the sender's ($2) other sessions, the data without its
 * content and the ciphertext beside it; a push to the recipient naming the
 * sender, never the text.  Written here rather than by a PL/pgSQL call
 * (sql/006_outbox.sql's ahava_outbox_message, the same row), which cost
 * PostgreSQL 3 % of the send.  The ids are of [A-Za-z0-9_-] (validated):
 * only the title needs JSON escaping.
 */
#define NGX_AHAVA_MESSAGE_OUTBOX                                             \
    "INSERT INTO ahava_outbox (topic, recipients, payload, secret, jobs)"    \
    " SELECT 'NEW_MESSAGE', ARRAY[$4, $2],"                                  \
    " json_build_object(" NGX_AHAVA_MESSAGE_FIELDS ")::text, m.content,"     \
    " '[[\"push-notification\",{\"userId\":\"' || $4"                        \
    " || '\",\"title\":\"New message\",\"body\":'"                           \
    " || to_json('New message from '"                                        \
    " || coalesce(ahava_title(s.role, s.\"firstName\", s.\"lastName\"),"     \
    " 'a participant'))::text"                                               \
    " || ',\"data\":{\"type\":\"NEW_MESSAGE\",\"visitId\":\"'"               \
    " || m.\"visitId\" || '\",\"messageId\":\"' || m.id || '\"}}]]'"         \
    " FROM ins m JOIN users s ON s.id = $2"                                  \
    " RETURNING ARRAY[id] AS ids"


static ngx_ahava_stmt_t  ngx_ahava_messages_stmts[] = {

    /* POST /api/messages: sender and recipient distinct participants;
     * $4 recipient, $5 new id, $6 type, $7 ciphertext, $8 $9 attachment,
     * $10 its stored path: an upload of the sender's.  NEW_MESSAGE and the
     * recipient's push into the outbox with it.  One row: the visits seen,
     * the uploads named, whether the sender's, the outbox rows, the
     * message */
    { ngx_string("message send"),
      "WITH vis AS (" NGX_AHAVA_VISIBLE_VISIT "),"
      " att AS (SELECT \"ownerId\" FROM uploads WHERE \"storedPath\" = $10),"
      " ins AS (INSERT INTO messages (id, \"visitId\", \"senderId\","
      " \"recipientId\", type, content, \"isRead\", \"attachmentUrl\","
      " \"attachmentType\", \"createdAt\", \"updatedAt\")"
      " SELECT $5, vis.id, $2, $4, $6::text::\"MessageType\", $7, false,"
      " $8, $9, LOCALTIMESTAMP(3), LOCALTIMESTAMP(3) FROM vis"
      " WHERE $4 <> $2"
      " AND $4 IN (vis.\"patientId\", vis.\"nurseId\", vis.\"doctorId\")"
      " AND ($10::text IS NULL"
      " OR EXISTS (SELECT 1 FROM att WHERE \"ownerId\" = $2))"
      " RETURNING *),"
      " ob AS (" NGX_AHAVA_MESSAGE_OUTBOX ")"
      " SELECT (SELECT count(*) FROM vis), (SELECT count(*) FROM att),"
      " coalesce((SELECT bool_or(\"ownerId\" = $2) FROM att), false),"
      " (SELECT ids::text FROM ob), m.*"
      " FROM (SELECT 1) one LEFT JOIN (SELECT " NGX_AHAVA_MESSAGE_COLUMNS
      " FROM ins m) m ON true",
      10, 0, "" },

    /* GET /api/messages/visit/:id: oldest first; $4 limit, $5 offset.
     * Rows: visible, total, a message's columns (one row of NULLs when the
     * page is empty).  A statement each for all and unreadOnly=true, so
     * that each count is an index-only scan of its own index */
    { ngx_string("messages page"),
      NGX_AHAVA_MESSAGES_PAGE_SQL("TRUE"),
      5, 0, "" },

    { ngx_string("messages page (unread)"),
      NGX_AHAVA_MESSAGES_PAGE_SQL("m.\"recipientId\" = $2 AND NOT m.\"isRead\""),
      5, 0, "" },

    /* GET /api/messages/visit/:id/participants: patient, nurse, doctor */
    { ngx_string("messages participants"),
      "SELECT json_agg(json_build_object('id', u.id,"
      " 'firstName', u.\"firstName\", 'lastName', u.\"lastName\","
      " 'role', u.role) ORDER BY p.k)"
      " FROM (" NGX_AHAVA_VISIBLE_VISIT ") v CROSS JOIN LATERAL (VALUES"
      " (1, v.\"patientId\"), (2, v.\"nurseId\"), (3, v.\"doctorId\"))"
      " p(k, uid) JOIN users u ON u.id = p.uid",
      3, 0, "" },

    /* GET /api/messages/unread/count: the caller's, by visit */
    { ngx_string("messages unread count"),
      "SELECT coalesce(sum(n), 0)::bigint,"
      " coalesce(json_object_agg(\"visitId\", n), '{}'::json)"
      " FROM (SELECT \"visitId\", count(*) AS n FROM messages"
      " WHERE \"recipientId\" = $1 AND NOT \"isRead\""
      " GROUP BY \"visitId\") x",
      1, 0, "" },

    /* POST /api/messages/read {messageIds}: only the caller's received
     * ones; $2 the ids.  A read receipt per sender and visit into the
     * outbox.  One row: how many, the outbox rows */
    { ngx_string("messages read"),
      "WITH upd AS (UPDATE messages SET \"isRead\" = true,"
      " \"updatedAt\" = LOCALTIMESTAMP(3)"
      " WHERE id = ANY($2::text[]) AND \"recipientId\" = $1"
      " AND NOT \"isRead\" RETURNING id, \"senderId\", \"visitId\"),"
      " ob AS (INSERT INTO ahava_outbox (topic, recipients, payload)"
      " SELECT 'MESSAGES_READ', ARRAY[\"senderId\"],"
      " json_build_object('visitId', \"visitId\", 'messageIds',"
      " json_agg(id ORDER BY id), 'readBy', $1::text)::text FROM upd"
      " GROUP BY \"senderId\", \"visitId\" RETURNING id)"
      " SELECT (SELECT count(*) FROM upd),"
      " (SELECT array_agg(id ORDER BY id) FROM ob)::text",
      2, 0, "" },

    /* DELETE /api/messages/:id: the sender only, audited with the delete;
     * $4 the audit row's id, $5 the caller's role; MESSAGE_DELETED to the
     * recipient into the outbox.  One row: seen, deleted, the caller is its
     * sender, the recipient, the visit, the outbox row */
    { ngx_string("message delete"),
      "WITH m AS (SELECT m.id, m.\"senderId\" FROM messages m"
      " JOIN visits v ON v.id = m.\"visitId\""
      " JOIN bookings b ON b.id = v.\"bookingId\""
      " WHERE m.id = $1 AND ($3::bool OR $2 IN (b.\"patientId\","
      " v.\"nurseId\", v.\"doctorId\"))),"
      " del AS (DELETE FROM messages d USING m WHERE d.id = m.id"
      " AND d.\"senderId\" = $2"
      " RETURNING d.id, d.\"recipientId\", d.\"visitId\"), "
      NGX_AHAVA_AUDIT_INSERT("$4", "$2", "$5", "MESSAGE_DELETED", "message",
                             "del.id", "del",
                             "jsonb_build_object('visitId', del.\"visitId\","
                             " 'recipientId', del.\"recipientId\")")
      ", ob AS (INSERT INTO ahava_outbox (topic, recipients, payload)"
      " SELECT 'MESSAGE_DELETED', ARRAY[\"recipientId\"],"
      " json_build_object('messageId', id, 'visitId', \"visitId\")::text"
      " FROM del RETURNING id)"
      " SELECT (SELECT count(*) FROM m), (SELECT count(*) FROM del),"
      " coalesce((SELECT \"senderId\" = $2 FROM m), false),"
      " (SELECT \"recipientId\" FROM del), (SELECT \"visitId\" FROM del),"
      " (SELECT array_agg(id) FROM ob)::text",
      5, 0, "" },
};


static ngx_command_t  ngx_ahava_messages_commands[] = {

    { ngx_string("ahava_messages"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_ahava_conf_set_routes,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      ngx_ahava_messages_routes },

      ngx_null_command
};


static ngx_http_module_t  ngx_ahava_messages_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_ahava_messages_postconfiguration,  /* postconfiguration */

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
ngx_ahava_messages_postconfiguration(ngx_conf_t *cf)
{
    return ngx_ahava_declare(cf, ngx_ahava_messages_stmts,
                             NGX_AHAVA_MESSAGES_NSTMTS);
}


/* $1 the path's id (or NULL), $2 the caller, $3 whether an admin */

static ngx_ahava_pg_query_t *
ngx_ahava_messages_query(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    ngx_uint_t stmt)
{
    ngx_ahava_pg_query_t  *q;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: messages \"%V\"",
                   &ngx_ahava_messages_stmts[stmt].name);

    q = ngx_ahava_query_create(r, &ngx_ahava_messages_stmts[stmt]);
    if (q == NULL) {
        return NULL;
    }

    q->values[0] = (char *) ctx->ids[0].data;
    q->values[1] = (char *) ctx->user.id;
    q->values[2] = (ctx->user.role == NGX_AHAVA_ROLE_ADMIN) ? "t" : "f";

    return q;
}


/* POST /api/messages */

static ngx_ahava_rc_e
ngx_ahava_message_send(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    u_char                *id;
    json_t                *body, *url, *kind, *type, *content;
    ngx_str_t              stored;
    ngx_ahava_pg_query_t  *q;

    body = ctx->body;
    ngx_str_null(&stored);

    url = json_object_get(body, "attachmentUrl");
    kind = json_object_get(body, "attachmentType");

    if (json_is_string(kind) && !json_is_string(url)) {
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_BAD_REQUEST,
                   "VALIDATION_ERROR", "Invalid request body",
                   ngx_ahava_detail(NULL, "attachmentType", "goes with an "
                                    "attachmentUrl"));
    }

    /* an attachment is an upload: /uploads/{images|documents}/<name> */
    if (json_is_string(url)
        && ngx_ahava_upload_url((u_char *) json_string_value(url),
                                json_string_length(url), &stored)
           != NGX_OK)
    {
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_BAD_REQUEST,
                   "VALIDATION_ERROR", "Invalid request body",
                   ngx_ahava_detail(NULL, "attachmentUrl", "must be the url "
                                    "of an upload"));
    }

    q = ngx_ahava_messages_query(r, ctx, NGX_AHAVA_MESSAGE_SEND);
    id = ngx_pnalloc(r->pool, NGX_AHAVA_NEW_ID_LEN + 1);
    if (q == NULL || id == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    ngx_ahava_id_generate(id);
    id[NGX_AHAVA_NEW_ID_LEN] = '\0';

    content = json_object_get(body, "content");
    type = json_object_get(body, "type");

    /* validated ids: no NUL inside */
    q->values[0] = (char *) json_string_value(json_object_get(body,
                                                             "visitId"));
    q->values[3] = (char *) json_string_value(json_object_get(body,
                                                             "recipientId"));
    q->values[4] = (char *) id;
    q->values[5] = (char *) (json_is_string(type) ? json_string_value(type)
                                                  : "TEXT");
    q->values[6] = ngx_ahava_encrypt_param(r,
                                      (u_char *) json_string_value(content),
                                      json_string_length(content));
    q->values[7] = (char *) json_string_value(url);       /* or NULL */
    q->values[8] = (char *) json_string_value(kind);

    if (q->values[6] == NULL
        || ngx_ahava_param(r, q, 9, url ? stored.data : NULL, stored.len)
           != NGX_OK)
    {
        return ngx_ahava_fail(r, ctx);
    }

    return ngx_ahava_query(r, ctx, q, ngx_ahava_message_sent);
}


static ngx_ahava_rc_e
ngx_ahava_message_sent(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    u_char           *p, *body;
    size_t            len;
    json_t           *content;
    PGresult         *res;
    ngx_ahava_col_t   cols[NGX_AHAVA_MESSAGE_SENT_COLS + 1];

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: message sent");

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

    if (ctx->query->values[9] && PQgetvalue(res, 0, 1)[0] == '0') {
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_BAD_REQUEST,
                   "VALIDATION_ERROR", "Invalid request body",
                   ngx_ahava_detail(NULL, "attachmentUrl", "names no upload"));
    }

    if (ctx->query->values[9] && PQgetvalue(res, 0, 2)[0] != 't') {
        ngx_ahava_audit(r, ctx, "ACCESS_DENIED", "upload", NULL,
                        json_pack("{s:s, s:s}", "action", "attach",
                                  "url", ctx->query->values[7]));

        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_FORBIDDEN, "FORBIDDEN",
                                      "An attachment must be your own upload",
                                      NULL);
    }

    if (PQgetisnull(res, 0, NGX_AHAVA_MESSAGE_SENT_FIRST)) {
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_BAD_REQUEST,
                   "VALIDATION_ERROR", "Invalid request body",
                   ngx_ahava_detail(NULL, "recipientId", "must be another "
                                    "participant of the visit"));
    }

    /* what was sent is what was encrypted: no need to decrypt it back */
    ngx_memcpy(cols, ngx_ahava_message_cols, sizeof(cols));
    cols[NGX_AHAVA_MESSAGE_SENT_COLS].name = NULL;

    content = json_object_get(ctx->body, "content");

    len = sizeof("{\"success\":true,\"data\":}") + sizeof(",\"content\":")
          + ngx_ahava_row_size(res, 0, NGX_AHAVA_MESSAGE_SENT_FIRST, cols)
          + ngx_ahava_json_string_size((u_char *) json_string_value(content),
                                       json_string_length(content));

    body = ngx_pnalloc(r->pool, len);
    if (body == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    p = ngx_cpymem(body, "{\"success\":true,\"data\":",
                   sizeof("{\"success\":true,\"data\":") - 1);

    p = ngx_ahava_row_write(r, p, res, 0, NGX_AHAVA_MESSAGE_SENT_FIRST, cols,
                            NGX_AHAVA_ROW_OPEN);
    if (p == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    p = ngx_cpymem(p, ",\"content\":", sizeof(",\"content\":") - 1);
    p = ngx_ahava_json_string_write(p, (u_char *) json_string_value(content),
                                    json_string_length(content));
    *p++ = '}';

    /* committed: the recipient, and the sender's other sessions, learn
     * it from the outbox (the same object), the recipient's push with it */
    ngx_ahava_outbox_relay((u_char *) PQgetvalue(res, 0,
                                              NGX_AHAVA_MESSAGE_SENT_OUTBOX),
                           PQgetlength(res, 0, NGX_AHAVA_MESSAGE_SENT_OUTBOX));

    *p++ = '}';

    return ngx_ahava_answer_text(r, ctx, NGX_HTTP_CREATED, body, p - body);
}


/* GET /api/messages/visit/:visitId?limit&offset&unreadOnly */

static ngx_ahava_rc_e
ngx_ahava_messages_page(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    ngx_ahava_pg_query_t  *q;

    q = ngx_ahava_messages_query(r, ctx, ctx->args[2]
                                         ? NGX_AHAVA_MESSAGES_PAGE_UNREAD
                                         : NGX_AHAVA_MESSAGES_PAGE);

    if (q == NULL
        || ngx_ahava_param_uint(r, q, 3, ctx->args[0]) != NGX_OK
        || ngx_ahava_param_uint(r, q, 4, ctx->args[1]) != NGX_OK)
    {
        return ngx_ahava_fail(r, ctx);
    }

    return ngx_ahava_query(r, ctx, q, ngx_ahava_messages_paged);
}


static ngx_ahava_rc_e
ngx_ahava_messages_paged(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    int        row, n;
    u_char    *body, *p;
    size_t     len;
    PGresult  *res;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: messages paged");

    if (ctx->query->rc != NGX_OK) {
        return ngx_ahava_query_failed(r, ctx);
    }

    res = ctx->query->result;
    n = PQntuples(res);

    if (n == 0) {
        return ngx_ahava_fail(r, ctx);
    }

    if (PQgetvalue(res, 0, 0)[0] != 't') {
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_NOT_FOUND, "NOT_FOUND",
                                      "Visit not found", NULL);
    }

    /* an empty page is one row of NULLs after the counts */
    if (PQgetisnull(res, 0, 2)) {
        n = 0;
    }

    len = sizeof("{\"success\":true,\"data\":[],\"meta\":{\"limit\":,"
                 "\"offset\":,\"total\":}}")
          + 3 * NGX_INT_T_LEN;

    for (row = 0; row < n; row++) {
        len += ngx_ahava_row_size(res, row, 2, ngx_ahava_message_cols) + 1;
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

        p = ngx_ahava_row_write(r, p, res, row, 2, ngx_ahava_message_cols, 0);
        if (p == NULL) {
            return ngx_ahava_fail(r, ctx);
        }
    }

    p = ngx_sprintf(p, "],\"meta\":{\"limit\":%i,\"offset\":%i,\"total\":",
                    ctx->args[0], ctx->args[1]);
    p = ngx_ahava_pg_copy(p, res, 0, 1);
    *p++ = '}';
    *p++ = '}';

    return ngx_ahava_answer_text(r, ctx, NGX_HTTP_OK, body, p - body);
}


/* GET /api/messages/visit/:visitId/participants */

static ngx_ahava_rc_e
ngx_ahava_messages_participants(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    ngx_ahava_pg_query_t  *q;

    q = ngx_ahava_messages_query(r, ctx, NGX_AHAVA_MESSAGES_PARTICIPANTS);
    if (q == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    return ngx_ahava_query(r, ctx, q, ngx_ahava_messages_wrap);
}


/* GET /api/messages/unread/count */

static ngx_ahava_rc_e
ngx_ahava_messages_unread(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    ngx_ahava_pg_query_t  *q;

    q = ngx_ahava_messages_query(r, ctx, NGX_AHAVA_MESSAGES_UNREAD);
    if (q == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    q->values[0] = (char *) ctx->user.id;

    return ngx_ahava_query(r, ctx, q, ngx_ahava_messages_wrap);
}


/*
 * The answer of the participants (one JSON column, NULL: no visit seen)
 * and of the unread count (the count and the JSON by visit)
 */

static ngx_ahava_rc_e
ngx_ahava_messages_wrap(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    u_char    *body, *p;
    size_t     len;
    PGresult  *res;

    if (ctx->query->rc != NGX_OK) {
        return ngx_ahava_query_failed(r, ctx);
    }

    res = ctx->query->result;

    if (PQntuples(res) != 1) {
        return ngx_ahava_fail(r, ctx);
    }

    if (PQgetisnull(res, 0, 0)) {
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_NOT_FOUND, "NOT_FOUND",
                                      "Visit not found", NULL);
    }

    len = sizeof("{\"success\":true,\"data\":{\"count\":,\"byVisit\":}}")
          + PQgetlength(res, 0, 0)
          + (PQnfields(res) > 1 ? PQgetlength(res, 0, 1) : 0);

    body = ngx_pnalloc(r->pool, len);
    if (body == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    p = ngx_cpymem(body, "{\"success\":true,\"data\":",
                   sizeof("{\"success\":true,\"data\":") - 1);

    if (PQnfields(res) == 1) {
        p = ngx_ahava_pg_copy(p, res, 0, 0);

    } else {
        p = ngx_cpymem(p, "{\"count\":", sizeof("{\"count\":") - 1);
        p = ngx_ahava_pg_copy(p, res, 0, 0);
        p = ngx_cpymem(p, ",\"byVisit\":", sizeof(",\"byVisit\":") - 1);
        p = ngx_ahava_pg_copy(p, res, 0, 1);
        *p++ = '}';
    }

    *p++ = '}';

    return ngx_ahava_answer_text(r, ctx, NGX_HTTP_OK, body, p - body);
}


/* POST /api/messages/read {messageIds} — read receipts to each sender */

static ngx_ahava_rc_e
ngx_ahava_messages_read(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    u_char                *p, *last;
    size_t                 i, len;
    json_t                *ids, *id;
    ngx_ahava_pg_query_t  *q;

    ids = json_object_get(ctx->body, "messageIds");

    q = ngx_ahava_messages_query(r, ctx, NGX_AHAVA_MESSAGES_READ);
    if (q == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    /* a PostgreSQL array literal: validated ids need no quoting */
    len = 3;
    json_array_foreach(ids, i, id) {
        len += json_string_length(id) + 1;
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    q->values[0] = (char *) ctx->user.id;
    q->values[1] = (char *) p;
    last = p + len;

    *p++ = '{';
    json_array_foreach(ids, i, id) {
        p = ngx_slprintf(p, last, "%s%s", i ? "," : "",
                         json_string_value(id));
    }
    *p++ = '}';
    *p = '\0';

    return ngx_ahava_query(r, ctx, q, ngx_ahava_messages_marked);
}


static ngx_ahava_rc_e
ngx_ahava_messages_marked(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    u_char    *body, *p;
    PGresult  *res;

    if (ctx->query->rc != NGX_OK) {
        return ngx_ahava_query_failed(r, ctx);
    }

    res = ctx->query->result;

    if (PQntuples(res) != 1) {
        return ngx_ahava_fail(r, ctx);
    }

    /* read receipts: each sender learns which of theirs were read */
    ngx_ahava_outbox_relay((u_char *) PQgetvalue(res, 0, 1),
                           PQgetlength(res, 0, 1));

    body = ngx_pnalloc(r->pool, 64 + PQgetlength(res, 0, 0));
    if (body == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    p = ngx_sprintf(body, "{\"success\":true,\"data\":{\"updated\":%s}}",
                    PQgetvalue(res, 0, 0));

    return ngx_ahava_answer_text(r, ctx, NGX_HTTP_OK, body, p - body);
}


/* DELETE /api/messages/:id — the sender only */

static ngx_ahava_rc_e
ngx_ahava_message_delete(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    u_char                *id;
    ngx_ahava_pg_query_t  *q;

    q = ngx_ahava_messages_query(r, ctx, NGX_AHAVA_MESSAGE_DELETE);
    id = ngx_pnalloc(r->pool, NGX_AHAVA_NEW_ID_LEN + 1);
    if (q == NULL || id == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    ngx_ahava_id_generate(id);
    id[NGX_AHAVA_NEW_ID_LEN] = '\0';

    q->values[3] = (char *) id;
    q->values[4] = (char *) ngx_ahava_role_name(ctx->user.role);

    return ngx_ahava_query(r, ctx, q, ngx_ahava_message_deleted);
}


static ngx_ahava_rc_e
ngx_ahava_message_deleted(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    u_char    *body, *p;
    PGresult  *res;

    if (ctx->query->rc != NGX_OK) {
        return ngx_ahava_query_failed(r, ctx);
    }

    res = ctx->query->result;

    if (PQntuples(res) != 1) {
        return ngx_ahava_fail(r, ctx);
    }

    if (PQgetvalue(res, 0, 0)[0] == '0'
        || (PQgetvalue(res, 0, 1)[0] == '0'
            && PQgetvalue(res, 0, 2)[0] == 't'))
    {
        /* not seen, or its sender's but gone meanwhile (a concurrent
         * delete won): either way there is nothing here */
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_NOT_FOUND, "NOT_FOUND",
                                      "Message not found", NULL);
    }

    if (PQgetvalue(res, 0, 1)[0] == '0') {
        ngx_ahava_audit(r, ctx, "ACCESS_DENIED", "message", &ctx->ids[0],
                        json_pack("{s:s}", "action", "delete"));

        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_FORBIDDEN, "FORBIDDEN",
                                      "Only the sender may delete a message",
                                      NULL);
    }

    ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                  "ahava: security event MESSAGE_DELETED on message \"%V\" "
                  "by user \"%s\"", &ctx->ids[0], ctx->user.id);

    body = ngx_pnalloc(r->pool, 128 + 2 * NGX_AHAVA_ID_MAX_LEN);
    if (body == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    ngx_ahava_outbox_relay((u_char *) PQgetvalue(res, 0, 5),
                           PQgetlength(res, 0, 5));

    /* ids need no escaping */
    p = ngx_sprintf(body, "{\"success\":true,\"data\":{\"id\":\"%V\","
                    "\"visitId\":\"%s\",\"deleted\":true}}",
                    &ctx->ids[0], PQgetvalue(res, 0, 4));

    return ngx_ahava_answer_text(r, ctx, NGX_HTTP_OK, body, p - body);
}
