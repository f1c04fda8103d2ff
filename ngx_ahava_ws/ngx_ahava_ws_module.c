
/*
 * ngx_ahava_ws_module: GET /ws (SPEC §8), RFC 6455 inside the worker.
 *
 * The handshake is an API route like any other: the token (from
 * Authorization, Sec-WebSocket-Protocol "bearer, <jwt>" or ?token=) is
 * checked before anything, then the method, the arguments, the upgrade
 * headers and ?since=.  After the 101 the HTTP request is freed, as nginx
 * frees an idle keep-alive request: the connection then belongs to a small
 * session (c->data), so an idle socket costs little more than its
 * connection.  A session holds:
 *
 *   - the frame parser (ngx_ahava_ws_frame.c); its 64 KiB message buffer
 *     only while a message is being received;
 *   - a bounded send queue of shared frames: a client that cannot keep up
 *     is closed with 1008, memory does not grow;
 *   - a ping timer: a ping every ahava_ws_ping_interval, closed when the
 *     client has said nothing for ahava_ws_pong_timeout;
 *   - at most one client frame being served (its own pool and statement);
 *     reading pauses meanwhile, so a client cannot queue work on us.
 *
 * Events reach the sockets through the worker's hub (ngx_ahava_ws_hub.c).
 * On a reload or a graceful stop nginx closes idle connections: each
 * socket is closed with 1001 then, so clients reconnect to new workers.
 */


#include "ngx_ahava_ws.h"
#include "ngx_ahava_messages.h"
#include "ngx_ahava_visits.h"


#define NGX_AHAVA_WS_UPGRADE_REQUIRED  426

#define NGX_AHAVA_WS_READ_BUF      16384
#define NGX_AHAVA_WS_READ_MAX      (4 * NGX_AHAVA_WS_READ_BUF)  /* a turn */
#define NGX_AHAVA_WS_REPLAY_PAGE   "100"
#define NGX_AHAVA_WS_REPLAY_ROWS   100


typedef struct {
    ngx_flag_t                 used;
    ngx_ahava_ws_hub_t        *hub;             /* per worker */
} ngx_ahava_ws_main_conf_t;


/*
 * A replay: its cursor (the last message sent) and the ids of the last
 * messages it sent, so that a live event of one of them, arriving after
 * its page or even after the replay, is not sent again (one that arrives
 * before is marked in the held queue).  Dropping by id only: a message older than the cursor that
 * committed late is still delivered.
 */
#define NGX_AHAVA_WS_REPLAY_IDS    256

typedef struct {
    u_char                     at[NGX_AHAVA_WS_AT_LEN + 1];
    size_t                     at_len;
    u_char                     id[NGX_AHAVA_ID_MAX_LEN + 1];
    ngx_uint_t                 nsent;
    u_char                     sent[NGX_AHAVA_WS_REPLAY_IDS]
                                   [NGX_AHAVA_ID_MAX_LEN + 1];
} ngx_ahava_ws_replay_t;


typedef void (*ngx_ahava_ws_done_pt)(ngx_ahava_ws_session_t *s,
    ngx_ahava_pg_query_t *q, ngx_pool_t *pool);


/* the work of a client frame, in its own pool */
typedef struct {
    ngx_ahava_pg_query_t       query;
    ngx_ahava_ws_session_t    *session;
    ngx_ahava_ws_done_pt       done;
    ngx_pool_t                *pool;            /* the op's, s->op */
} ngx_ahava_ws_op_t;


static void *ngx_ahava_ws_create_main_conf(ngx_conf_t *cf);
static void *ngx_ahava_ws_create_loc_conf(ngx_conf_t *cf);
static char *ngx_ahava_ws_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_ahava_ws(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_ahava_ws_postconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_ahava_ws_init_process(ngx_cycle_t *cycle);
static void ngx_ahava_ws_exit_process(ngx_cycle_t *cycle);

static ngx_ahava_rc_e ngx_ahava_ws_handshake(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_ws_since_checked(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_ws_upgrade(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx, PGresult *since);
static ngx_table_elt_t *ngx_ahava_ws_header(ngx_http_request_t *r,
    const char *name);
static ngx_int_t ngx_ahava_ws_has_token(ngx_str_t *value, const char *token);
static ngx_int_t ngx_ahava_ws_push_header(ngx_http_request_t *r,
    const char *name, u_char *value, size_t len);
static void ngx_ahava_ws_takeover(ngx_event_t *ev);
static void ngx_ahava_ws_abandon(void *data);
static void ngx_ahava_ws_takeover_write(ngx_http_request_t *r);

static void ngx_ahava_ws_read_handler(ngx_event_t *rev);
static ngx_int_t ngx_ahava_ws_consume(ngx_ahava_ws_session_t *s, u_char *p,
    u_char *last);
static void ngx_ahava_ws_message(ngx_ahava_ws_session_t *s, u_char *data,
    size_t len);
static void ngx_ahava_ws_typing(ngx_ahava_ws_session_t *s, json_t *data);
static void ngx_ahava_ws_typing_checked(ngx_ahava_ws_session_t *s,
    ngx_ahava_pg_query_t *q, ngx_pool_t *pool);
static void ngx_ahava_ws_location(ngx_ahava_ws_session_t *s, json_t *data);
static void ngx_ahava_ws_location_done(ngx_ahava_ws_session_t *s,
    ngx_ahava_pg_query_t *q, ngx_pool_t *pool);
static ngx_ahava_pg_query_t *ngx_ahava_ws_op(ngx_ahava_ws_session_t *s,
    ngx_ahava_stmt_t *stmt);
static ngx_int_t ngx_ahava_ws_op_send(ngx_ahava_ws_session_t *s,
    ngx_ahava_pg_query_t *q, ngx_ahava_ws_done_pt done);
static void ngx_ahava_ws_op_done(ngx_ahava_pg_query_t *q);
static void ngx_ahava_ws_op_end(ngx_ahava_ws_session_t *s);
static ngx_int_t ngx_ahava_ws_defer(ngx_ahava_ws_session_t *s, u_char *data,
    size_t len);
static ngx_int_t ngx_ahava_ws_undefer(ngx_ahava_ws_session_t *s);
static void ngx_ahava_ws_replay_page(ngx_ahava_ws_session_t *s);
static void ngx_ahava_ws_replayed(ngx_ahava_ws_session_t *s,
    ngx_ahava_pg_query_t *q, ngx_pool_t *pool);
static void ngx_ahava_ws_replay_end(ngx_ahava_ws_session_t *s);
static void ngx_ahava_ws_last(ngx_ahava_ws_session_t *s, u_char *at,
    size_t len, u_char *id);
static u_char *ngx_ahava_ws_json_value(u_char *p, u_char *end,
    size_t *len);
static ngx_int_t ngx_ahava_ws_resume_start(ngx_ahava_ws_session_t *s);

static void ngx_ahava_ws_send_event(ngx_ahava_ws_session_t *s,
    const char *type, u_char *data, size_t len);
static void ngx_ahava_ws_send_error(ngx_ahava_ws_session_t *s,
    const char *code, const char *message);
static void ngx_ahava_ws_send_control(ngx_ahava_ws_session_t *s, int opcode,
    u_char *payload, size_t len);
static void ngx_ahava_ws_queue(ngx_ahava_ws_session_t *s,
    ngx_ahava_ws_frame_t *f, ngx_uint_t held);
static void ngx_ahava_ws_write_handler(ngx_event_t *wev);
static ngx_int_t ngx_ahava_ws_flush(ngx_ahava_ws_session_t *s);
static void ngx_ahava_ws_ping_handler(ngx_event_t *ev);
static void ngx_ahava_ws_fail(ngx_ahava_ws_session_t *s, ngx_uint_t code);
static void ngx_ahava_ws_close(ngx_ahava_ws_session_t *s, ngx_uint_t code);
static void ngx_ahava_ws_closed(ngx_ahava_ws_session_t *s);
static void ngx_ahava_ws_linger_handler(ngx_event_t *rev);
static void ngx_ahava_ws_linger_write_handler(ngx_event_t *wev);
static void ngx_ahava_ws_finalize(ngx_ahava_ws_session_t *s);
static void ngx_ahava_ws_free_queue(ngx_ahava_ws_out_t *out);
static char *ngx_ahava_ws_strdup(ngx_pool_t *pool, json_t *v);


/* the argument of a client frame, and of a typing indicator */
static ngx_ahava_field_t  ngx_ahava_ws_typing_fields[] = {
    { "visitId", NGX_AHAVA_FIELD_ID, 1, 0, 0, NULL },
    { "recipientId", NGX_AHAVA_FIELD_ID, 1, 0, 0, NULL },
    { "isTyping", NGX_AHAVA_FIELD_BOOLEAN, 1, 0, 0, NULL },
    { NULL, 0, 0, 0, 0, NULL }
};

static ngx_ahava_field_t  ngx_ahava_ws_location_fields[] = {
    { "visitId", NGX_AHAVA_FIELD_ID, 1, 0, 0, NULL },
    { "lat", NGX_AHAVA_FIELD_NUMBER, 1, -90, 90, NULL },
    { "lng", NGX_AHAVA_FIELD_NUMBER, 1, -180, 180, NULL },
    { NULL, 0, 0, 0, 0, NULL }
};


static ngx_ahava_arg_t  ngx_ahava_ws_args[] = {
    { "token", NGX_AHAVA_ARG_TOKEN, 0, 0, 0, NULL },
    { "since", NGX_AHAVA_ARG_ID, 0, 0, 0, NULL },
    { NULL, 0, 0, 0, 0, NULL }
};


/* SPEC §8 */

static ngx_ahava_route_t  ngx_ahava_ws_routes[] = {

    { NGX_HTTP_GET, "/ws", ngx_ahava_ws_args, NULL, ngx_ahava_ws_handshake,
      NULL, NGX_AHAVA_ROUTE_WS_TOKEN, 0 },

    { 0, NULL, NULL, NULL, NULL, NULL, 0, 0 }
};


enum {
    NGX_AHAVA_WS_SINCE = 0,
    NGX_AHAVA_WS_REPLAY,
    NGX_AHAVA_WS_TYPING,
    NGX_AHAVA_WS_NSTMTS
};

static ngx_ahava_stmt_t  ngx_ahava_ws_stmts[] = {

    /* ?since=$1: a message $2 sent or received; where the replay starts */
    { ngx_string("ws since"),
      "SELECT m.\"createdAt\", m.id FROM messages m WHERE m.id = $1"
      " AND $2 IN (m.\"senderId\", m.\"recipientId\")",
      2, 0, "" },

    /* a page of the messages to $1 after ($2, $3), oldest first */
    { ngx_string("ws replay"),
      "SELECT " NGX_AHAVA_MESSAGE_COLUMNS " FROM messages m"
      " WHERE m.\"recipientId\" = $1"
      " AND (m.\"createdAt\", m.id) > ($2::timestamp(3), $3)"
      " ORDER BY m.\"createdAt\", m.id LIMIT " NGX_AHAVA_WS_REPLAY_PAGE,
      3, 0, "" },

    /* may $2 tell $3 it types, in visit $1: both its participants */
    { ngx_string("ws typing"),
      "SELECT $2 IN (b.\"patientId\", v.\"nurseId\", v.\"doctorId\")"
      " AND $3 IN (b.\"patientId\", v.\"nurseId\", v.\"doctorId\")"
      " AND $2 <> $3"
      " FROM visits v JOIN bookings b ON b.id = v.\"bookingId\""
      " WHERE v.id = $1",
      3, 0, "" },
};


static ngx_command_t  ngx_ahava_ws_commands[] = {

    { ngx_string("ahava_ws"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_ahava_ws,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      ngx_ahava_ws_routes },

    { ngx_string("ahava_ws_ping_interval"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_ahava_ws_loc_conf_t, ping_interval),
      NULL },

    { ngx_string("ahava_ws_pong_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_ahava_ws_loc_conf_t, pong_timeout),
      NULL },

    { ngx_string("ahava_ws_send_queue"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_ahava_ws_loc_conf_t, send_queue),
      NULL },

    { ngx_string("ahava_ws_max_message"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_ahava_ws_loc_conf_t, max_message),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_ahava_ws_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_ahava_ws_postconfiguration,        /* postconfiguration */

    ngx_ahava_ws_create_main_conf,         /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_ahava_ws_create_loc_conf,          /* create location configuration */
    ngx_ahava_ws_merge_loc_conf            /* merge location configuration */
};


ngx_module_t  ngx_ahava_ws_module = {
    NGX_MODULE_V1,
    &ngx_ahava_ws_module_ctx,              /* module context */
    ngx_ahava_ws_commands,                 /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_ahava_ws_init_process,             /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_ahava_ws_exit_process,             /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


/* the worker's buffers: one read at a time, one spare message buffer */
static u_char  ngx_ahava_ws_read_buf[NGX_AHAVA_WS_READ_BUF];
static u_char *ngx_ahava_ws_spare;
static size_t  ngx_ahava_ws_spare_size;


/* --- configuration ------------------------------------------------------ */

static void *
ngx_ahava_ws_create_main_conf(ngx_conf_t *cf)
{
    return ngx_pcalloc(cf->pool, sizeof(ngx_ahava_ws_main_conf_t));
}


static void *
ngx_ahava_ws_create_loc_conf(ngx_conf_t *cf)
{
    ngx_ahava_ws_loc_conf_t  *wlcf;

    wlcf = ngx_pcalloc(cf->pool, sizeof(ngx_ahava_ws_loc_conf_t));
    if (wlcf == NULL) {
        return NULL;
    }

    wlcf->ping_interval = NGX_CONF_UNSET_MSEC;
    wlcf->pong_timeout = NGX_CONF_UNSET_MSEC;
    wlcf->send_queue = NGX_CONF_UNSET_SIZE;
    wlcf->max_message = NGX_CONF_UNSET_SIZE;

    return wlcf;
}


static char *
ngx_ahava_ws_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_ahava_ws_loc_conf_t  *prev = parent;
    ngx_ahava_ws_loc_conf_t  *conf = child;

    ngx_conf_merge_msec_value(conf->ping_interval, prev->ping_interval,
                              30000);
    ngx_conf_merge_msec_value(conf->pong_timeout, prev->pong_timeout, 60000);
    ngx_conf_merge_size_value(conf->send_queue, prev->send_queue,
                              1024 * 1024);
    ngx_conf_merge_size_value(conf->max_message, prev->max_message,
                              NGX_AHAVA_WS_DEFAULT_MAX);

    if (conf->ping_interval == 0 || conf->pong_timeout == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "ahava_ws_ping_interval and ahava_ws_pong_timeout "
                           "must not be 0");
        return NGX_CONF_ERROR;
    }

    if (conf->max_message < NGX_AHAVA_WS_MAX_CONTROL
        || conf->max_message > 16 * 1024 * 1024)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "ahava_ws_max_message must be between 125 bytes "
                           "and 16m");
        return NGX_CONF_ERROR;
    }

    /* the largest event (a message of 5000 characters, each escaped to
     * six bytes) must fit */
    if (conf->send_queue < 64 * 1024) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "ahava_ws_send_queue must be at least 64k");
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_ahava_ws(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_ahava_ws_main_conf_t  *wmcf;

    wmcf = ngx_http_conf_get_module_main_conf(cf, ngx_ahava_ws_module);
    wmcf->used = 1;

    return ngx_ahava_conf_set_routes(cf, cmd, conf);
}


static ngx_int_t
ngx_ahava_ws_postconfiguration(ngx_conf_t *cf)
{
    return ngx_ahava_declare(cf, ngx_ahava_ws_stmts, NGX_AHAVA_WS_NSTMTS);
}


static ngx_int_t
ngx_ahava_ws_init_process(ngx_cycle_t *cycle)
{
    ngx_ahava_main_conf_t     *amcf;
    ngx_ahava_ws_main_conf_t  *wmcf;

    wmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_ahava_ws_module);

    if (wmcf == NULL || !wmcf->used) {
        return NGX_OK;
    }

    amcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_ahava_core_module);

    wmcf->hub = ngx_ahava_ws_hub_create(cycle, amcf);

    return (wmcf->hub == NULL) ? NGX_ERROR : NGX_OK;
}


static void
ngx_ahava_ws_exit_process(ngx_cycle_t *cycle)
{
    ngx_ahava_ws_main_conf_t  *wmcf;

    wmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_ahava_ws_module);

    if (wmcf && wmcf->hub) {
        ngx_ahava_ws_hub_destroy(wmcf->hub);
        wmcf->hub = NULL;
    }
}


