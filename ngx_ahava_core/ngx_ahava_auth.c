
/*
 * Authentication (SPEC §3), the first step after routing: Bearer JWT from
 * the headers only (the body is not read before it), then the user's row — it must exist
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


static ngx_ahava_rc_e ngx_ahava_auth_user_loaded(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_auth_fail(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx, const char *code, const char *message,
    const char *reason);
static ngx_ahava_user_slot_t *ngx_ahava_user_slot(ngx_ahava_main_conf_t *amcf,
    u_char *id, size_t len);
static ngx_int_t ngx_ahava_auth_ws_carrier(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx, ngx_str_t *token);


static ngx_ahava_stmt_t  ngx_ahava_auth_stmts[] = {

#define NGX_AHAVA_USER_BY_ID  0
    { ngx_string("user by id"),
      "SELECT role::text, \"isActive\" FROM users WHERE id = $1",
      1, 0, "" },
};


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
ngx_ahava_auth_declare(ngx_conf_t *cf)
{
    return ngx_ahava_declare(cf, ngx_ahava_auth_stmts,
                             sizeof(ngx_ahava_auth_stmts)
                             / sizeof(ngx_ahava_auth_stmts[0]));
}


ngx_ahava_rc_e
ngx_ahava_step_auth(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    ngx_str_t               auth, token, user_id;
    const char             *reason;
    ngx_ahava_pg_query_t   *q;
    ngx_ahava_user_slot_t  *slot;
    ngx_ahava_main_conf_t  *amcf;
    ngx_ahava_jwt_rc_e      rc;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: authenticate");

    if (ctx->route->flags & NGX_AHAVA_ROUTE_PUBLIC) {
        return NGX_AHAVA_NEXT;
    }

    amcf = ngx_http_get_module_main_conf(r, ngx_ahava_core_module);

    if (r->headers_in.authorization == NULL) {
        if (!(ctx->route->flags & NGX_AHAVA_ROUTE_WS_TOKEN)) {
            return ngx_ahava_auth_fail(r, ctx, "TOKEN_MISSING",
                                       "No token provided",
                                       "no Authorization header");
        }

        if (ngx_ahava_auth_ws_carrier(r, ctx, &token) != NGX_OK) {
            return ngx_ahava_auth_fail(r, ctx, "TOKEN_MISSING",
                                       "No token provided",
                                       "no Authorization header, "
                                       "bearer subprotocol or token argument");
        }

        goto verify;
    }

    auth = r->headers_in.authorization->value;

    if (auth.len < 7 || ngx_strncasecmp(auth.data, (u_char *) "Bearer ", 7)
                        != 0)
    {
        return ngx_ahava_auth_fail(r, ctx, "TOKEN_MISSING",
                                   "No token provided",
                                   "not a Bearer Authorization header");
    }

    token.data = auth.data + 7;
    token.len = auth.len - 7;

verify:

    while (token.len && token.data[0] == ' ') {
        token.data++;
        token.len--;
    }

    while (token.len && token.data[token.len - 1] == ' ') {
        token.len--;
    }

    if (token.len == 0) {
        return ngx_ahava_auth_fail(r, ctx, "TOKEN_MISSING",
                                   "No token provided", "empty Bearer token");
    }

    user_id.data = ctx->user.id;
    user_id.len = 0;

    rc = ngx_ahava_jwt_verify(amcf, &token, &user_id, r->connection->log,
                              &reason);

    if (rc == NGX_AHAVA_JWT_EXPIRED) {
        return ngx_ahava_auth_fail(r, ctx, "TOKEN_EXPIRED", "Token expired",
                                   reason);
    }

    if (rc != NGX_AHAVA_JWT_OK) {
        return ngx_ahava_auth_fail(r, ctx, "TOKEN_INVALID", "Invalid token",
                                   reason);
    }

    ctx->user.id_len = user_id.len;
    ctx->user.id[user_id.len] = '\0';

    slot = ngx_ahava_user_slot(amcf, user_id.data, user_id.len);

    if (slot && slot->id_len == user_id.len
        && ngx_memcmp(slot->id, user_id.data, user_id.len) == 0
        && (ngx_msec_int_t) (slot->expires - ngx_current_msec) > 0)
    {
        if (!slot->active) {
            return ngx_ahava_auth_fail(r, ctx, "TOKEN_INVALID",
                                       "Invalid token", "inactive user");
        }

        ctx->user.role = slot->role;
        return NGX_AHAVA_NEXT;
    }

    q = ngx_ahava_query_create(r, &ngx_ahava_auth_stmts[NGX_AHAVA_USER_BY_ID]);
    if (q == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    q->values[0] = (char *) ctx->user.id;

    return ngx_ahava_query(r, ctx, q, ngx_ahava_auth_user_loaded);
}


static ngx_ahava_rc_e
ngx_ahava_auth_user_loaded(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    u_char                 *role;
    PGresult               *res;
    ngx_uint_t              active;
    ngx_ahava_role_e        rl;
    ngx_ahava_user_slot_t  *slot;
    ngx_ahava_main_conf_t  *amcf;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: user loaded");

    if (ctx->query->rc != NGX_OK) {
        return ngx_ahava_query_failed(r, ctx);
    }

    amcf = ngx_http_get_module_main_conf(r, ngx_ahava_core_module);
    res = ctx->query->result;

    if (PQntuples(res) != 1) {
        return ngx_ahava_auth_fail(r, ctx, "TOKEN_INVALID", "Invalid token",
                                   "unknown user");
    }

    role = (u_char *) PQgetvalue(res, 0, 0);
    rl = ngx_ahava_role_parse(role, ngx_strlen(role));
    active = (PQgetvalue(res, 0, 1)[0] == 't' && rl != NGX_AHAVA_ROLE_NONE);

    slot = ngx_ahava_user_slot(amcf, ctx->user.id, ctx->user.id_len);

    if (slot) {
        ngx_memcpy(slot->id, ctx->user.id, ctx->user.id_len);
        slot->id_len = (u_char) ctx->user.id_len;
        slot->active = (u_char) active;
        slot->role = (u_char) rl;
        slot->expires = ngx_current_msec + amcf->user_cache_ttl;
    }

    if (!active) {
        return ngx_ahava_auth_fail(r, ctx, "TOKEN_INVALID", "Invalid token",
                                   "inactive user");
    }

    ctx->user.role = rl;

    return NGX_AHAVA_NEXT;
}


/*
 * The other carriers of a WebSocket's token (SPEC §8), browsers being
 * unable to set Authorization: "Sec-WebSocket-Protocol: bearer, <jwt>"
 * (the answer then selects "bearer"), else the "token" query argument.
 */

