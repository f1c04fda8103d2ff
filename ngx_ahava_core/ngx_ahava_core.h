
/*
 * Ahava core: what every Ahava module shares — configuration of the
 * dependencies (PostgreSQL, Redis, JWT, encryption keys), the per-worker
 * asynchronous PostgreSQL pool and Redis client, authentication, and the
 * JSON envelope of SPEC §4.
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


#define NGX_AHAVA_ID_MAX_LEN        64
#define NGX_AHAVA_BODY_MAX          (64 * 1024)
#define NGX_AHAVA_PG_MAX_PARAMS     16
#define NGX_AHAVA_NEW_ID_LEN        25

#define NGX_AHAVA_ISO_TIME_LEN      24


/*
 * The audit_logs checksum (SPEC §11): sha256 hex of the entry's fields
 * joined by '|', NULL as empty, the time as ISO-8601 UTC.  SQL arguments.
 */
#define NGX_AHAVA_AUDIT_CHECKSUM(id, uid, role, act, res, rid, meta, ts)     \
    "encode(sha256(convert_to(concat_ws('|', " id ", coalesce(" uid         \
    ", ''), coalesce(" role ", ''), " act ", " res ", coalesce(" rid        \
    ", ''), coalesce(" meta ", ''), to_char(" ts                            \
    ", 'YYYY-MM-DD\"T\"HH24\":\"MI\":\"SS.MS\"Z\"')), 'UTF8')), 'hex')"


/* SQL fragments every module shows data with */
#define NGX_AHAVA_TS(col)                                                    \
    "to_char(" col ", 'YYYY-MM-DD\"T\"HH24\":\"MI\":\"SS.MS\"Z\"')"

#define NGX_AHAVA_PERSON(col)                                                \
    "(SELECT json_build_object('id', u.id, 'firstName', u.\"firstName\", "   \
    "'lastName', u.\"lastName\") FROM users u WHERE u.id = " col ")"

/* a message row m as JSON; content is still ciphertext here */
#define NGX_AHAVA_MESSAGE_JSON                                               \
    "'id', m.id, 'visitId', m.\"visitId\", 'senderId', m.\"senderId\","      \
    " 'recipientId', m.\"recipientId\", 'type', m.type,"                     \
    " 'content', m.content, 'isRead', m.\"isRead\","                         \
    " 'attachmentUrl', m.\"attachmentUrl\","                                 \
    " 'attachmentType', m.\"attachmentType\","                               \
    " 'createdAt', " NGX_AHAVA_TS("m.\"createdAt\"") ","                     \
    " 'updatedAt', " NGX_AHAVA_TS("m.\"updatedAt\"")

/* the caller ($n) is a participant of the visit v whose booking is b */
#define NGX_AHAVA_PARTICIPANT(n)                                             \
    "(b.\"patientId\" = " n " OR v.\"nurseId\" = " n                       \
    " OR v.\"doctorId\" = " n ")"


typedef enum {
    NGX_AHAVA_ROLE_NONE = 0,
    NGX_AHAVA_ROLE_PATIENT,
    NGX_AHAVA_ROLE_NURSE,
    NGX_AHAVA_ROLE_DOCTOR,
    NGX_AHAVA_ROLE_ADMIN
} ngx_ahava_role_e;


typedef struct ngx_ahava_pg_pool_s    ngx_ahava_pg_pool_t;
typedef struct ngx_ahava_pg_query_s   ngx_ahava_pg_query_t;
typedef struct ngx_ahava_redis_s      ngx_ahava_redis_t;
typedef struct ngx_ahava_user_cache_s ngx_ahava_user_cache_t;


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

    /* per worker, built in init_process */
    ngx_ahava_pg_pool_t       *pg;
    ngx_ahava_redis_t         *redis;
    ngx_ahava_user_cache_t    *users;
} ngx_ahava_main_conf_t;


typedef struct {
    u_char                     id[NGX_AHAVA_ID_MAX_LEN];
    size_t                     id_len;
    ngx_ahava_role_e           role;
} ngx_ahava_user_t;