/* --- the handshake (RFC 6455 §4.2) ---------------------------------------- */

static ngx_ahava_rc_e
ngx_ahava_ws_handshake(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    ngx_table_elt_t       *h, *conn, *key;
    ngx_ahava_pg_query_t  *q;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: websocket handshake");

    /* HTTP/2 has no upgrade in nginx 1.22 (no RFC 8441): browsers use a
     * separate HTTP/1.1 connection for a WebSocket */
    if (r != r->main || r->http_version != NGX_HTTP_VERSION_11
        || r->headers_in.content_length_n > 0 || r->headers_in.chunked)
    {
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_BAD_REQUEST,
                                      "VALIDATION_ERROR",
                                      "Not a WebSocket handshake", NULL);
    }

    /* nginx 1.22 keeps no pointer to the Connection header (it only
     * classifies it as close or keep-alive): both are looked up */
    h = ngx_ahava_ws_header(r, "Upgrade");
    conn = ngx_ahava_ws_header(r, "Connection");

    if (h == NULL || ngx_ahava_ws_has_token(&h->value, "websocket") != NGX_OK
        || conn == NULL
        || ngx_ahava_ws_has_token(&conn->value,
                                  "upgrade") != NGX_OK)
    {
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_BAD_REQUEST,
                                      "VALIDATION_ERROR",
                                      "Not a WebSocket handshake "
                                      "(Upgrade: websocket and Connection: "
                                      "Upgrade expected)", NULL);
    }

    h = ngx_ahava_ws_header(r, "Sec-WebSocket-Version");

    if (h == NULL || h->value.len != 2
        || ngx_strncmp(h->value.data, "13", 2) != 0)
    {
        if (ngx_ahava_ws_push_header(r, "Sec-WebSocket-Version",
                                     (u_char *) "13", 2)
            != NGX_OK)
        {
            return ngx_ahava_fail(r, ctx);
        }

        /* nginx 1.22 has no reason phrase of its own for 426 */
        ngx_str_set(&r->headers_out.status_line, "426 Upgrade Required");

        return ngx_ahava_answer_error(r, ctx, NGX_AHAVA_WS_UPGRADE_REQUIRED,
                                      "UPGRADE_REQUIRED",
                                      "WebSocket version 13 only", NULL);
    }

    key = ngx_ahava_ws_header(r, "Sec-WebSocket-Key");

    if (key == NULL
        || !ngx_ahava_ws_key_valid(key->value.data, key->value.len))
    {
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_BAD_REQUEST,
                                      "VALIDATION_ERROR",
                                      "Invalid Sec-WebSocket-Key", NULL);
    }

    if (ctx->arg_ids[1].len == 0) {
        return ngx_ahava_ws_upgrade(r, ctx, NULL);
    }

    /* ?since= must name a message of the caller's */
    q = ngx_ahava_query_create(r, &ngx_ahava_ws_stmts[NGX_AHAVA_WS_SINCE]);
    if (q == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    q->values[0] = (char *) ctx->arg_ids[1].data;
    q->values[1] = (char *) ctx->user.id;

    return ngx_ahava_query(r, ctx, q, ngx_ahava_ws_since_checked);
}


static ngx_ahava_rc_e
ngx_ahava_ws_since_checked(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    if (ctx->query->rc != NGX_OK) {
        return ngx_ahava_query_failed(r, ctx);
    }

    if (PQntuples(ctx->query->result) != 1) {
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_BAD_REQUEST,
                   "VALIDATION_ERROR", "Invalid query parameters",
                   ngx_ahava_detail(NULL, "since", "must name a message you "
                                    "sent or received"));
    }

    return ngx_ahava_ws_upgrade(r, ctx, ctx->query->result);
}


/*
 * 101, then the connection is handed to a session by a posted event, once
 * this request's handlers have returned: the request is freed there.
 */

