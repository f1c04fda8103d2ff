
/*
 * Authentication (SPEC §3): Bearer JWT, then the user's row — it must exist
 * and be active, and its role comes from the database, not the token.  A
 * bounded per-worker cache (direct-mapped: a collision just evicts) saves the
 * lookup for ahava_user_cache_ttl.
 */


#include "ngx_ahava_core.h"


typedef struct {
    u_char                     id[NGX_AHAVA_ID_MAX_LEN];
    u_char                     id_len;
    u_char                     active;
    u_char                     role;
    ngx_msec_t                 expires;
} ngx_ahava_user_slot_t;


struct ngx_ahava_user_cache_s {
    ngx_uint_t                 size;
    ngx_ahava_user_slot_t     *slots;
};


static ngx_int_t ngx_ahava_auth_user_loaded(ngx_http_request_t *r,
    ngx_ahava_pg_query_t *q);
static ngx_int_t ngx_ahava_auth_fail(ngx_http_request_t *r, const char *code,
    const char *message, const char *reason);
static ngx_ahava_user_slot_t *ngx_ahava_user_slot(ngx_ahava_main_conf_t *amcf,
    u_char *id, size_t len);


static const char *ngx_ahava_roles[] = {
    NULL, "PATIENT", "NURSE", "DOCTOR", "ADMIN"
};


const char *
ngx_ahava_role_name(ngx_ahava_role_e role)
{
    return ngx_ahava_roles[role];
}


ngx_ahava_role_e
ngx_ahava_role_parse(u_char *s, size_t len)
{
    ngx_uint_t  i;

    for (i = NGX_AHAVA_ROLE_PATIENT; i <= NGX_AHAVA_ROLE_ADMIN; i++) {
        if (len == ngx_strlen(ngx_ahava_roles[i])
            && ngx_strncmp(s, ngx_ahava_roles[i], len) == 0)
        {
            return (ngx_ahava_role_e) i;
        }
    }

    return NGX_AHAVA_ROLE_NONE;
}


ngx_ahava_user_cache_t *
ngx_ahava_user_cache_create(ngx_cycle_t *cycle, ngx_uint_t size)
{
    ngx_ahava_user_cache_t  *cache;

    cache = ngx_pcalloc(cycle->pool, sizeof(ngx_ahava_user_cache_t));
    if (cache == NULL) {
        return NULL;
    }

    cache->size = size ? size : 1;
    cache->slots = ngx_pcalloc(cycle->pool,
                               cache->size * sizeof(ngx_ahava_user_slot_t));
    if (cache->slots == NULL) {
        return NULL;
    }

    return cache;
}