/*
 * A step of a request's work.  It either finishes the response and returns
 * what ngx_http_finalize_request() expects, or starts an asynchronous
 * operation and returns NGX_AGAIN; the operation's completion runs the next
 * step.
 */
typedef ngx_int_t (*ngx_ahava_step_pt)(ngx_http_request_t *r);


typedef struct {
    ngx_ahava_user_t           user;
    ngx_ahava_step_pt          authorized;      /* runs once user is known */
    ngx_ahava_step_pt          body_next;       /* runs once body is read */
    json_t                    *body;            /* the JSON object sent */
    void                      *data;            /* the handler's own state */
} ngx_ahava_ctx_t;


typedef enum {
    NGX_AHAVA_FIELD_STRING = 0,                 /* min..max code points */
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


typedef ngx_int_t (*ngx_ahava_pg_handler_pt)(ngx_http_request_t *r,
    ngx_ahava_pg_query_t *q);


struct ngx_ahava_pg_query_s {
    /* set by the caller */
    ngx_str_t                  sql;             /* NUL-terminated */
    ngx_uint_t                 nparams;
    char                      *values[NGX_AHAVA_PG_MAX_PARAMS];
    ngx_ahava_pg_handler_pt    handler;
    void                      *data;

    /* set on completion: rc is NGX_OK with a result, or an HTTP status */
    ngx_int_t                  rc;
    PGresult                  *result;
    char                      *sqlstate;

    ngx_pool_t                *own_pool;        /* background queries */

    /* internal */
    ngx_http_request_t        *request;
    ngx_ahava_pg_pool_t       *pool;
    void                      *conn;
    ngx_queue_t                queue;           /* in the wait queue */
    ngx_event_t                wait_timer;
    unsigned                   waiting:1;
    unsigned                   done:1;
};


extern ngx_module_t  ngx_ahava_core_module;


/* module glue */
ngx_int_t ngx_ahava_content(ngx_http_request_t *r, ngx_ahava_step_pt step);
ngx_ahava_ctx_t *ngx_ahava_get_ctx(ngx_http_request_t *r);
char *ngx_ahava_conf_set_handler(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_ahava_user_param(ngx_http_request_t *r);
void ngx_ahava_forget_connection(ngx_connection_t *c);
ngx_int_t ngx_ahava_secret_value(ngx_conf_t *cf, ngx_str_t *spec,
    ngx_str_t *value);

/* PostgreSQL (ngx_ahava_pg.c) */
ngx_ahava_pg_pool_t *ngx_ahava_pg_pool_create(ngx_cycle_t *cycle,
    ngx_ahava_main_conf_t *amcf);
void ngx_ahava_pg_pool_destroy(ngx_ahava_pg_pool_t *pool);
ngx_int_t ngx_ahava_pg_send(ngx_http_request_t *r, ngx_ahava_pg_query_t *q);
ngx_int_t ngx_ahava_pg_run(ngx_http_request_t *r, ngx_ahava_pg_query_t *q);
ngx_int_t ngx_ahava_pg_background(ngx_ahava_pg_pool_t *pool,
    ngx_ahava_pg_query_t *q);
ngx_ahava_pg_query_t *ngx_ahava_pg_query(ngx_http_request_t *r,
    const char *sql, ngx_ahava_pg_handler_pt handler);
ngx_int_t ngx_ahava_pg_healthy(ngx_ahava_pg_pool_t *pool);
ngx_int_t ngx_ahava_pg_result_error(ngx_http_request_t *r,
    ngx_ahava_pg_query_t *q);
ngx_int_t ngx_ahava_pg_visible(ngx_http_request_t *r, ngx_ahava_pg_query_t *q,
    const char *not_found, ngx_int_t *rc);
ngx_int_t ngx_ahava_pg_str(ngx_http_request_t *r, PGresult *res,
    int row, int col, ngx_str_t *out);

/* Redis (ngx_ahava_redis.c) */
ngx_ahava_redis_t *ngx_ahava_redis_create(ngx_cycle_t *cycle,
    ngx_ahava_main_conf_t *amcf);
void ngx_ahava_redis_destroy(ngx_ahava_redis_t *redis);
ngx_int_t ngx_ahava_redis_healthy(ngx_ahava_redis_t *redis);
ngx_int_t ngx_ahava_redis_parse_url(ngx_conf_t *cf,
    ngx_ahava_main_conf_t *amcf);
ngx_int_t ngx_ahava_redis_command(ngx_ahava_redis_t *redis,
    redisCallbackFn *fn, void *data, const char *fmt, ...);

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
ngx_int_t ngx_ahava_authenticate(ngx_http_request_t *r,
    ngx_ahava_step_pt authorized);
ngx_ahava_user_cache_t *ngx_ahava_user_cache_create(ngx_cycle_t *cycle,
    ngx_uint_t size);
const char *ngx_ahava_role_name(ngx_ahava_role_e role);
ngx_ahava_role_e ngx_ahava_role_parse(u_char *s, size_t len);

/* JSON responses and input validation (ngx_ahava_json.c) */
ngx_int_t ngx_ahava_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message, json_t *details);
ngx_int_t ngx_ahava_send_status_error(ngx_http_request_t *r,
    ngx_uint_t status);
ngx_int_t ngx_ahava_send_json(ngx_http_request_t *r, ngx_uint_t status,
    json_t *root);
ngx_int_t ngx_ahava_send_raw(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *body);
ngx_int_t ngx_ahava_valid_id(u_char *p, size_t len);
ngx_int_t ngx_ahava_arg_uint(ngx_http_request_t *r, const char *name,
    ngx_uint_t def, ngx_uint_t min, ngx_uint_t max, ngx_uint_t *value,
    json_t *details);
ngx_int_t ngx_ahava_arg_enum(ngx_http_request_t *r, const char *name,
    const char **allowed, ngx_int_t def, ngx_int_t *value, json_t *details);
ngx_int_t ngx_ahava_json_dump(ngx_pool_t *pool, json_t *root,
    ngx_str_t *out);
json_t *ngx_ahava_json_loadn(ngx_http_request_t *r, ngx_str_t *text);
char *ngx_ahava_encrypt_param(ngx_http_request_t *r, const char *plain,
    size_t len);
ngx_int_t ngx_ahava_decrypt_messages(ngx_http_request_t *r,
    json_t *messages);
char *ngx_ahava_pstrz(ngx_http_request_t *r, u_char *data, size_t len);
ngx_int_t ngx_ahava_decrypt_field(ngx_http_request_t *r, json_t *obj,
    const char *field, const char *error_field, ngx_str_t *ciphertext);

/* request bodies (ngx_ahava_body.c) */
ngx_int_t ngx_ahava_read_json_body(ngx_http_request_t *r,
    ngx_ahava_step_pt next);
ngx_int_t ngx_ahava_validate(json_t *body, ngx_ahava_field_t *fields,
    json_t *details);
size_t ngx_ahava_utf8_length(const char *s, size_t len);
void ngx_ahava_id_generate(u_char *id);
u_char *ngx_ahava_iso_time(u_char *buf);

/* events and security log (ngx_ahava_event.c) */
#define NGX_AHAVA_PUBLISH_TO_ACTOR  1

ngx_int_t ngx_ahava_publish(ngx_http_request_t *r, const char *type,
    json_t *data, char **recipients, ngx_uint_t n, ngx_uint_t flags);
void ngx_ahava_audit(ngx_http_request_t *r, const char *action,
    const char *resource, ngx_str_t *resource_id, json_t *metadata);
u_char *ngx_ahava_audit_cte(u_char *buf, u_char *last, ngx_uint_t id,
    ngx_uint_t user, ngx_uint_t role, const char *action,
    const char *resource, const char *rid, const char *from,
    const char *meta);
ngx_int_t ngx_ahava_audit_params(ngx_http_request_t *r,
    ngx_ahava_pg_query_t *q);

/* GET /health (ngx_ahava_health.c) */
ngx_int_t ngx_ahava_health_handler(ngx_http_request_t *r);
ngx_int_t ngx_ahava_error_page_handler(ngx_http_request_t *r);


#endif /* _NGX_AHAVA_CORE_H_INCLUDED_ */