static ngx_ahava_rc_e
ngx_ahava_ws_upgrade(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    PGresult *since)
{
    u_char                    accept[NGX_AHAVA_WS_ACCEPT_LEN];
    ngx_int_t                 rc;
    ngx_table_elt_t          *key;
    ngx_ahava_ws_replay_t    *replay;
    ngx_ahava_ws_session_t   *s;
    ngx_ahava_ws_loc_conf_t  *wlcf;

    wlcf = ngx_http_get_module_loc_conf(r, ngx_ahava_ws_module);

    key = ngx_ahava_ws_header(r, "Sec-WebSocket-Key");

    if (ngx_ahava_ws_accept_key(key->value.data, key->value.len, accept)
        != 0)
    {
        return ngx_ahava_fail(r, ctx);
    }

    s = ngx_calloc(sizeof(ngx_ahava_ws_session_t), r->connection->log);
    if (s == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    if (since) {
        replay = ngx_calloc(sizeof(ngx_ahava_ws_replay_t), r->connection->log);
        if (replay == NULL) {
            ngx_free(s);
            return ngx_ahava_fail(r, ctx);
        }

        replay->at_len = ngx_min((size_t) PQgetlength(since, 0, 0),
                                 sizeof(replay->at) - 1);
        ngx_memcpy(replay->at, PQgetvalue(since, 0, 0), replay->at_len);
        ngx_cpystrn(replay->id, (u_char *) PQgetvalue(since, 0, 1),
                    sizeof(replay->id));

        s->replay = replay;
    }

    s->cleanup = ngx_pool_cleanup_add(r->pool, 0);
    if (s->cleanup == NULL) {
        ngx_free(s->replay);
        ngx_free(s);
        return ngx_ahava_fail(r, ctx);
    }

    s->cleanup->handler = ngx_ahava_ws_abandon;
    s->cleanup->data = s;

    s->request = r;
    ctx->data = s;
    s->connection = r->connection;
    s->conf = wlcf;
    s->role = ctx->user.role;
    s->out_last = &s->out;
    s->held_last = &s->held;

    s->timer.handler = ngx_ahava_ws_takeover;
    s->timer.data = s;
    s->timer.log = r->connection->log;

    /* the user's id, until the takeover joins the hub */
    s->pending = ngx_alloc(ctx->user.id_len + 1, r->connection->log);
    if (s->pending == NULL) {
        /* the cleanup frees s with the request */
        return ngx_ahava_fail(r, ctx);
    }

    ngx_memcpy(s->pending, ctx->user.id, ctx->user.id_len + 1);
    s->pending_len = ctx->user.id_len;

    r->headers_out.status = NGX_HTTP_SWITCHING_PROTOCOLS;
    ngx_str_set(&r->headers_out.status_line, "101 Switching Protocols");
    r->headers_out.content_length_n = -1;
    r->keepalive = 0;

    if (ngx_ahava_ws_push_header(r, "Upgrade", (u_char *) "websocket",
                                 sizeof("websocket") - 1) != NGX_OK
        || ngx_ahava_ws_push_header(r, "Sec-WebSocket-Accept", accept,
                                    NGX_AHAVA_WS_ACCEPT_LEN) != NGX_OK
        || (ctx->bearer_protocol
            && ngx_ahava_ws_push_header(r, "Sec-WebSocket-Protocol",
                                        (u_char *) "bearer",
                                        sizeof("bearer") - 1) != NGX_OK))
    {
        /* the cleanup frees s with the request */
        return ngx_ahava_fail(r, ctx);
    }

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "ahava: websocket of user \"%s\" (%s)%s", ctx->user.id,
                  ngx_ahava_role_name(ctx->user.role),
                  since ? ", replaying" : "");

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK) {
        /* the cleanup frees s with the request */
        ctx->rc = NGX_ERROR;
        return NGX_AHAVA_ANSWERED;
    }

    (void) ngx_http_send_special(r, NGX_HTTP_FLUSH);

    /* nothing is read until the session reads it */
    r->read_event_handler = ngx_http_block_reading;

    /* the request is handed over: it never resumes (see the takeover) */
    ngx_post_event(&s->timer, &ngx_posted_events);

    return NGX_AHAVA_ASYNC;
}


/*
 * The request's memory goes, as nginx frees an idle keep-alive request's:
 * the request and its pool, the header buffers.  Bytes the client sent
 * right after its handshake (its first frames) are kept for the parser.
 */

static void
ngx_ahava_ws_takeover(ngx_event_t *ev)
{
    size_t                     n;
    u_char                    *id, *early;
    ngx_buf_t                 *b;
    ngx_tm_t                   tm;
    ngx_time_t                *tp;
    ngx_chain_t               *cl, *ln;
    ngx_connection_t          *c;
    ngx_http_request_t        *r;
    ngx_http_log_ctx_t        *lctx;
    ngx_http_connection_t     *hc;
    ngx_ahava_ws_session_t    *s;
    ngx_http_core_loc_conf_t  *clcf;
    ngx_ahava_ws_main_conf_t  *wmcf;

    s = ev->data;
    r = s->request;
    c = s->connection;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0, "ahava: websocket takeover");

    if (r->out || c->buffered) {
        /* the 101 is not all out yet: nginx's way, with send_timeout */
        r->write_event_handler = ngx_ahava_ws_takeover_write;
        ngx_ahava_ws_takeover_write(r);
        return;
    }

    wmcf = ngx_http_get_module_main_conf(r, ngx_ahava_ws_module);

    id = s->pending;
    n = s->pending_len;
    s->pending = NULL;
    s->pending_len = 0;

    b = r->header_in;
    early = NULL;

    if (b && b->pos < b->last) {
        early = ngx_alloc(b->last - b->pos, c->log);
        if (early == NULL) {
            s->pending = id;
            /* the cleanup frees s with the request */
            ngx_http_finalize_request(r, NGX_ERROR);
            return;
        }

        s->pending_len = b->last - b->pos;
        ngx_memcpy(early, b->pos, s->pending_len);
        s->pending = early;
    }

    hc = r->http_connection;

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);
    s->linger = clcf->lingering_timeout;

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    /* the request goes (its access log line is written: 101); s stays */
    s->cleanup->handler = NULL;
    s->cleanup = NULL;
    ngx_http_free_request(r, 0);

    c->destroyed = 0;
    c->data = s;
    s->request = NULL;

    lctx = c->log->data;
    lctx->request = NULL;
    lctx->current_request = NULL;

    /* and the header buffers, as for an idle keep-alive connection */
    if (c->buffer && ngx_pfree(c->pool, c->buffer->start) == NGX_OK) {
        c->buffer->pos = NULL;
        c->buffer->start = NULL;
        c->buffer->last = NULL;
        c->buffer->end = NULL;
    }

    for (cl = hc->free; cl; /* void */) {
        ln = cl;
        cl = cl->next;
        ngx_pfree(c->pool, ln->buf->start);
        ngx_free_chain(c->pool, ln);
    }

    hc->free = NULL;

    for (cl = hc->busy; cl; /* void */) {
        ln = cl;
        cl = cl->next;
        ngx_pfree(c->pool, ln->buf->start);
        ngx_free_chain(c->pool, ln);
    }

    hc->busy = NULL;
    hc->nbusy = 0;

    c->log->action = "websocket";

    /* nginx closes idle connections on reload and graceful stop: ours
     * then say 1001 (ngx_ahava_ws_read_handler) */
    c->idle = 1;

    c->read->handler = ngx_ahava_ws_read_handler;
    c->write->handler = ngx_ahava_ws_write_handler;

    ngx_ahava_ws_parser_init(&s->parser, s->conf->max_message,
                             s->conf->max_message, NULL);

    if (ngx_ahava_ws_hub_join(wmcf->hub, s, id, n) != NGX_OK) {
        ngx_free(id);
        ngx_ahava_ws_finalize(s);
        return;
    }

    ngx_free(id);

    /* no message yet: a replay after a lost subscription starts at the
     * opening (PostgreSQL's createdAt is UTC too) */
    tp = ngx_timeofday();
    ngx_gmtime(tp->sec, &tm);
    ngx_sprintf(s->last_at, "%4d-%02d-%02d %02d:%02d:%02d.%03M%Z",
                tm.ngx_tm_year, tm.ngx_tm_mon, tm.ngx_tm_mday,
                tm.ngx_tm_hour, tm.ngx_tm_min, tm.ngx_tm_sec, tp->msec);

    s->alive_at = ngx_current_msec;
    s->timer.handler = ngx_ahava_ws_ping_handler;
    ngx_add_timer(&s->timer, s->conf->ping_interval);

    if (ngx_exiting) {
        /* a graceful stop began while this socket was being set up: it
         * missed the worker's pass over idle connections */
        ngx_ahava_ws_close(s, NGX_AHAVA_WS_CLOSE_GOING_AWAY);
        return;
    }

    if (s->replay && ngx_ahava_ws_hub_listening(wmcf->hub, s)) {
        ngx_ahava_ws_listening(s);
    }

    /* the client's first frames, maybe already here */
    ngx_post_event(c->read, &ngx_posted_events);
}


/* the request ended before the takeover (an error, a client gone) */

static void
ngx_ahava_ws_abandon(void *data)
{
    ngx_ahava_ws_session_t *s = data;

    if (s->timer.posted) {
        ngx_delete_posted_event(&s->timer);
    }

    if (s->pending) {
        ngx_free(s->pending);
    }

    if (s->replay) {
        ngx_free(s->replay);
    }

    if (s->replayed) {
        ngx_free(s->replayed);
    }

    ngx_free(s);
}


