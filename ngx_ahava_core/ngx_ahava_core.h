
/*
 * Ahava core: what every Ahava module shares — configuration of the
 * dependencies (PostgreSQL, Redis, JWT, encryption keys), the per-worker
 * asynchronous PostgreSQL pool and Redis clients, the request lifecycle and
 * its router, authentication, and the JSON envelope of SPEC §4.
 */


#ifndef _NGX_AHAVA_CORE_H_INCLUDED_
#define _NGX_AHAVA_CORE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <libpq-fe.h>
#include <jansson.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>

#include "ngx_ahava_crypto.h"
#include "ngx_ahava_utf8.h"


#define NGX_AHAVA_ID_MAX_LEN        64
#define NGX_AHAVA_BODY_MAX          (64 * 1024)
#define NGX_AHAVA_PG_MAX_PARAMS     16
#define NGX_AHAVA_NEW_ID_LEN        25
#define NGX_AHAVA_MAX_IDS           2           /* ids in a route's path */
#define NGX_AHAVA_MAX_ARGS          8           /* query arguments */

#define NGX_AHAVA_ISO_TIME_LEN      24


/*
 * THE LIFECYCLE CONTRACT
 *
 * A request's work is a sequence of steps.  Every step returns exactly one
 * of three values, and each value means one thing only:
 *
 *   NGX_AHAVA_NEXT      the step is done and the next one may run;
 *
 *   NGX_AHAVA_ASYNC     the step started asynchronous work (reading the
 *                       body, a statement); nothing else runs until that
 *                       work completes and its continuation (ctx->done, a
 *                       step too) resumes the request from an event;
 *
 *   NGX_AHAVA_ANSWERED  the step answered: the response (or its failure) is
 *                       handed to nginx.  ctx->rc holds what the output
 *                       filter returned (NGX_OK; NGX_AGAIN while output is
 *                       pending; NGX_ERROR) or, when nothing could be sent,
 *                       an HTTP status.  The core finalizes the request with
 *                       exactly that value — so nginx's writer and
 *                       send_timeout finish a large answer to a slow client
 *                       — and no further step runs.
 *
 * Only the ngx_ahava_answer*() functions produce NGX_AHAVA_ANSWERED, only
 * ngx_ahava_query() and the body reader produce NGX_AHAVA_ASYNC.
 *
 * The order of an API request (ngx_ahava_request.c): path (404) →
 * authenticate from the headers (401; the body is discarded unread) →
 * a Content-Length over 64 KiB (413) → method (405) → query arguments
 * (400) → read and validate the body (413, 415, 400) →
 * the route's step (authorize, one prepared statement, which writes the
 * change's events and jobs into the outbox with it) → its continuation
 * answers and hands the outbox rows to the relay.
 */

typedef enum {
    NGX_AHAVA_NEXT = 1,
    NGX_AHAVA_ASYNC,
    NGX_AHAVA_ANSWERED
} ngx_ahava_rc_e;


typedef enum {
    NGX_AHAVA_ROLE_NONE = 0,
    NGX_AHAVA_ROLE_PATIENT,
    NGX_AHAVA_ROLE_NURSE,
    NGX_AHAVA_ROLE_DOCTOR,
    NGX_AHAVA_ROLE_ADMIN
} ngx_ahava_role_e;

#define NGX_AHAVA_NROLES  5


typedef struct ngx_ahava_ctx_s          ngx_ahava_ctx_t;
typedef struct ngx_ahava_route_s        ngx_ahava_route_t;
typedef struct ngx_ahava_pg_pool_s      ngx_ahava_pg_pool_t;
typedef struct ngx_ahava_pg_query_s     ngx_ahava_pg_query_t;
typedef struct ngx_ahava_redis_s        ngx_ahava_redis_t;
typedef struct ngx_ahava_user_cache_s   ngx_ahava_user_cache_t;
typedef struct ngx_ahava_audit_s        ngx_ahava_audit_t;


typedef ngx_ahava_rc_e (*ngx_ahava_step_pt)(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);


/*
 * A statement, declared once by a module (a static table of them) and
 * prepared on every PostgreSQL connection when it opens.  No SQL text is
 * ever assembled per request.
 */

typedef struct {
    ngx_str_t                  name;            /* for logs */
    const char                *sql;
    ngx_uint_t                 nparams;
    ngx_uint_t                 index;           /* set by the core */
    u_char                     id[16];          /* "ahava_<index>" */
} ngx_ahava_stmt_t;