static ngx_int_t
ngx_ahava_auth_ws_carrier(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    ngx_str_t *token)
{
    u_char           *p, *last, *comma, *dst, *src;
    ngx_str_t         item, value;
    ngx_uint_t        i, n;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len != sizeof("Sec-WebSocket-Protocol") - 1
            || ngx_strncasecmp(h[i].key.data,
                               (u_char *) "Sec-WebSocket-Protocol",
                               h[i].key.len) != 0)
        {
            continue;
        }

        /* "bearer, <jwt>": the first item names the carrier */
        p = h[i].value.data;
        last = p + h[i].value.len;

        for (n = 0; n < 2 && p < last; n++) {
            comma = ngx_strlchr(p, last, ',');
            if (comma == NULL) {
                comma = last;
            }

            item.data = p;
            item.len = comma - p;
            p = comma + 1;

            while (item.len && (item.data[0] == ' ' || item.data[0] == '\t')) {
                item.data++;
                item.len--;
            }

            while (item.len && (item.data[item.len - 1] == ' '
                                || item.data[item.len - 1] == '\t'))
            {
                item.len--;
            }

            if (n == 0) {
                if (item.len != sizeof("bearer") - 1
                    || ngx_strncasecmp(item.data, (u_char *) "bearer",
                                       item.len) != 0)
                {
                    break;
                }

                continue;
            }

            if (item.len) {
                *token = item;
                ctx->bearer_protocol = 1;
                return NGX_OK;
            }
        }
    }

    if (ngx_http_arg(r, (u_char *) "token", sizeof("token") - 1, &value)
        != NGX_OK || value.len == 0)
    {
        return NGX_DECLINED;
    }

    /* a JWT needs no escaping, but a client may have escaped it anyway */
    if (ngx_strlchr(value.data, value.data + value.len, '%')) {
        dst = ngx_pnalloc(r->pool, value.len);
        if (dst == NULL) {
            return NGX_DECLINED;
        }

        token->data = dst;
        src = value.data;
        ngx_unescape_uri(&dst, &src, value.len, 0);
        token->len = dst - token->data;

    } else {
        *token = value;
    }

    return token->len ? NGX_OK : NGX_DECLINED;
}


static ngx_ahava_user_slot_t *
ngx_ahava_user_slot(ngx_ahava_main_conf_t *amcf, u_char *id, size_t len)
{
    if (amcf->users == NULL || amcf->user_cache_ttl == 0) {
        return NULL;
    }

    return &amcf->users->slots[ngx_crc32_short(id, len) % amcf->users->size];
}


/*
 * 401, and a security event (SPEC §11) with the reason, never the token;
 * the journal aggregates them, so a flood of bad tokens costs no statement
 * per request.
 */

static ngx_ahava_rc_e
ngx_ahava_auth_fail(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    const char *code, const char *message, const char *reason)
{
    ngx_ahava_audit_auth_failed(r, code, reason);

    ctx->user.id_len = 0;
    ctx->user.role = NGX_AHAVA_ROLE_NONE;

    return ngx_ahava_answer_error(r, ctx, NGX_HTTP_UNAUTHORIZED, code,
                                  message, NULL);
}