static void
ngx_ahava_ws_takeover_write(ngx_http_request_t *r)
{
    ngx_event_t               *wev;
    ngx_ahava_ctx_t           *ctx;
    ngx_connection_t          *c;
    ngx_ahava_ws_session_t    *s;
    ngx_http_core_loc_conf_t  *clcf;

    c = r->connection;
    wev = c->write;

    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "ahava: client timed out reading the 101");
        c->timedout = 1;
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }

    if (ngx_http_output_filter(r, NULL) == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }

    if (r->out || c->buffered) {
        clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

        if (!wev->delayed) {
            ngx_add_timer(wev, clcf->send_timeout);
        }

        if (ngx_handle_write_event(wev, clcf->send_lowat) != NGX_OK) {
            ngx_http_finalize_request(r, NGX_ERROR);
        }

        return;
    }

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    ctx = ngx_http_get_module_ctx(r, ngx_ahava_core_module);
    s = ctx ? ctx->data : NULL;

    if (s) {
        /* from an event, once nginx's request handler has returned: the
         * takeover frees the request it still holds */
        r->write_event_handler = ngx_http_request_empty_handler;
        ngx_post_event(&s->timer, &ngx_posted_events);
    }
}


static ngx_table_elt_t *
ngx_ahava_ws_header(ngx_http_request_t *r, const char *name)
{
    size_t            len;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    len = ngx_strlen(name);
    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NULL;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, (u_char *) name, len) == 0)
        {
            return &h[i];
        }
    }
}


/* a comma-separated header value holds token (case-insensitive) */

static ngx_int_t
ngx_ahava_ws_has_token(ngx_str_t *value, const char *token)
{
    u_char  *p, *last, *start;
    size_t   len;

    len = ngx_strlen(token);
    p = value->data;
    last = p + value->len;

    while (p < last) {
        while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
            p++;
        }

        start = p;

        while (p < last && *p != ',' && *p != ' ' && *p != '\t') {
            p++;
        }

        if ((size_t) (p - start) == len
            && ngx_strncasecmp(start, (u_char *) token, len) == 0)
        {
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


static ngx_int_t
ngx_ahava_ws_push_header(ngx_http_request_t *r, const char *name,
    u_char *value, size_t len)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);

    h->value.data = ngx_pnalloc(r->pool, len);
    if (h->value.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(h->value.data, value, len);
    h->value.len = len;

    return NGX_OK;
}


/* --- reading ----------------------------------------------------------- */

static void
ngx_ahava_ws_read_handler(ngx_event_t *rev)
{
    size_t                   total;
    u_char                  *p;
    ssize_t                  n;
    ngx_connection_t        *c;
    ngx_ahava_ws_session_t  *s;

    c = rev->data;
    s = c->data;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0, "ahava: websocket read");

    if (c->close) {
        /* a reload or a graceful stop: clients go to the new workers */
        ngx_ahava_ws_close(s, NGX_AHAVA_WS_CLOSE_GOING_AWAY);
        return;
    }

    if (s->closing) {
        return;
    }

    /* the messages that waited for an op, in order */
    while (s->deferred && s->op == NULL) {
        if (ngx_ahava_ws_undefer(s) != NGX_OK) {
            return;
        }
    }

    if (s->pending) {
        if (s->op) {
            /* too much waits already: the client waits too (TCP) */
            return;
        }

        p = s->pending;
        s->pending = NULL;

        n = ngx_ahava_ws_consume(s, p + 0, p + s->pending_len);
        ngx_free(p);

        if (n != NGX_OK || s->pending || s->closing) {
            return;
        }
    }

    for (total = 0; total < NGX_AHAVA_WS_READ_MAX; total += n) {

        if (s->op && s->deferred_bytes > s->parser.max_message) {
            /* enough waits: the client waits too (TCP); the op's end
             * reads on */
            return;
        }

        n = c->recv(c, ngx_ahava_ws_read_buf, NGX_AHAVA_WS_READ_BUF);

        if (n == NGX_AGAIN) {
            if (ngx_handle_read_event(rev, 0) != NGX_OK) {
                ngx_ahava_ws_finalize(s);
            }

            return;
        }

        if (n == 0 || n == NGX_ERROR) {
            /* the client went */
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0,
                           "ahava: websocket client closed");
            ngx_ahava_ws_finalize(s);
            return;
        }

        if (ngx_ahava_ws_consume(s, ngx_ahava_ws_read_buf,
                                 ngx_ahava_ws_read_buf + n)
            != NGX_OK
            || s->pending || s->closing)
        {
            return;
        }
    }

    /* a fast client: the others, and timers, get their turn first */
    ngx_post_event(rev, &ngx_posted_next_events);
}


/*
 * Parses client bytes and acts on each frame.  When a frame starts work
 * (a statement), the rest waits in s->pending.  NGX_ERROR: the session is
 * gone.
 */

static ngx_int_t
ngx_ahava_ws_consume(ngx_ahava_ws_session_t *s, u_char *p, u_char *last)
{
    int                    rc;
    const unsigned char   *pos;
    ngx_ahava_ws_event_t   ev;

    pos = p;

    while (pos < last) {

        if (s->parser.msg_buf == NULL) {
            if (ngx_ahava_ws_spare
                && ngx_ahava_ws_spare_size == s->parser.max_message)
            {
                s->parser.msg_buf = ngx_ahava_ws_spare;
                ngx_ahava_ws_spare = NULL;

            } else {
                s->parser.msg_buf = ngx_alloc(s->parser.max_message,
                                              s->connection->log);
                if (s->parser.msg_buf == NULL) {
                    ngx_ahava_ws_finalize(s);
                    return NGX_ERROR;
                }
            }
        }

        rc = ngx_ahava_ws_parse(&s->parser, &pos, last, &ev);

        if (rc == NGX_AHAVA_WS_NEED_MORE) {
            break;
        }

        if (rc == NGX_AHAVA_WS_ERROR) {
            ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                          "ahava: websocket client error: %s, closing with "
                          "%ui", ev.error, (ngx_uint_t) ev.close_code);
            ngx_ahava_ws_close(s, ev.close_code);
            return NGX_ERROR;
        }

        s->alive_at = ngx_current_msec;

        switch (ev.opcode) {

        case NGX_AHAVA_WS_OP_TEXT:
            if (s->op || s->deferred) {
                if (ngx_ahava_ws_defer(s, (u_char *) ev.data, ev.len)
                    != NGX_OK)
                {
                    ngx_ahava_ws_finalize(s);
                    return NGX_ERROR;
                }

            } else {
                ngx_ahava_ws_message(s, (u_char *) ev.data, ev.len);
            }

            break;

        case NGX_AHAVA_WS_OP_BINARY:
            ngx_ahava_ws_send_error(s, "VALIDATION_ERROR",
                                    "Binary frames are not supported");
            break;

        case NGX_AHAVA_WS_OP_PING:
            ngx_ahava_ws_send_control(s, NGX_AHAVA_WS_OP_PONG,
                                      (u_char *) ev.data, ev.len);
            break;

        case NGX_AHAVA_WS_OP_PONG:
            break;

        case NGX_AHAVA_WS_OP_CLOSE:
            /* the closing handshake: its code back, then the end */
            s->close_received = 1;
            ngx_ahava_ws_close(s, ev.close_code);
            return NGX_ERROR;
        }

        if (s->closing) {
            return NGX_ERROR;
        }

        if (s->deferred_bytes > s->parser.max_message && pos < last) {
            /* enough waits: the rest once the work is done */
            s->pending = ngx_alloc(last - pos, s->connection->log);
            if (s->pending == NULL) {
                ngx_ahava_ws_finalize(s);
                return NGX_ERROR;
            }

            s->pending_len = last - pos;
            ngx_memcpy(s->pending, pos, s->pending_len);
            break;
        }
    }

    if (s->parser.msg_opcode == 0 && s->parser.msg_buf) {
        /* no message in progress: an idle socket holds no buffer */
        if (ngx_ahava_ws_spare == NULL
            && s->parser.max_message == ngx_ahava_ws_spare_size)
        {
            ngx_ahava_ws_spare = s->parser.msg_buf;

        } else {
            ngx_free(s->parser.msg_buf);

            if (ngx_ahava_ws_spare == NULL) {
                ngx_ahava_ws_spare_size = s->parser.max_message;
            }
        }

        s->parser.msg_buf = NULL;
    }

    return NGX_OK;
}


/* A client's text frame: {"type": ..., "data": {...}} */

static void
ngx_ahava_ws_message(ngx_ahava_ws_session_t *s, u_char *data, size_t len)
{
    json_t        *root, *type, *d;
    const char    *t;
    json_error_t   err;

    root = json_loadb((const char *) data, len,
                      JSON_REJECT_DUPLICATES,
                      &err);

    if (root == NULL || !json_is_object(root)) {
        json_decref(root);
        ngx_ahava_ws_send_error(s, "VALIDATION_ERROR",
                                "A frame must be a JSON object");
        return;
    }

    type = json_object_get(root, "type");
    d = json_object_get(root, "data");
    t = json_string_value(type);

    if (t == NULL) {
        ngx_ahava_ws_send_error(s, "VALIDATION_ERROR",
                                "A frame needs a \"type\"");

    } else if (ngx_strcmp(t, "PING") == 0) {
        ngx_ahava_ws_send_event(s, "PONG", (u_char *) "{}", 2);

    } else if (ngx_strcmp(t, "MESSAGE_TYPING") == 0) {
        ngx_ahava_ws_typing(s, d);

    } else if (ngx_strcmp(t, "LOCATION_UPDATE") == 0) {
        ngx_ahava_ws_location(s, d);

    } else {
        ngx_ahava_ws_send_error(s, "VALIDATION_ERROR", "Unknown frame type");
    }

    json_decref(root);
}


/* MESSAGE_TYPING {visitId, recipientId, isTyping}: never stored */

static void
ngx_ahava_ws_typing(ngx_ahava_ws_session_t *s, json_t *data)
{
    json_t                *details;
    ngx_ahava_pg_query_t  *q;

    details = json_array();

    if (details == NULL || !json_is_object(data)
        || ngx_ahava_validate(data, ngx_ahava_ws_typing_fields, details)
           != NGX_OK)
    {
        json_decref(details);
        ngx_ahava_ws_send_error(s, "VALIDATION_ERROR",
                                "MESSAGE_TYPING needs visitId, recipientId "
                                "and isTyping");
        return;
    }

    json_decref(details);

    q = ngx_ahava_ws_op(s, &ngx_ahava_ws_stmts[NGX_AHAVA_WS_TYPING]);
    if (q == NULL) {
        return;
    }

    q->values[0] = ngx_ahava_ws_strdup(s->op, json_object_get(data, "visitId"));
    q->values[1] = (char *) s->channel->id;
    q->values[2] = ngx_ahava_ws_strdup(s->op, json_object_get(data, "recipientId"));
    q->values[3] = json_is_true(json_object_get(data, "isTyping"))
                   ? "true" : "false";

    if (q->values[0] == NULL || q->values[2] == NULL) {
        ngx_ahava_ws_op_end(s);
        ngx_ahava_ws_send_error(s, "INTERNAL", "Internal server error");
        return;
    }

    (void) ngx_ahava_ws_op_send(s, q, ngx_ahava_ws_typing_checked);
}