/* A query argument a route accepts (SPEC §4: anything else is a 400) */

typedef enum {
    NGX_AHAVA_ARG_UINT = 0,                     /* min..max */
    NGX_AHAVA_ARG_ENUM,                         /* one of values[] */
    NGX_AHAVA_ARG_ID,                           /* an id: ctx->arg_ids[] */
    NGX_AHAVA_ARG_TOKEN                         /* a token carrier, read by
                                                   authentication itself */
} ngx_ahava_arg_type_e;

typedef struct {
    const char                *name;
    ngx_ahava_arg_type_e       type;
    ngx_int_t                  def;             /* when absent */
    ngx_int_t                  min;
    ngx_int_t                  max;
    const char               **values;          /* ENUM, NULL-terminated */
} ngx_ahava_arg_t;


/* A field of a JSON body */

typedef enum {
    NGX_AHAVA_FIELD_STRING = 0,                 /* min..max code points */
    NGX_AHAVA_FIELD_TEXT,                       /* the same, U+0000 allowed:
                                                   stored encrypted */
    NGX_AHAVA_FIELD_ID,
    NGX_AHAVA_FIELD_ENUM,
    NGX_AHAVA_FIELD_INTEGER,                    /* min..max */
    NGX_AHAVA_FIELD_NUMBER,                     /* finite, min..max */
    NGX_AHAVA_FIELD_BOOLEAN,
    NGX_AHAVA_FIELD_ID_ARRAY                    /* min..max distinct ids */
} ngx_ahava_field_type_e;

typedef struct {
    const char                *name;
    ngx_ahava_field_type_e     type;
    ngx_uint_t                 required;
    double                     min;
    double                     max;
    const char               **values;          /* ENUM, NULL-terminated */
} ngx_ahava_field_t;


/*
 * A row of a module's route table (SPEC §5, §6): the method(s), the path
 * (":" is an id segment, "*" any other name the step checks itself), the query arguments and the JSON body it takes
 * (NULL: none), and the step that serves it once the caller is known.
 */

#define NGX_AHAVA_ROUTE_PUBLIC   0x01           /* no authentication */
#define NGX_AHAVA_ROUTE_WS_TOKEN 0x02           /* also the WebSocket token
                                                   carriers (SPEC §8) */
#define NGX_AHAVA_ROUTE_UPLOAD   0x04           /* counted as an upload */

struct ngx_ahava_route_s {
    ngx_uint_t                 methods;
    const char                *path;
    ngx_ahava_arg_t           *args;            /* NULL-name terminated */
    ngx_ahava_field_t         *fields;          /* NULL-name terminated */
    ngx_ahava_step_pt          step;
    const void                *data;            /* the route's own */
    ngx_uint_t                 flags;
    size_t                     body_max;        /* 0: 64 KiB (SPEC §4) */
};


typedef struct {
    u_char                     id[NGX_AHAVA_ID_MAX_LEN + 1];
    size_t                     id_len;
    ngx_ahava_role_e           role;
} ngx_ahava_user_t;


/* The state of one API request */

struct ngx_ahava_ctx_s {
    ngx_ahava_route_t         *route;
    ngx_uint_t                 allow;           /* methods of the path */
    ngx_str_t                  ids[NGX_AHAVA_MAX_IDS];  /* NUL-terminated */
    ngx_int_t                  args[NGX_AHAVA_MAX_ARGS];
    ngx_str_t                  arg_ids[NGX_AHAVA_MAX_ARGS];
    ngx_ahava_user_t           user;
    json_t                    *body;            /* the validated object */

    ngx_ahava_step_pt         *pipeline;
    ngx_uint_t                 nsteps;
    ngx_uint_t                 step;            /* position in the pipeline */
    ngx_ahava_step_pt          done;            /* continuation of ASYNC */
    ngx_ahava_pg_query_t      *query;           /* its result, in done */
    ngx_int_t                  rc;              /* ANSWERED: finalize with */
    time_t                     answered_sec;    /* when: for the metrics */
    ngx_msec_t                 answered_msec;

    void                      *data;            /* the handler's own */

    size_t                     body_limit;      /* while reading the body */
    size_t                     body_size;