ngx_int_t
ngx_ahava_authenticate(ngx_http_request_t *r, ngx_ahava_step_pt authorized)
{
    u_char                  uid[NGX_AHAVA_ID_MAX_LEN];
    ngx_str_t               auth, token, user_id;
    const char             *reason;
    ngx_ahava_ctx_t        *ctx;
    ngx_ahava_pg_query_t   *q;
    ngx_ahava_user_slot_t  *slot;
    ngx_ahava_main_conf_t  *amcf;
    ngx_ahava_jwt_rc_e      rc;

    amcf = ngx_http_get_module_main_conf(r, ngx_ahava_core_module);
    ctx = ngx_ahava_get_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->authorized = authorized;

    if (r->headers_in.authorization == NULL) {
        return ngx_ahava_auth_fail(r, "TOKEN_MISSING", "No token provided",
                                   "no Authorization header");
    }

    auth = r->headers_in.authorization->value;

    if (auth.len < 7 || ngx_strncasecmp(auth.data, (u_char *) "Bearer ", 7)
                        != 0)
    {
        return ngx_ahava_auth_fail(r, "TOKEN_MISSING", "No token provided",
                                   "not a Bearer Authorization header");
    }

    token.data = auth.data + 7;
    token.len = auth.len - 7;

    while (token.len && token.data[0] == ' ') {
        token.data++;
        token.len--;
    }

    while (token.len && token.data[token.len - 1] == ' ') {
        token.len--;
    }

    if (token.len == 0) {
        return ngx_ahava_auth_fail(r, "TOKEN_MISSING", "No token provided",
                                   "empty Bearer token");
    }

    user_id.data = uid;
    user_id.len = 0;

    rc = ngx_ahava_jwt_verify(amcf, &token, &user_id, r->connection->log,
                              &reason);

    if (rc == NGX_AHAVA_JWT_EXPIRED) {
        return ngx_ahava_auth_fail(r, "TOKEN_EXPIRED", "Token expired",
                                   reason);
    }

    if (rc != NGX_AHAVA_JWT_OK) {
        return ngx_ahava_auth_fail(r, "TOKEN_INVALID", "Invalid token",
                                   reason);
    }

    ngx_memcpy(ctx->user.id, user_id.data, user_id.len);
    ctx->user.id_len = user_id.len;

    slot = ngx_ahava_user_slot(amcf, user_id.data, user_id.len);

    if (slot && slot->id_len == user_id.len
        && ngx_memcmp(slot->id, user_id.data, user_id.len) == 0
        && (ngx_msec_int_t) (slot->expires - ngx_current_msec) > 0)
    {
        if (!slot->active) {
            return ngx_ahava_auth_fail(r, "TOKEN_INVALID", "Invalid token",
                                       "inactive user");
        }

        ctx->user.role = slot->role;
        return authorized(r);
    }

    q = ngx_ahava_pg_query(r,
            "SELECT role::text, \"isActive\" FROM users WHERE id = $1",
            ngx_ahava_auth_user_loaded);
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    q->nparams = 1;
    q->values[0] = ngx_pnalloc(r->pool, user_id.len + 1);
    if (q->values[0] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_cpystrn((u_char *) q->values[0], user_id.data, user_id.len + 1);

    return ngx_ahava_pg_run(r, q);
}


static ngx_int_t
ngx_ahava_auth_user_loaded(ngx_http_request_t *r, ngx_ahava_pg_query_t *q)
{
    u_char                 *role;
    ngx_uint_t              active;
    ngx_ahava_ctx_t        *ctx;
    ngx_ahava_role_e        rl;
    ngx_ahava_user_slot_t  *slot;
    ngx_ahava_main_conf_t  *amcf;

    if (q->rc != NGX_OK) {
        return ngx_ahava_pg_result_error(r, q);
    }

    amcf = ngx_http_get_module_main_conf(r, ngx_ahava_core_module);
    ctx = ngx_ahava_get_ctx(r);

    if (PQntuples(q->result) != 1) {
        return ngx_ahava_auth_fail(r, "TOKEN_INVALID", "Invalid token",
                                   "unknown user");
    }

    role = (u_char *) PQgetvalue(q->result, 0, 0);
    rl = ngx_ahava_role_parse(role, ngx_strlen(role));
    active = (PQgetvalue(q->result, 0, 1)[0] == 't');

    if (rl == NGX_AHAVA_ROLE_NONE) {
        active = 0;
    }

    slot = ngx_ahava_user_slot(amcf, ctx->user.id, ctx->user.id_len);

    if (slot) {
        ngx_memcpy(slot->id, ctx->user.id, ctx->user.id_len);
        slot->id_len = (u_char) ctx->user.id_len;
        slot->active = (u_char) active;
        slot->role = (u_char) rl;
        slot->expires = ngx_current_msec + amcf->user_cache_ttl;
    }

    if (!active) {
        return ngx_ahava_auth_fail(r, "TOKEN_INVALID", "Invalid token",
                                   "inactive user");
    }

    ctx->user.role = rl;

    return ctx->authorized(r);
}


static ngx_ahava_user_slot_t *
ngx_ahava_user_slot(ngx_ahava_main_conf_t *amcf, u_char *id, size_t len)
{
    if (amcf->users == NULL || amcf->user_cache_ttl == 0) {
        return NULL;
    }

    return &amcf->users->slots[ngx_crc32_short(id, len) % amcf->users->size];
}


static ngx_int_t
ngx_ahava_auth_fail(ngx_http_request_t *r, const char *code,
    const char *message, const char *reason)
{
    /* a security event (SPEC §11): the reason, never the token */
    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "ahava: authentication failed: %s (%s)", reason, code);

    ngx_ahava_audit(r, "AUTH_FAILED", "auth", NULL,
                    json_pack("{s:s, s:s}", "reason", reason, "code", code));

    return ngx_ahava_send_error(r, NGX_HTTP_UNAUTHORIZED, code, message,
                                NULL);
}