static void
ngx_ahava_ws_typing_checked(ngx_ahava_ws_session_t *s,
    ngx_ahava_pg_query_t *q, ngx_pool_t *pool)
{
    u_char                  data[3 * NGX_AHAVA_ID_MAX_LEN + 128], *p;
    char                   *to[1];
    ngx_ahava_main_conf_t  *amcf;

    if (PQntuples(q->result) != 1
        || PQgetvalue(q->result, 0, 0)[0] != 't')
    {
        ngx_ahava_ws_send_error(s, "FORBIDDEN", "Both must be participants "
                                "of the visit");
        return;
    }

    /* ids are of safe characters: no escaping needed */
    p = ngx_sprintf(data, "{\"visitId\":\"%s\",\"userId\":\"%s\","
                    "\"isTyping\":%s}", q->values[0], q->values[1],
                    q->values[3]);

    to[0] = q->values[2];

    amcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_ahava_core_module);

    (void) ngx_ahava_publish_in(amcf, pool, s->connection->log,
                                s->channel->id, "TYPING_INDICATOR", data,
                                p - data, to, 1, 0);
}


/*
 * LOCATION_UPDATE {visitId, lat, lng}: the statement of
 * POST /api/visits/:id/location, so the same rules and effects.
 */

static void
ngx_ahava_ws_location(ngx_ahava_ws_session_t *s, json_t *data)
{
    u_char                *p;
    json_t                *details, *v;
    ngx_uint_t             i;
    ngx_ahava_pg_query_t  *q;

    static const char  *coords[] = { "lat", "lng" };

    details = json_array();

    if (details == NULL || !json_is_object(data)
        || ngx_ahava_validate(data, ngx_ahava_ws_location_fields, details)
           != NGX_OK)
    {
        json_decref(details);
        ngx_ahava_ws_send_error(s, "VALIDATION_ERROR",
                                "LOCATION_UPDATE needs visitId, lat "
                                "(-90..90) and lng (-180..180)");
        return;
    }

    json_decref(details);

    q = ngx_ahava_ws_op(s, &ngx_ahava_visits_stmts[NGX_AHAVA_VISIT_LOCATION]);
    if (q == NULL) {
        return;
    }

    q->values[0] = ngx_ahava_ws_strdup(s->op, json_object_get(data, "visitId"));
    q->values[1] = (char *) s->channel->id;
    q->values[2] = (char *) ngx_ahava_role_name(s->role);

    for (i = 0; i < 2; i++) {
        v = json_object_get(data, coords[i]);
        p = ngx_pnalloc(s->op, 32);

        if (p == NULL) {
            q->values[0] = NULL;
            break;
        }

        /* as the HTTP endpoint writes it: the shortest exact digits */
        if (json_is_integer(v)) {
            ngx_snprintf(p, 32, "%L%Z", (int64_t) json_integer_value(v));

        } else {
            snprintf((char *) p, 32, "%.15g", json_number_value(v));

            if (strtod((char *) p, NULL) != json_number_value(v)) {
                snprintf((char *) p, 32, "%.17g", json_number_value(v));
            }
        }

        q->values[3 + i] = (char *) p;
    }

    if (q->values[0] == NULL) {
        ngx_ahava_ws_op_end(s);
        ngx_ahava_ws_send_error(s, "INTERNAL", "Internal server error");
        return;
    }

    (void) ngx_ahava_ws_op_send(s, q, ngx_ahava_ws_location_done);
}


static void
ngx_ahava_ws_location_done(ngx_ahava_ws_session_t *s,
    ngx_ahava_pg_query_t *q, ngx_pool_t *pool)
{
    PGresult  *res;

    res = q->result;

    if (PQntuples(res) != 1
        || PQgetvalue(res, 0, NGX_AHAVA_MUT_VISIBLE)[0] == '0')
    {
        ngx_ahava_ws_send_error(s, "NOT_FOUND", "Visit not found");
        return;
    }

    if (PQgetvalue(res, 0, NGX_AHAVA_MUT_PERMITTED)[0] != 't') {
        ngx_log_error(NGX_LOG_NOTICE, s->connection->log, 0,
                      "ahava: security event ACCESS_DENIED: location of "
                      "visit \"%s\" by user \"%s\" over websocket",
                      q->values[0], q->values[1]);
        ngx_ahava_ws_send_error(s, "FORBIDDEN", "Your role may not do this "
                                "on this visit");
        return;
    }

    if (PQgetisnull(res, 0, NGX_AHAVA_MUT_VISIT)) {
        ngx_ahava_ws_send_error(s, "CONFLICT", "Not allowed in the visit's "
                                "current status");
        return;
    }

    /* committed: the participants learn it from the outbox */
    ngx_ahava_outbox_relay((u_char *) PQgetvalue(res, 0, NGX_AHAVA_MUT_OUTBOX),
                           PQgetlength(res, 0, NGX_AHAVA_MUT_OUTBOX));
}


/* --- the work of a client frame: its own pool, one statement ----------- */

static ngx_ahava_pg_query_t *
ngx_ahava_ws_op(ngx_ahava_ws_session_t *s, ngx_ahava_stmt_t *stmt)
{
    ngx_ahava_ws_op_t  *o;

    s->op = ngx_create_pool(1024, s->connection->log);
    if (s->op == NULL) {
        ngx_ahava_ws_send_error(s, "INTERNAL", "Internal server error");
        return NULL;
    }

    o = ngx_pcalloc(s->op, sizeof(ngx_ahava_ws_op_t));
    if (o == NULL) {
        ngx_ahava_ws_op_end(s);
        ngx_ahava_ws_send_error(s, "INTERNAL", "Internal server error");
        return NULL;
    }

    o->session = s;
    o->pool = s->op;
    o->query.stmt = stmt;
    o->query.nparams = stmt->nparams;
    o->query.log = s->connection->log;
    o->query.data = o;

    return &o->query;
}


static ngx_int_t
ngx_ahava_ws_op_send(ngx_ahava_ws_session_t *s, ngx_ahava_pg_query_t *q,
    ngx_ahava_ws_done_pt done)
{
    ngx_int_t               rc;
    ngx_ahava_ws_op_t      *o;
    ngx_ahava_main_conf_t  *amcf;

    amcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_ahava_core_module);

    o = q->data;
    o->done = done;
    q->done = ngx_ahava_ws_op_done;

    rc = ngx_ahava_pg_send(amcf->pg, q);

    if (rc != NGX_OK) {
        ngx_ahava_ws_op_end(s);
        ngx_ahava_ws_send_error(s, "SERVICE_UNAVAILABLE",
                                "Database unavailable, try again later");
        return NGX_ERROR;
    }

    s->query = q;

    return NGX_OK;
}


/* from an event: the continuation, then reading on */

static void
ngx_ahava_ws_op_done(ngx_ahava_pg_query_t *q)
{
    ngx_pool_t              *pool;
    ngx_connection_t        *c;
    ngx_ahava_ws_op_t       *o;
    ngx_ahava_ws_session_t  *s;

    o = q->data;
    s = o->session;
    c = s->connection;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "ahava: websocket statement \"%V\" done", &q->stmt->name);

    /* the continuation may start the next piece of work (in a new pool):
     * it is given this one's */
    pool = o->pool;

    if (s->op == pool) {
        s->op = NULL;
        s->query = NULL;
    }

    if (q->rc != NGX_OK && o->done == ngx_ahava_ws_replayed) {
        /* the client learns it was not replayed: it reconnects */
        ngx_ahava_ws_fail(s, NGX_AHAVA_WS_CLOSE_TRY_AGAIN);

    } else if (q->rc == NGX_HTTP_SERVICE_UNAVAILABLE) {
        ngx_ahava_ws_send_error(s, "SERVICE_UNAVAILABLE",
                                "Database unavailable, try again later");

    } else if (q->rc != NGX_OK) {
        ngx_ahava_ws_send_error(s, "INTERNAL", "Internal server error");

    } else {
        o->done(s, q, pool);
    }

    ngx_destroy_pool(pool);

    if (s->closing) {
        ngx_post_event(c->write, &ngx_posted_events);
        return;
    }

    if (s->op == NULL && s->replay_due) {
        /* the subscription came while this op ran */
        s->replay_due = 0;
        ngx_ahava_ws_replay_page(s);
    }

    if (s->op == NULL && s->replay_wait
        && s->out_bytes - s->held_bytes < s->conf->send_queue / 4)
    {
        /* the queue drained while this op ran */
        s->replay_wait = 0;
        ngx_ahava_ws_replay_page(s);
    }

    if (s->op == NULL && (s->deferred || s->pending)) {
        /* what the client sent meanwhile */
        ngx_post_event(c->read, &ngx_posted_events);
    }
}


/* a client message kept until the op before it is done */

static ngx_int_t
ngx_ahava_ws_defer(ngx_ahava_ws_session_t *s, u_char *data, size_t len)
{
    ngx_ahava_ws_deferred_t  *d;

    d = ngx_alloc(sizeof(ngx_ahava_ws_deferred_t) + len, s->connection->log);
    if (d == NULL) {
        return NGX_ERROR;
    }

    d->next = NULL;
    d->len = len;
    ngx_memcpy(d->data, data, len);

    if (s->deferred == NULL) {
        s->deferred_last = &s->deferred;
    }

    *s->deferred_last = d;
    s->deferred_last = &d->next;
    s->deferred_bytes += len;

    return NGX_OK;
}


/* the oldest waiting message, served now; NGX_ERROR if the session closes */

static ngx_int_t
ngx_ahava_ws_undefer(ngx_ahava_ws_session_t *s)
{
    ngx_ahava_ws_deferred_t  *d;

    d = s->deferred;
    s->deferred = d->next;
    s->deferred_bytes -= d->len;

    ngx_ahava_ws_message(s, d->data, d->len);
    ngx_free(d);

    return s->closing ? NGX_ERROR : NGX_OK;
}