    unsigned                   method_ok:1;
    unsigned                   access:1;        /* an access-phase check */
    unsigned                   in_phase:1;      /* inside the phase handler */
    unsigned                   allowed:1;
    unsigned                   body_sync:1;     /* read without waiting */
    unsigned                   body_waiting:1;
    unsigned                   bearer_protocol:1;  /* the token came as
                                                      Sec-WebSocket-Protocol */
};


/* PostgreSQL queries: owned by a request, a socket or the worker */

typedef void (*ngx_ahava_pg_done_pt)(ngx_ahava_pg_query_t *q);

struct ngx_ahava_pg_query_s {
    /* set by the owner */
    ngx_ahava_stmt_t          *stmt;
    ngx_uint_t                 nparams;
    char                      *values[NGX_AHAVA_PG_MAX_PARAMS];
    ngx_ahava_pg_done_pt       done;            /* from an event, never from
                                                   inside ngx_ahava_pg_send() */
    void                      *data;            /* the owner */
    ngx_log_t                 *log;

    /* set for done: NGX_OK with result; NGX_HTTP_SERVICE_UNAVAILABLE
     * (PostgreSQL unreachable, overloaded, timed out); NGX_ERROR (the
     * statement failed: sqlstate says why) */
    ngx_int_t                  rc;
    PGresult                  *result;          /* valid inside done only */
    const char                *sqlstate;        /* likewise */

    /* the pool's */
    ngx_ahava_pg_pool_t       *pool;
    void                      *conn;
    ngx_queue_t                queue;           /* in the wait queue */
    ngx_event_t                wait_timer;
    unsigned                   waiting:1;
    unsigned                   running:1;
    unsigned                   sent:1;          /* reached the server: it
                                                   may have committed */
};


/* A rate limit for log lines: one per period, the rest counted */

typedef struct {
    time_t                     last;
    ngx_uint_t                 suppressed;
} ngx_ahava_log_limit_t;


typedef struct {
    /* PostgreSQL */
    ngx_str_t                  pg_conninfo;     /* secret: never logged */
    char                     **pg_keywords;     /* resolved at config time */
    char                     **pg_values;
    ngx_uint_t                 pg_pool_size;
    ngx_uint_t                 pg_wait_queue;
    ngx_msec_t                 pg_wait_timeout;
    ngx_msec_t                 pg_query_timeout;
    ngx_msec_t                 pg_connect_timeout;
    ngx_array_t                stmts;           /* of ngx_ahava_stmt_t * */

    /* Redis */
    ngx_str_t                  redis_url;
    ngx_str_t                  redis_host;
    in_port_t                  redis_port;
    ngx_int_t                  redis_db;
    ngx_str_t                  redis_password;  /* secret */

    /* JWT */
    ngx_str_t                  jwt_secret;      /* secret */
    ngx_str_t                  jwt_public_key;
    ngx_str_t                  jwt_key;         /* the one the alg uses */
    ngx_int_t                  jwt_alg;         /* libjwt's jwt_alg_t */
    ngx_str_t                  jwt_alg_name;

    /* encryption at rest: keys[0] encrypts, all decrypt */
    ngx_array_t               *keys;            /* of u_char *, 32 bytes */

    ngx_msec_t                 user_cache_ttl;
    ngx_uint_t                 user_cache_size;

    ngx_array_t                route_tables;    /* of ngx_ahava_route_t *:
                                                   counted by the metrics */

    /* per worker, built in init_process */
    ngx_ahava_pg_pool_t       *pg;
    ngx_ahava_redis_t         *redis;
    ngx_ahava_user_cache_t    *users;
    ngx_ahava_audit_t         *audit;
} ngx_ahava_main_conf_t;


typedef struct {
    ngx_ahava_route_t         *routes;          /* the location's table */
    ngx_ahava_route_t         *access_routes;   /* checked, then nginx's */
} ngx_ahava_loc_conf_t;


extern ngx_module_t  ngx_ahava_core_module;