static void
ngx_ahava_ws_op_end(ngx_ahava_ws_session_t *s)
{
    if (s->query) {
        if (s->query->waiting || s->query->running) {
            ngx_ahava_pg_cancel(s->query);
        }

        s->query = NULL;
    }

    if (s->op) {
        ngx_destroy_pool(s->op);
        s->op = NULL;
    }
}


/* --- ?since=: the messages missed, then the held live events ------------ */

static void
ngx_ahava_ws_replay_page(ngx_ahava_ws_session_t *s)
{
    ngx_ahava_pg_query_t   *q;
    ngx_ahava_ws_replay_t  *rp;

    rp = s->replay;

    q = ngx_ahava_ws_op(s, &ngx_ahava_ws_stmts[NGX_AHAVA_WS_REPLAY]);
    if (q == NULL) {
        ngx_ahava_ws_fail(s, NGX_AHAVA_WS_CLOSE_INTERNAL);
        return;
    }

    q->values[0] = (char *) s->channel->id;
    q->values[1] = (char *) ngx_pnalloc(s->op, rp->at_len + 1);

    if (q->values[1] == NULL) {
        ngx_ahava_ws_op_end(s);
        ngx_ahava_ws_fail(s, NGX_AHAVA_WS_CLOSE_INTERNAL);
        return;
    }

    ngx_cpystrn((u_char *) q->values[1], rp->at, rp->at_len + 1);
    q->values[2] = (char *) rp->id;

    if (ngx_ahava_ws_op_send(s, q, ngx_ahava_ws_replayed) != NGX_OK) {
        /* the client learns it was not replayed: it reconnects */
        ngx_ahava_ws_fail(s, NGX_AHAVA_WS_CLOSE_TRY_AGAIN);
    }
}


static void
ngx_ahava_ws_replayed(ngx_ahava_ws_session_t *s, ngx_ahava_pg_query_t *q,
    ngx_pool_t *pool)
{
    int                     i, n;
    u_char                 *p, *buf, *id;
    size_t                  len, idlen;
    PGresult               *res;
    ngx_ahava_ws_out_t     *out;
    ngx_ahava_ws_replay_t  *rp;
    ngx_ahava_main_conf_t  *amcf;

    amcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_ahava_core_module);
    rp = s->replay;
    res = q->result;
    n = PQntuples(res);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, s->connection->log, 0,
                   "ahava: websocket replay of %d messages", n);

    for (i = 0; i < n; i++) {
        len = ngx_ahava_row_size(res, i, 0, ngx_ahava_message_cols);

        buf = ngx_pnalloc(pool, len);
        if (buf == NULL) {
            ngx_ahava_ws_fail(s, NGX_AHAVA_WS_CLOSE_INTERNAL);
            return;
        }

        p = ngx_ahava_row_write_in(amcf, pool, s->connection->log, buf, res,
                                   i, 0, ngx_ahava_message_cols, 0);
        if (p == NULL) {
            ngx_ahava_ws_fail(s, NGX_AHAVA_WS_CLOSE_INTERNAL);
            return;
        }

        ngx_ahava_ws_send_event(s, "NEW_MESSAGE", buf, p - buf);

        if (s->closing) {
            return;
        }

        /* a live event of a message replayed here is not sent again */
        id = (u_char *) PQgetvalue(res, i, 0);
        idlen = PQgetlength(res, i, 0);

        for (out = s->held; out; out = out->next) {
            if (out->frame->id && ngx_strlen(out->frame->id) == idlen
                && ngx_memcmp(out->frame->id, id, idlen) == 0)
            {
                out->duplicate = 1;
            }
        }

        /* the cursor follows what was sent */
        rp->at_len = ngx_min((size_t) PQgetlength(res, i,
                                              NGX_AHAVA_MESSAGE_CREATED_AT),
                             sizeof(rp->at) - 1);
        ngx_memcpy(rp->at, PQgetvalue(res, i, NGX_AHAVA_MESSAGE_CREATED_AT),
                   rp->at_len);
        ngx_cpystrn(rp->id, id, sizeof(rp->id));
        ngx_cpystrn(rp->sent[rp->nsent++ % NGX_AHAVA_WS_REPLAY_IDS], id,
                    NGX_AHAVA_ID_MAX_LEN + 1);

        /* what waits to be written, not what is held behind the replay:
         * held events alone must not keep it waiting for good */
        if (s->out_bytes - s->held_bytes > s->conf->send_queue / 2) {
            /* the rest once the client has read this: the queue stays
             * within its bound however large the messages are */
            s->replay_wait = 1;
            return;
        }
    }

    if (n < NGX_AHAVA_WS_REPLAY_ROWS) {
        ngx_ahava_ws_replay_end(s);
        return;
    }

    ngx_ahava_ws_replay_page(s);
}


/* the session's user's events reach this worker: a replay may start */

void
ngx_ahava_ws_listening(ngx_ahava_ws_session_t *s)
{
    if (s->closing) {
        return;
    }

    if (s->replay == NULL && s->resume_pending
        && ngx_ahava_ws_resume_start(s) != NGX_OK)
    {
        return;
    }

    if (s->replay == NULL || s->replay_started) {
        return;
    }

    s->replay_started = 1;

    if (s->op) {
        /* one statement at a time: after the client's */
        s->replay_due = 1;
        return;
    }

    ngx_ahava_ws_replay_page(s);
}


static void
ngx_ahava_ws_replay_end(ngx_ahava_ws_session_t *s)
{
    ngx_ahava_ws_out_t        *out, *next;
    ngx_ahava_ws_replay_t     *rp;
    ngx_ahava_ws_main_conf_t  *wmcf;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, s->connection->log, 0,
                   "ahava: websocket replay done");

    wmcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_ahava_ws_module);

    /* its last ids stay: an event of one of them may still come, late
     * (a replay that sent nothing keeps the ones of the one before) */
    rp = s->replay;

    if (rp->nsent) {
        ngx_ahava_ws_last(s, rp->at, rp->at_len, rp->id);

        if (s->replayed) {
            ngx_free(s->replayed);
        }

        s->replayed = rp;

    } else {
        ngx_free(rp);
    }

    s->replay = NULL;

    if (s->resuming) {
        ngx_ahava_ws_hub_resume_done(wmcf->hub, s);
    }

    /* the live events that came meanwhile, in their order */
    out = s->held;
    s->held = NULL;
    s->held_last = &s->held;

    for ( /* void */ ; out; out = next) {
        next = out->next;

        /* counted once held; queued again below */
        s->out_bytes -= out->frame->len;
        s->held_bytes -= out->frame->len;

        if (!out->duplicate && !s->closing) {
            if (out->frame->id && out->frame->at) {
                ngx_ahava_ws_last(s, out->frame->at,
                                  ngx_strlen(out->frame->at),
                                  out->frame->id);
            }

            ngx_ahava_ws_queue(s, out->frame, 0);
        }

        ngx_ahava_ws_frame_release(out->frame);
        ngx_free(out);
    }

    if (s->resume_after && !s->closing) {
        /* the subscription was lost while this replay ran: another one,
         * from where this one ended, once subscribed again */
        s->resume_after = 0;
        s->resume_pending = 1;

        if (s->channel
            && s->channel->state == NGX_AHAVA_WS_CH_SUBSCRIBED)
        {
            ngx_ahava_ws_listening(s);
        }
    }
}


/* --- sending ------------------------------------------------------------ */

/* {"type":T,"data":D,"timestamp":"..."} as a text frame */

static void
ngx_ahava_ws_send_event(ngx_ahava_ws_session_t *s, const char *type,
    u_char *data, size_t len)
{
    u_char                *payload, *p;
    size_t                 size;
    ngx_ahava_ws_frame_t  *f;

    size = sizeof("{\"type\":\"\",\"data\":,\"timestamp\":\"\"}") - 1
           + ngx_strlen(type) + len + NGX_AHAVA_ISO_TIME_LEN;

    payload = ngx_alloc(size, s->connection->log);
    if (payload == NULL) {
        ngx_ahava_ws_fail(s, NGX_AHAVA_WS_CLOSE_INTERNAL);
        return;
    }

    p = ngx_sprintf(payload, "{\"type\":\"%s\",\"data\":", type);
    p = ngx_cpymem(p, data, len);
    p = ngx_cpymem(p, ",\"timestamp\":\"", sizeof(",\"timestamp\":\"") - 1);
    p = ngx_ahava_iso_time(p);
    *p++ = '"';
    *p++ = '}';

    f = ngx_ahava_ws_frame_create(NGX_AHAVA_WS_OP_TEXT, payload, p - payload,
                                  s->connection->log);
    ngx_free(payload);

    if (f == NULL) {
        ngx_ahava_ws_fail(s, NGX_AHAVA_WS_CLOSE_INTERNAL);
        return;
    }

    ngx_ahava_ws_queue(s, f, 0);
}


static void
ngx_ahava_ws_send_error(ngx_ahava_ws_session_t *s, const char *code,
    const char *message)
{
    u_char  data[512], *p;
    size_t  len;

    /* codes and messages are ours, short; the core escapes the message
     * (at most 6 bytes a character) */
    len = ngx_min(ngx_strlen(message), 64);

    p = ngx_snprintf(data, 64, "{\"code\":\"%s\",\"message\":", code);
    p = ngx_ahava_json_string_write(p, (u_char *) message, len);
    *p++ = '}';

    ngx_ahava_ws_send_event(s, "ERROR", data, p - data);
}


static void
ngx_ahava_ws_send_control(ngx_ahava_ws_session_t *s, int opcode,
    u_char *payload, size_t len)
{
    ngx_ahava_ws_frame_t  *f;

    f = ngx_ahava_ws_frame_create(opcode, payload, len, s->connection->log);
    if (f == NULL) {
        ngx_ahava_ws_fail(s, NGX_AHAVA_WS_CLOSE_INTERNAL);
        return;
    }

    ngx_ahava_ws_queue(s, f, 0);
}


ngx_ahava_ws_frame_t *
ngx_ahava_ws_frame_create(int opcode, u_char *payload, size_t len,
    ngx_log_t *log)
{
    u_char                *p, *id, *at, *end;
    size_t                 hlen, ilen, alen;
    u_char                 header[NGX_AHAVA_WS_MAX_HEADER];
    ngx_ahava_ws_frame_t  *f;

    hlen = ngx_ahava_ws_frame_header(header, opcode, 1, len);

    /* a NEW_MESSAGE remembers its id, for the replay to skip it, and its
     * createdAt, where a replay after a lost subscription starts; the data
     * as nginx writes it, or as PostgreSQL does (the outbox: "id" : "...") */
    id = NULL;
    at = NULL;
    ilen = 0;
    alen = 0;
    end = payload + len;

    if (opcode == NGX_AHAVA_WS_OP_TEXT && len > 40
        && ngx_strncmp(payload, "{\"type\":\"NEW_MESSAGE\",\"data\":{\"id\"",
                       sizeof("{\"type\":\"NEW_MESSAGE\",\"data\":{\"id\"") - 1)
           == 0)
    {
        id = ngx_ahava_ws_json_value(payload
                 + sizeof("{\"type\":\"NEW_MESSAGE\",\"data\":{\"id\"") - 1,
                 end, &ilen);

        if (ilen > NGX_AHAVA_ID_MAX_LEN) {
            id = NULL;
        }

        /* the key, not a value that reads "createdAt" (an attachmentType
         * say): only a key is followed by a colon */
        for (p = payload; id && at == NULL; /* void */) {
            p = ngx_strlcasestrn(p, end, (u_char *) "\"createdAt\"",
                                 sizeof("\"createdAt\"") - 1 - 1);
            if (p == NULL) {
                break;
            }

            p += sizeof("\"createdAt\"") - 1;
            at = ngx_ahava_ws_json_value(p, end, &alen);
        }

        if (alen > NGX_AHAVA_WS_AT_LEN) {
            at = NULL;
        }
    }

    ilen = id ? ilen : 0;
    alen = at ? alen : 0;

    f = ngx_alloc(sizeof(ngx_ahava_ws_frame_t) + hlen + len
                  + (id ? ilen + 1 : 0) + (at ? alen + 1 : 0), log);
    if (f == NULL) {
        return NULL;
    }

    f->refs = 0;
    f->len = hlen + len;

    p = ngx_cpymem(f->data, header, hlen);

    if (len) {
        /* an empty PING has no payload pointer at all */
        p = ngx_cpymem(p, payload, len);
    }

    if (id) {
        f->id = p;
        p = ngx_cpymem(p, id, ilen);
        *p++ = '\0';

    } else {
        f->id = NULL;
    }

    if (at) {
        f->at = p;
        p = ngx_cpymem(p, at, alen);
        *p = '\0';

    } else {
        f->at = NULL;
    }

    return f;
}


/*
 * The string value after a JSON key (p just past its closing quote): its
 * start and length, or NULL when what follows is not : "...", empty or
 * unterminated
 */

static u_char *
ngx_ahava_ws_json_value(u_char *p, u_char *end, size_t *len)
{
    u_char  *q;

    while (p < end && *p == ' ') {
        p++;
    }

    if (p == end || *p++ != ':') {
        return NULL;
    }

    while (p < end && *p == ' ') {
        p++;
    }

    if (p == end || *p++ != '"') {
        return NULL;
    }

    q = ngx_strlchr(p, end, '"');

    if (q == NULL || q == p) {
        return NULL;
    }

    *len = q - p;

    return p;
}


void
ngx_ahava_ws_frame_release(ngx_ahava_ws_frame_t *f)
{
    if (--f->refs == 0) {
        ngx_free(f);
    }
}


/* an event from the hub: held while a replay runs */

void
ngx_ahava_ws_deliver(ngx_ahava_ws_session_t *s, ngx_ahava_ws_frame_t *f)
{
    ngx_uint_t              i, k, n, held;
    ngx_ahava_ws_replay_t  *rp;

    if (s->closing) {
        return;
    }

    /* the replay running, or the last one: events come through the outbox,
     * late after a Redis outage, so one may follow its message's replay */
    for (k = 0; k < 2 && f->id; k++) {
        rp = k ? s->replayed : s->replay;

        if (rp == NULL) {
            continue;
        }

        /* a message a replay sent already */
        n = ngx_min(rp->nsent, NGX_AHAVA_WS_REPLAY_IDS);

        for (i = 0; i < n; i++) {
            if (ngx_strcmp(rp->sent[i], f->id) == 0) {
                ngx_log_debug1(NGX_LOG_DEBUG_HTTP, s->connection->log, 0,
                               "ahava: websocket live message \"%s\" was "
                               "replayed", f->id);
                return;
            }
        }
    }

    held = (s->replay != NULL || s->resume_pending);

    if (!held && f->id && f->at) {
        ngx_ahava_ws_last(s, f->at, ngx_strlen(f->at), f->id);
    }

    /* held while a replay runs or is owed */
    ngx_ahava_ws_queue(s, f, held);
}


/* the last message queued, for a replay after a lost subscription */

static void
ngx_ahava_ws_last(ngx_ahava_ws_session_t *s, u_char *at, size_t len,
    u_char *id)
{
    len = ngx_min(len, NGX_AHAVA_WS_AT_LEN);
    ngx_memcpy(s->last_at, at, len);
    s->last_at[len] = '\0';
    ngx_cpystrn(s->last_id, id, sizeof(s->last_id));
}


/*
 * The worker's subscriber connection was lost and is back: what was
 * published meanwhile went nowhere.  A socket that is not replaying
 * replays, once subscribed again, the messages to its user after the last
 * one it got, as ?since= does; the live events held meanwhile follow.
 */

void
ngx_ahava_ws_resume(ngx_ahava_ws_session_t *s)
{
    if (s->closing || s->request) {
        return;
    }

    if (s->replay) {
        /* a replay runs: its last page may come before the subscription,
         * so another follows it from where it ends */
        s->resume_after = 1;
        return;
    }

    /* live events are held from now: they follow the replay */
    s->resume_pending = 1;
}


/* a resume's replay, from the last message queued, once it has a slot */

static ngx_int_t
ngx_ahava_ws_resume_start(ngx_ahava_ws_session_t *s)
{
    ngx_ahava_ws_replay_t     *rp;
    ngx_ahava_ws_main_conf_t  *wmcf;

    wmcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_ahava_ws_module);

    if (!ngx_ahava_ws_hub_resume_slot(wmcf->hub, s)) {
        return NGX_DECLINED;                /* its turn comes */
    }

    rp = ngx_calloc(sizeof(ngx_ahava_ws_replay_t), s->connection->log);
    if (rp == NULL) {
        /* the client learns it was not replayed: it reconnects */
        ngx_ahava_ws_hub_resume_done(wmcf->hub, s);
        ngx_ahava_ws_fail(s, NGX_AHAVA_WS_CLOSE_TRY_AGAIN);
        return NGX_ERROR;
    }

    rp->at_len = ngx_strlen(s->last_at);
    ngx_memcpy(rp->at, s->last_at, rp->at_len + 1);
    ngx_cpystrn(rp->id, s->last_id, sizeof(rp->id));

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, s->connection->log, 0,
                   "ahava: websocket resumes after \"%s\" \"%s\"",
                   rp->at, rp->id);

    s->replay = rp;
    s->replay_started = 0;
    s->resume_pending = 0;

    return NGX_OK;
}


/*
 * Queues a frame (taking a reference) and writes what can be written.  A
 * queue past ahava_ws_send_queue closes the socket with 1008: the client
 * cannot keep up, and memory must not grow for it.
 */

static void
ngx_ahava_ws_queue(ngx_ahava_ws_session_t *s, ngx_ahava_ws_frame_t *f,
    ngx_uint_t held)
{
    ngx_ahava_ws_out_t  *out;

    /* a frame with no reference yet is this socket's only: freed here on
     * failure, with its place once written */

    if (s->close_sent) {
        /* nothing follows a Close frame */
        if (f->refs == 0) {
            ngx_free(f);
        }

        return;
    }

    if (s->out_bytes + f->len > s->conf->send_queue) {
        if (f->refs == 0) {
            ngx_free(f);
        }

        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "ahava: websocket client does not keep up (%uz bytes "
                      "queued), closing with 1008", s->out_bytes);
        ngx_ahava_ws_fail(s, NGX_AHAVA_WS_CLOSE_POLICY);
        return;
    }

    out = ngx_alloc(sizeof(ngx_ahava_ws_out_t), s->connection->log);
    if (out == NULL) {
        if (f->refs == 0) {
            ngx_free(f);
        }

        ngx_ahava_ws_fail(s, NGX_AHAVA_WS_CLOSE_INTERNAL);
        return;
    }

    f->refs++;
    out->frame = f;
    out->next = NULL;
    out->duplicate = 0;

    /* held frames count too: a replay cannot hold without bound */
    s->out_bytes += f->len;

    if (held) {
        *s->held_last = out;
        s->held_last = &out->next;
        s->held_bytes += f->len;
        return;
    }

    *s->out_last = out;
    s->out_last = &out->next;

    if (!s->connection->write->ready && s->out != out) {
        return;
    }

    if (!s->connection->write->posted) {
        ngx_post_event(s->connection->write, &ngx_posted_events);
    }
}


static void
ngx_ahava_ws_write_handler(ngx_event_t *wev)
{
    ngx_connection_t        *c;
    ngx_ahava_ws_session_t  *s;

    c = wev->data;
    s = c->data;

    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT,
                      "ahava: websocket client timed out reading");
        c->timedout = 1;
        ngx_ahava_ws_finalize(s);
        return;
    }

    if (s->closing && !s->close_sent) {
        /* a failure noticed inside other work: the close frame now */
        ngx_ahava_ws_close(s, s->close_code);
        return;
    }

    if (ngx_ahava_ws_flush(s) != NGX_OK) {
        ngx_ahava_ws_finalize(s);
        return;
    }

    if (s->out == NULL && s->closing) {
        ngx_ahava_ws_closed(s);
        return;
    }

    if (s->replay_wait
        && s->out_bytes - s->held_bytes < s->conf->send_queue / 4
        && s->op == NULL)
    {
        s->replay_wait = 0;
        ngx_ahava_ws_replay_page(s);
    }
}