/* module glue (ngx_ahava_core_module.c) */
char *ngx_ahava_conf_set_routes(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_ahava_declare(ngx_conf_t *cf, ngx_ahava_stmt_t *stmts,
    ngx_uint_t n);
ngx_int_t ngx_ahava_secret_value(ngx_conf_t *cf, ngx_str_t *spec,
    ngx_str_t *value);
void ngx_ahava_forget_connection(ngx_connection_t *c);
void ngx_ahava_log_limited(ngx_ahava_log_limit_t *limit, ngx_uint_t level,
    ngx_log_t *log, const char *fmt, ...);

/* the request lifecycle and the router (ngx_ahava_request.c) */
ngx_int_t ngx_ahava_api_handler(ngx_http_request_t *r);
ngx_int_t ngx_ahava_access_handler(ngx_http_request_t *r);
char *ngx_ahava_conf_set_access(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
void ngx_ahava_resume(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx);
ngx_ahava_rc_e ngx_ahava_query(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    ngx_ahava_pg_query_t *q, ngx_ahava_step_pt done);
ngx_ahava_pg_query_t *ngx_ahava_query_create(ngx_http_request_t *r,
    ngx_ahava_stmt_t *stmt);
ngx_int_t ngx_ahava_param(ngx_http_request_t *r, ngx_ahava_pg_query_t *q,
    ngx_uint_t i, u_char *data, size_t len);
ngx_int_t ngx_ahava_param_uint(ngx_http_request_t *r,
    ngx_ahava_pg_query_t *q, ngx_uint_t i, ngx_uint_t n);
ngx_ahava_rc_e ngx_ahava_query_failed(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);

/* answers: the only producers of NGX_AHAVA_ANSWERED (ngx_ahava_json.c) */
ngx_ahava_rc_e ngx_ahava_answer(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    ngx_uint_t status, ngx_chain_t *body);
ngx_ahava_rc_e ngx_ahava_answer_text(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx, ngx_uint_t status, u_char *data, size_t len);
ngx_ahava_rc_e ngx_ahava_answer_json(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx, ngx_uint_t status, json_t *root);
ngx_ahava_rc_e ngx_ahava_answer_error(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx, ngx_uint_t status, const char *code,
    const char *message, json_t *details);
ngx_ahava_rc_e ngx_ahava_answer_status(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx, ngx_uint_t status);
ngx_ahava_rc_e ngx_ahava_fail(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx);
ngx_int_t ngx_ahava_send_status_error(ngx_http_request_t *r,
    ngx_uint_t status);

/* JSON text (ngx_ahava_json.c, ngx_ahava_json_dump.c) */
ngx_int_t ngx_ahava_json_dump(ngx_pool_t *pool, json_t *root,
    ngx_str_t *out);
size_t ngx_ahava_json_string_size(const u_char *s, size_t len);
u_char *ngx_ahava_json_string_write(u_char *p, const u_char *s, size_t len);
json_t *ngx_ahava_json_loadn(ngx_http_request_t *r, u_char *text,
    size_t len);
json_t *ngx_ahava_detail(json_t *details, const char *field,
    const char *fmt, ...);

/*
 * A JSON object written by nginx from a result row's columns: a field per
 * entry, taking its columns in order from the first one given.  PostgreSQL
 * sends plain values (its own JSON building costs it more than the query),
 * nginx formats them.
 */
typedef enum {
    NGX_AHAVA_COL_STRING = 0,                   /* text; NULL: null */
    NGX_AHAVA_COL_RAW,                          /* a number or JSON as is */
    NGX_AHAVA_COL_BOOL,                         /* t / f */
    NGX_AHAVA_COL_TIME,                         /* timestamp(3): ISO-8601 */
    NGX_AHAVA_COL_PERSON,                       /* id, firstName, lastName */
    NGX_AHAVA_COL_DECRYPT                       /* ciphertext: plaintext */
} ngx_ahava_col_type_e;

typedef struct {
    const char                *name;
    ngx_ahava_col_type_e       type;
    const char                *error_field;     /* DECRYPT: on failure */
} ngx_ahava_col_t;

#define NGX_AHAVA_ROW_OPEN   1                  /* more fields follow */
#define NGX_AHAVA_ROW_MORE   2                  /* fields of an open one */

size_t ngx_ahava_row_size(PGresult *res, int row, int col,
    ngx_ahava_col_t *cols);
int ngx_ahava_row_ncols(ngx_ahava_col_t *cols);
u_char *ngx_ahava_row_write(ngx_http_request_t *r, u_char *p, PGresult *res,
    int row, int col, ngx_ahava_col_t *cols, ngx_uint_t flags);
/* the same for an owner that is not a request (a WebSocket session) */
u_char *ngx_ahava_row_write_in(ngx_ahava_main_conf_t *amcf, ngx_pool_t *pool,
    ngx_log_t *log, u_char *p, PGresult *res, int row, int col,
    ngx_ahava_col_t *cols, ngx_uint_t flags);

/* text of the JSON PostgreSQL built, with a decrypted field spliced in */
size_t ngx_ahava_splice_size(PGresult *res, int row, int json_col,
    int ct_col);
u_char *ngx_ahava_splice(ngx_http_request_t *r, u_char *p, PGresult *res,
    int row, int json_col, int ct_col, const char *field,
    const char *error_field);
u_char *ngx_ahava_splice_in(ngx_ahava_main_conf_t *amcf, ngx_pool_t *pool,
    ngx_log_t *log, u_char *p, PGresult *res, int row, int json_col,
    int ct_col, const char *field, const char *error_field);
u_char *ngx_ahava_decrypted_field(ngx_http_request_t *r, u_char *p,
    PGresult *res, int row, int col, const char *field,
    const char *error_field);
u_char *ngx_ahava_pg_copy(u_char *p, PGresult *res, int row, int col);
ngx_int_t ngx_ahava_pg_int(PGresult *res, int row, int col);

/* encryption at rest (ngx_ahava_json.c) */
char *ngx_ahava_encrypt_param(ngx_http_request_t *r, const u_char *plain,
    size_t len);
ngx_int_t ngx_ahava_decrypt(ngx_http_request_t *r, u_char *ct, size_t ct_len,
    ngx_str_t *plain);
ngx_int_t ngx_ahava_decrypt_in(ngx_ahava_main_conf_t *amcf, ngx_pool_t *pool,
    u_char *ct, size_t ct_len, ngx_str_t *plain);

/* PostgreSQL (ngx_ahava_pg.c) */
ngx_ahava_pg_pool_t *ngx_ahava_pg_pool_create(ngx_cycle_t *cycle,
    ngx_ahava_main_conf_t *amcf);
void ngx_ahava_pg_pool_destroy(ngx_ahava_pg_pool_t *pool);
ngx_int_t ngx_ahava_pg_send(ngx_ahava_pg_pool_t *pool,
    ngx_ahava_pg_query_t *q);
ngx_int_t ngx_ahava_pg_background(ngx_ahava_pg_pool_t *pool,
    ngx_ahava_pg_query_t *q);
void ngx_ahava_pg_cancel(ngx_ahava_pg_query_t *q);
ngx_int_t ngx_ahava_pg_healthy(ngx_ahava_pg_pool_t *pool);
void ngx_ahava_pg_stats(ngx_ahava_pg_pool_t *pool, ngx_uint_t *conns,
    ngx_uint_t *busy, ngx_uint_t *waiters);

/* Redis (ngx_ahava_redis.c) */
typedef void (*ngx_ahava_redis_ready_pt)(ngx_ahava_redis_t *redis,
    void *data);

ngx_ahava_redis_t *ngx_ahava_redis_create(ngx_cycle_t *cycle,
    ngx_ahava_main_conf_t *amcf, ngx_ahava_redis_ready_pt ready,
    void *data);
void ngx_ahava_redis_destroy(ngx_ahava_redis_t *redis);
void ngx_ahava_redis_set_subscriber(ngx_ahava_redis_t *redis);
ngx_int_t ngx_ahava_redis_healthy(ngx_ahava_redis_t *redis);
ngx_int_t ngx_ahava_redis_parse_url(ngx_conf_t *cf,
    ngx_ahava_main_conf_t *amcf);
ngx_int_t ngx_ahava_redis_command(ngx_ahava_redis_t *redis,
    redisCallbackFn *fn, void *data, const char *fmt, ...);
ngx_int_t ngx_ahava_redis_command_argv(ngx_ahava_redis_t *redis,
    redisCallbackFn *fn, void *data, int argc, const char **argv,
    const size_t *lens);

/* JWT (ngx_ahava_jwt.c) */
typedef enum {
    NGX_AHAVA_JWT_OK = 0,
    NGX_AHAVA_JWT_INVALID,
    NGX_AHAVA_JWT_EXPIRED
} ngx_ahava_jwt_rc_e;

ngx_ahava_jwt_rc_e ngx_ahava_jwt_verify(ngx_ahava_main_conf_t *amcf,
    ngx_str_t *token, ngx_str_t *user_id, ngx_log_t *log,
    const char **reason);
ngx_int_t ngx_ahava_jwt_parse_alg(ngx_str_t *name);

/* authentication and the user cache (ngx_ahava_auth.c) */
ngx_ahava_rc_e ngx_ahava_step_auth(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
ngx_ahava_user_cache_t *ngx_ahava_user_cache_create(ngx_cycle_t *cycle,
    ngx_uint_t size);
const char *ngx_ahava_role_name(ngx_ahava_role_e role);
ngx_ahava_role_e ngx_ahava_role_parse(u_char *s, size_t len);
ngx_int_t ngx_ahava_auth_declare(ngx_conf_t *cf);

/* request bodies (ngx_ahava_body.c) */
ngx_ahava_rc_e ngx_ahava_step_body(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
ngx_int_t ngx_ahava_body_filter_init(ngx_conf_t *cf);
ngx_int_t ngx_ahava_validate(json_t *body, ngx_ahava_field_t *fields,
    json_t *details);

/* ids and times (ngx_ahava_id.c) */
ngx_int_t ngx_ahava_valid_id(u_char *p, size_t len);
ngx_int_t ngx_ahava_valid_file_name(u_char *name, size_t len);
ngx_int_t ngx_ahava_upload_url(u_char *url, size_t len, ngx_str_t *stored);
void ngx_ahava_id_generate(u_char *id);
u_char *ngx_ahava_iso_time(u_char *buf);

/* events that are not stored: typing (ngx_ahava_event.c) */
#define NGX_AHAVA_PUBLISH_TO_ACTOR  1

ngx_int_t ngx_ahava_publish_in(ngx_ahava_main_conf_t *amcf, ngx_pool_t *pool,
    ngx_log_t *log, u_char *actor, const char *type, u_char *data,
    size_t len, char **recipients, ngx_uint_t n, ngx_uint_t flags);

/* the outbox relay (ngx_ahava_outbox.c) */
ngx_int_t ngx_ahava_outbox_declare(ngx_conf_t *cf);
ngx_int_t ngx_ahava_outbox_init(ngx_cycle_t *cycle,
    ngx_ahava_main_conf_t *amcf);
void ngx_ahava_outbox_exit(void);
void ngx_ahava_outbox_redis_ready(ngx_ahava_redis_t *redis, void *data);
void ngx_ahava_outbox_relay(u_char *ids, size_t len);

/* the database's migrations, checked once at start (ngx_ahava_schema.c) */
ngx_int_t ngx_ahava_schema_declare(ngx_conf_t *cf);
ngx_int_t ngx_ahava_schema_init(ngx_cycle_t *cycle,
    ngx_ahava_main_conf_t *amcf);
void ngx_ahava_schema_exit(void);

/* security events (ngx_ahava_audit.c) */
ngx_ahava_audit_t *ngx_ahava_audit_create(ngx_cycle_t *cycle,
    ngx_ahava_main_conf_t *amcf);
void ngx_ahava_audit_destroy(ngx_ahava_audit_t *audit);
void ngx_ahava_audit(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    const char *action, const char *resource, ngx_str_t *resource_id,
    json_t *metadata);
void ngx_ahava_audit_auth_failed(ngx_http_request_t *r, const char *code,
    const char *reason);
ngx_int_t ngx_ahava_audit_declare(ngx_conf_t *cf);

/* SQL every module writes audit rows and data with */
#define NGX_AHAVA_TS(col)                                                    \
    "to_char(" col ", 'YYYY-MM-DD\"T\"HH24\":\"MI\":\"SS.MS\"Z\"')"

/*
 * The audit_logs checksum (SPEC §11): sha256 hex of the entry's fields
 * joined by '|', NULL as empty, the time as ISO-8601 UTC.
 */
#define NGX_AHAVA_AUDIT_CHECKSUM(id, uid, role, act, res, rid, meta, ts)     \
    "encode(sha256(convert_to(concat_ws('|', " id ", coalesce(" uid         \
    ", ''), coalesce(" role ", ''), " act ", " res ", coalesce(" rid        \
    ", ''), coalesce(" meta ", ''), " NGX_AHAVA_TS(ts) "), 'UTF8')), 'hex')"

/* a participant as the API shows one */
#define NGX_AHAVA_PERSON(col)                                                \
    "(SELECT json_build_object('id', u.id, 'firstName', u.\"firstName\","    \
    " 'lastName', u.\"lastName\") FROM users u WHERE u.id = " col ")"

/* a message m as JSON fields; its content is spliced in by nginx */
#define NGX_AHAVA_MESSAGE_FIELDS                                             \
    "'id', m.id, 'visitId', m.\"visitId\", 'senderId', m.\"senderId\","      \
    " 'recipientId', m.\"recipientId\", 'type', m.type,"                     \
    " 'isRead', m.\"isRead\", 'attachmentUrl', m.\"attachmentUrl\","         \
    " 'attachmentType', m.\"attachmentType\","                               \
    " 'createdAt', " NGX_AHAVA_TS("m.\"createdAt\"") ","                     \
    " 'updatedAt', " NGX_AHAVA_TS("m.\"updatedAt\"")


/*
 * The audit_logs row of a mutation as a CTE of its own statement, so that
 * it commits with the change or not at all: one row per row of "from";
 * id, user and role are parameters, rid and meta SQL expressions.
 */
#define NGX_AHAVA_AUDIT_INSERT(id, user, role, action, resource, rid, from,  \
                               meta)                                         \
    "audit AS (INSERT INTO audit_logs (id, \"userId\", \"userRole\","         \
    " action, resource, \"resourceId\", metadata, checksum, \"createdAt\")"   \
    " SELECT " id "::text, " user "::text, (" role "::text)::\"UserRole\","   \
    " '" action "', '" resource "', " rid ", m.meta, "                       \
    NGX_AHAVA_AUDIT_CHECKSUM(id "::text", user "::text", role "::text",      \
                             "'" action "'", "'" resource "'", rid,          \
                             "m.meta::text", "m.t")                          \
    ", m.t FROM " from ", LATERAL (SELECT " meta " AS meta,"                  \
    " LOCALTIMESTAMP(3) AS t) m)"


/* Prometheus metrics in a shared memory zone (ngx_ahava_metrics.c) */
typedef enum {                                  /* counters of the zone */
    NGX_AHAVA_M_PG_REJECTED = 0,
    NGX_AHAVA_M_PG_RECONNECTS,
    NGX_AHAVA_M_REDIS_RECONNECTS,
    NGX_AHAVA_M_EVENTS_PUBLISHED,
    NGX_AHAVA_M_EVENTS_LATE,
    NGX_AHAVA_M_OUTBOX_RELAYED,
    NGX_AHAVA_M_OUTBOX_REFUSED,
    NGX_AHAVA_M_OUTBOX_DEPTH,                   /* a gauge, set by worker 0 */
    NGX_AHAVA_M_UPLOADS_ACCEPTED,
    NGX_AHAVA_M_UPLOADS_TOO_LARGE,
    NGX_AHAVA_M_UPLOADS_UNSUPPORTED,
    NGX_AHAVA_M_UPLOADS_INVALID,
    NGX_AHAVA_M_UPLOADS_FAILED,
    NGX_AHAVA_M_N
} ngx_ahava_metric_e;

typedef enum {                                  /* gauges of a worker */
    NGX_AHAVA_G_PG_CONNECTIONS = 0,
    NGX_AHAVA_G_PG_BUSY,
    NGX_AHAVA_G_PG_WAITERS,
    NGX_AHAVA_G_REDIS_CONNECTED,
    NGX_AHAVA_G_WS_SOCKETS,
    NGX_AHAVA_G_WS_USERS,
    NGX_AHAVA_G_N
} ngx_ahava_gauge_e;

ngx_int_t ngx_ahava_metrics_conf(ngx_conf_t *cf,
    ngx_ahava_main_conf_t *amcf);
ngx_int_t ngx_ahava_metrics_declare(ngx_conf_t *cf);
ngx_int_t ngx_ahava_metrics_add_routes(ngx_conf_t *cf,
    ngx_ahava_route_t *routes);
ngx_int_t ngx_ahava_metrics_init_process(ngx_cycle_t *cycle,
    ngx_ahava_main_conf_t *amcf);
void ngx_ahava_metrics_exit_process(void);
ngx_int_t ngx_ahava_metrics_log_handler(ngx_http_request_t *r);
char *ngx_ahava_metrics_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
void ngx_ahava_metrics_count(ngx_uint_t counter, ngx_uint_t n);
void ngx_ahava_metrics_set(ngx_uint_t counter, ngx_uint_t value);
void ngx_ahava_metrics_gauge(ngx_uint_t gauge, ngx_int_t delta);


/* GET /health and the JSON error page (ngx_ahava_health.c) */
extern ngx_ahava_route_t  ngx_ahava_health_routes[];
ngx_int_t ngx_ahava_error_page_handler(ngx_http_request_t *r);


#endif /* _NGX_AHAVA_CORE_H_INCLUDED_ */