/* NGX_OK (all written, or the rest when the socket is writable again) */

static ngx_int_t
ngx_ahava_ws_flush(ngx_ahava_ws_session_t *s)
{
    ssize_t              n;
    ngx_uint_t           progress;
    ngx_connection_t    *c;
    ngx_ahava_ws_out_t  *out;

    c = s->connection;
    progress = 0;

    while (s->out) {
        out = s->out;

        n = c->send(c, out->frame->data + s->out_sent,
                    out->frame->len - s->out_sent);

        if (n == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (n == NGX_AGAIN) {
            /* the time between two writes, as nginx's send_timeout: a
             * client that reads slowly is not one that stopped reading */
            if (progress || !c->write->timer_set) {
                ngx_add_timer(c->write, s->conf->pong_timeout);
            }

            return (ngx_handle_write_event(c->write, 0) == NGX_OK)
                   ? NGX_OK : NGX_ERROR;
        }

        s->out_sent += n;
        progress = 1;

        if (s->out_sent < out->frame->len) {
            continue;
        }

        s->out_sent = 0;
        s->out_bytes -= out->frame->len;
        s->out = out->next;

        if (s->out == NULL) {
            s->out_last = &s->out;
        }

        ngx_ahava_ws_frame_release(out->frame);
        ngx_free(out);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    return NGX_OK;
}


/* --- liveness and the end -------------------------------------------------- */

static void
ngx_ahava_ws_ping_handler(ngx_event_t *ev)
{
    ngx_ahava_ws_session_t  *s = ev->data;

    ngx_msec_t  silent, next;

    silent = ngx_current_msec - s->alive_at;

    if (silent >= s->conf->pong_timeout) {
        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "ahava: websocket client silent for %M ms, closing",
                      ngx_current_msec - s->alive_at);
        ngx_ahava_ws_close(s, NGX_AHAVA_WS_CLOSE_GOING_AWAY);
        return;
    }

    ngx_ahava_ws_send_control(s, NGX_AHAVA_WS_OP_PING, NULL, 0);

    /* the next ping, or the moment the client's silence runs out */
    next = ngx_min(s->conf->ping_interval, s->conf->pong_timeout - silent);

    if (!s->closing) {
        ngx_add_timer(&s->timer, next);
    }
}


/* from inside another socket's or the hub's work: closed from an event */

static void
ngx_ahava_ws_fail(ngx_ahava_ws_session_t *s, ngx_uint_t code)
{
    if (s->closing) {
        return;
    }

    s->closing = 1;
    s->close_code = code;

    ngx_post_event(s->connection->write, &ngx_posted_events);
}


/*
 * A Close frame with code (0: none), written if the socket takes it, then
 * the end.  What was queued before it is dropped when the client did not
 * read it: a close must not wait behind a full queue.
 */

static void
ngx_ahava_ws_close(ngx_ahava_ws_session_t *s, ngx_uint_t code)
{
    u_char                 payload[NGX_AHAVA_WS_MAX_CONTROL];
    size_t                 len;
    ngx_ahava_ws_frame_t  *f;

    if (s->close_sent) {
        ngx_ahava_ws_finalize(s);
        return;
    }

    s->close_sent = 1;
    s->closing = 1;

    /* what the socket takes now goes before the close (a PONG owed for a
     * PING that came before it); only what it cannot take is dropped */
    if (ngx_ahava_ws_flush(s) != NGX_OK) {
        ngx_ahava_ws_finalize(s);
        return;
    }

    if (code == NGX_AHAVA_WS_CLOSE_NO_STATUS) {
        code = 0;
    }

    len = ngx_ahava_ws_close_payload(payload, (unsigned) code, NULL, 0);

    f = ngx_ahava_ws_frame_create(NGX_AHAVA_WS_OP_CLOSE, payload, len,
                                  s->connection->log);

    if (f && s->out_sent == 0) {
        /* only whole frames before it */
        ngx_ahava_ws_free_queue(s->out);
        s->out = NULL;
        s->out_last = &s->out;
        s->out_bytes = s->held_bytes;
    }

    if (f) {
        f->refs = 1;

        if (s->out) {
            /* after the frame being written */
            ngx_ahava_ws_free_queue(s->out->next);
            s->out->next = NULL;
            s->out_last = &s->out->next;
        }

        *s->out_last = ngx_alloc(sizeof(ngx_ahava_ws_out_t),
                                 s->connection->log);

        if (*s->out_last) {
            (*s->out_last)->frame = f;
            (*s->out_last)->next = NULL;
            (*s->out_last)->duplicate = 0;
            s->out_last = &(*s->out_last)->next;

        } else {
            ngx_free(f);
        }
    }

    if (ngx_ahava_ws_flush(s) != NGX_OK) {
        ngx_ahava_ws_finalize(s);
        return;
    }

    if (s->out == NULL) {
        ngx_ahava_ws_closed(s);
        return;
    }

    /* the rest when the socket is writable, at most pong_timeout */
}


/*
 * Our Close frame is written.  An answer to the client's Close ends the
 * connection now.  A Close of ours waits for the client's end, reading
 * and dropping what it still sends, as nginx's lingering close does: a
 * socket closed with unread bytes sends a TCP reset, and a client's stack
 * may drop our Close frame unread on a reset (the client sees 1006).  Our
 * FIN goes at once, so a client waiting for the server's end gets it.
 */

static void
ngx_ahava_ws_closed(ngx_ahava_ws_session_t *s)
{
    ngx_connection_t          *c;
    ngx_ahava_ws_main_conf_t  *wmcf;

    c = s->connection;

    /* not while the worker stops (c->close: 1001 to every socket), nor
     * over TLS, whose close_notify must go before the FIN (the close of
     * the connection sends it) */
    if (s->close_received || s->linger == 0 || c->error || c->close
#if (NGX_HTTP_SSL)
        || c->ssl
#endif
       )
    {
        ngx_ahava_ws_finalize(s);
        return;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "ahava: websocket lingering close");

    if (ngx_shutdown_socket(c->fd, NGX_WRITE_SHUTDOWN) == -1) {
        ngx_connection_error(c, ngx_socket_errno,
                             ngx_shutdown_socket_n " failed");
        ngx_ahava_ws_finalize(s);
        return;
    }

    /* no event, statement or ping is for it any more */
    wmcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_ahava_ws_module);
    if (wmcf->hub) {
        ngx_ahava_ws_hub_leave(wmcf->hub, s);
    }

    ngx_ahava_ws_op_end(s);

    if (s->timer.timer_set) {
        ngx_del_timer(&s->timer);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    c->read->handler = ngx_ahava_ws_linger_handler;
    c->write->handler = ngx_ahava_ws_linger_write_handler;

    /* the whole wait, not renewed by what comes: a client that keeps
     * sending is not kept */
    ngx_add_timer(c->read, s->linger);

    ngx_ahava_ws_linger_handler(c->read);
}


static void
ngx_ahava_ws_linger_handler(ngx_event_t *rev)
{
    size_t                   total;
    ssize_t                  n;
    ngx_connection_t        *c;
    ngx_ahava_ws_session_t  *s;

    c = rev->data;
    s = c->data;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "ahava: websocket lingering read");

    if (rev->timedout || c->close) {
        ngx_ahava_ws_finalize(s);
        return;
    }

    for (total = 0; total < NGX_AHAVA_WS_READ_MAX; total += n) {

        n = c->recv(c, ngx_ahava_ws_read_buf, NGX_AHAVA_WS_READ_BUF);

        if (n == NGX_AGAIN) {
            if (ngx_handle_read_event(rev, 0) != NGX_OK) {
                ngx_ahava_ws_finalize(s);
            }

            return;
        }

        if (n == 0 || n == NGX_ERROR) {
            ngx_ahava_ws_finalize(s);
            return;
        }
    }

    ngx_post_event(rev, &ngx_posted_next_events);
}


static void
ngx_ahava_ws_linger_write_handler(ngx_event_t *wev)
{
    /* nothing more is written */
}


static void
ngx_ahava_ws_free_queue(ngx_ahava_ws_out_t *out)
{
    ngx_ahava_ws_out_t  *next;

    for ( /* void */ ; out; out = next) {
        next = out->next;
        ngx_ahava_ws_frame_release(out->frame);
        ngx_free(out);
    }
}


/* every resource of the socket goes, whichever side ended it */

static void
ngx_ahava_ws_finalize(ngx_ahava_ws_session_t *s)
{
    ngx_connection_t          *c;
    ngx_ahava_ws_deferred_t   *d;
    ngx_ahava_ws_main_conf_t  *wmcf;

    c = s->connection;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c->log, 0, "ahava: websocket closed");

    wmcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_ahava_ws_module);

    if (wmcf->hub) {
        ngx_ahava_ws_hub_leave(wmcf->hub, s);
    }

    ngx_ahava_ws_op_end(s);

    if (s->timer.timer_set) {
        ngx_del_timer(&s->timer);
    }

    if (s->timer.posted) {
        ngx_delete_posted_event(&s->timer);
    }

    ngx_ahava_ws_free_queue(s->out);
    ngx_ahava_ws_free_queue(s->held);

    if (s->parser.msg_buf) {
        ngx_free(s->parser.msg_buf);
    }

    if (s->pending) {
        ngx_free(s->pending);
    }

    while (s->deferred) {
        d = s->deferred;
        s->deferred = d->next;
        ngx_free(d);
    }

    if (s->replay) {
        ngx_free(s->replay);
    }

    if (s->replayed) {
        ngx_free(s->replayed);
    }

    ngx_free(s);

    /* the events, timers and posted events of c go with it */
    ngx_http_close_connection(c);
}


/* a validated JSON string, NUL-terminated, for a statement */

static char *
ngx_ahava_ws_strdup(ngx_pool_t *pool, json_t *v)
{
    u_char  *p;
    size_t   len;

    len = json_string_length(v);

    p = ngx_pnalloc(pool, len + 1);
    if (p == NULL) {
        return NULL;
    }

    ngx_memcpy(p, json_string_value(v), len);
    p[len] = '\0';

    return (char *) p;
}
