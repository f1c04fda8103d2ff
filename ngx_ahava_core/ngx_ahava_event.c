
/*
 * What a request tells others after it is done:
 *
 * - events (SPEC §8) are published to Redis, one PUBLISH per recipient on
 *   the channel "ahava:user:<userId>", the payload being the WebSocket frame
 *   itself: {"type":T,"data":{...},"timestamp":ISO}.  The data is already
 *   committed in PostgreSQL, so an event lost while Redis is down is caught
 *   up over REST;
 * - security events (SPEC §11) go to the error log and to audit_logs, with
 *   the sha256 of the entry.
 */


#include "ngx_ahava_core.h"


#define NGX_AHAVA_AUDIT_SQL                                                  \
    "INSERT INTO audit_logs (id, \"userId\", \"userRole\", action,"          \
    " resource, \"resourceId\", metadata, checksum, \"createdAt\")"          \
    " SELECT $1::text, $2::text, ($3::text)::\"UserRole\", $4::text,"        \
    " $5::text, $6::text, ($7::text)::jsonb, "                               \
    NGX_AHAVA_AUDIT_CHECKSUM("$1::text", "$2::text", "$3::text", "$4::text", \
                             "$5::text", "$6::text",                         \
                             "($7::text)::jsonb::text", "n.t")               \
    ", n.t FROM (SELECT LOCALTIMESTAMP(3) AS t) n"


u_char *
ngx_ahava_iso_time(u_char *buf)
{
    ngx_tm_t     tm;
    ngx_time_t  *tp;

    tp = ngx_timeofday();
    ngx_gmtime(tp->sec, &tm);

    return ngx_sprintf(buf, "%4d-%02d-%02dT%02d:%02d:%02d.%03MZ",
                       tm.ngx_tm_year, tm.ngx_tm_mon, tm.ngx_tm_mday,
                       tm.ngx_tm_hour, tm.ngx_tm_min, tm.ngx_tm_sec,
                       tp->msec);
}


/*
 * Publishes one event to each recipient, each once, the actor (the caller)
 * only with NGX_AHAVA_PUBLISH_TO_ACTOR (their other sessions).  Steals the
 * reference to data.  NGX_DECLINED when Redis is down.
 */

ngx_int_t
ngx_ahava_publish(ngx_http_request_t *r, const char *type, json_t *data,
    char **recipients, ngx_uint_t n, ngx_uint_t flags)
{
    u_char                  ts[NGX_AHAVA_ISO_TIME_LEN + 1], *p;
    json_t                 *root;
    ngx_str_t               payload;
    ngx_int_t               rc;
    ngx_uint_t              i, j, sent;
    ngx_ahava_ctx_t        *ctx;
    ngx_ahava_main_conf_t  *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_ahava_core_module);
    ctx = ngx_ahava_get_ctx(r);

    p = ngx_ahava_iso_time(ts);
    *p = '\0';

    root = json_pack("{s:s, s:o, s:s}", "type", type, "data", data,
                     "timestamp", (char *) ts);
    if (root == NULL) {
        return NGX_ERROR;
    }

    rc = ngx_ahava_json_dump(r->pool, root, &payload);
    json_decref(root);

    if (rc != NGX_OK) {
        return NGX_ERROR;
    }

    rc = NGX_OK;
    sent = 0;

    for (i = 0; i < n; i++) {
        if (recipients[i] == NULL
            || (!(flags & NGX_AHAVA_PUBLISH_TO_ACTOR)
                && ngx_strlen(recipients[i]) == ctx->user.id_len
                && ngx_strncmp(recipients[i], ctx->user.id,
                               ctx->user.id_len) == 0))
        {
            continue;
        }

        for (j = 0; j < i; j++) {
            if (recipients[j] && ngx_strcmp(recipients[j], recipients[i]) == 0)
            {
                break;
            }
        }

        if (j < i) {
            continue;
        }

        rc = ngx_ahava_redis_command(amcf->redis, NULL, NULL,
                                     "PUBLISH ahava:user:%s %b",
                                     recipients[i], payload.data,
                                     payload.len);
        if (rc != NGX_OK) {
            break;
        }

        sent++;
    }

    if (rc != NGX_OK) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "ahava: event %s not published: redis unavailable",
                      type);
        return NGX_DECLINED;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: event %s published to %ui users", type, sent);

    return NGX_OK;
}


/*
 * A security event: the error log always, audit_logs in the background
 * (a full pool drops the row, and says so in the log).  Steals metadata.
 */

void
ngx_ahava_audit(ngx_http_request_t *r, const char *action,
    const char *resource, ngx_str_t *resource_id, json_t *metadata)
{
    ngx_str_t               meta;
    ngx_pool_t             *pool;
    ngx_ahava_ctx_t        *ctx;
    ngx_ahava_pg_query_t   *q;
    ngx_ahava_main_conf_t  *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_ahava_core_module);
    ctx = ngx_ahava_get_ctx(r);

    ngx_str_null(&meta);

    pool = ngx_create_pool(1024, ngx_cycle->log);

    if (pool && metadata) {
        (void) ngx_ahava_json_dump(pool, metadata, &meta);
    }

    if (metadata) {
        json_decref(metadata);
    }

    ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                  "ahava: security event %s on %s \"%V\" by user \"%*s\" "
                  "(%s) %V", action, resource,
                  resource_id ? resource_id : &(ngx_str_t) ngx_null_string,
                  ctx ? ctx->user.id_len : 0, ctx ? ctx->user.id : NULL,
                  (ctx && ctx->user.role) ? ngx_ahava_role_name(ctx->user.role)
                                          : "-",
                  &meta);

    if (pool == NULL) {
        goto failed;
    }

    q = ngx_pcalloc(pool, sizeof(ngx_ahava_pg_query_t));
    if (q == NULL) {
        goto failed;
    }

    q->own_pool = pool;
    q->sql.data = (u_char *) NGX_AHAVA_AUDIT_SQL;
    q->sql.len = sizeof(NGX_AHAVA_AUDIT_SQL) - 1;

    q->values[0] = ngx_pnalloc(pool, NGX_AHAVA_NEW_ID_LEN + 1);
    if (q->values[0] == NULL) {
        goto failed;
    }

    ngx_ahava_id_generate((u_char *) q->values[0]);
    q->values[0][NGX_AHAVA_NEW_ID_LEN] = '\0';

    if (ctx && ctx->user.id_len) {
        q->values[1] = ngx_pnalloc(pool, ctx->user.id_len + 1);
        if (q->values[1] == NULL) {
            goto failed;
        }

        ngx_cpystrn((u_char *) q->values[1], ctx->user.id,
                    ctx->user.id_len + 1);
    }

    if (ctx && ctx->user.role) {
        q->values[2] = (char *) ngx_ahava_role_name(ctx->user.role);
    }

    q->values[3] = (char *) action;
    q->values[4] = (char *) resource;

    if (resource_id && resource_id->len) {
        q->values[5] = ngx_pnalloc(pool, resource_id->len + 1);
        if (q->values[5] == NULL) {
            goto failed;
        }

        ngx_cpystrn((u_char *) q->values[5], resource_id->data,
                    resource_id->len + 1);
    }

    q->values[6] = (char *) meta.data;
    q->nparams = 7;

    if (ngx_ahava_pg_background(amcf->pg, q) == NGX_OK) {
        return;
    }

failed:

    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "ahava: security event %s not written to audit_logs",
                  action);

    if (pool) {
        ngx_destroy_pool(pool);
    }
}


/*
 * The audit_logs row of a mutation as a CTE of its statement, so that it
 * commits with the change or not at all.  $id and $role are the parameters
 * holding a new id and the caller's role; the caller is $user.  The row is
 * written once per row of "from", where "rid" and "meta" are expressions.
 */

u_char *
ngx_ahava_audit_cte(u_char *buf, u_char *last, ngx_uint_t id, ngx_uint_t user,
    ngx_uint_t role, const char *action, const char *resource,
    const char *rid, const char *from, const char *meta)
{
    return ngx_slprintf(buf, last,
        ", audit AS (INSERT INTO audit_logs (id, \"userId\", \"userRole\","
        " action, resource, \"resourceId\", metadata, checksum, \"createdAt\")"
        " SELECT $%ui::text, $%ui::text, ($%ui::text)::\"UserRole\","
        " '%s', '%s', %s, m.meta, "
        NGX_AHAVA_AUDIT_CHECKSUM("$%ui::text", "$%ui::text", "$%ui::text",
                                 "'%s'", "'%s'", "%s", "m.meta::text", "m.t")
        ", m.t FROM %s, LATERAL (SELECT %s AS meta, LOCALTIMESTAMP(3) AS t) m)",
        id, user, role, action, resource, rid,
        id, user, role, action, resource, rid, from, meta);
}


/* Puts a new id and the caller's role in the next two parameters */

ngx_int_t
ngx_ahava_audit_params(ngx_http_request_t *r, ngx_ahava_pg_query_t *q)
{
    u_char           *id;
    ngx_ahava_ctx_t  *ctx;

    ctx = ngx_ahava_get_ctx(r);

    id = ngx_pnalloc(r->pool, NGX_AHAVA_NEW_ID_LEN + 1);
    if (id == NULL || q->nparams + 2 > NGX_AHAVA_PG_MAX_PARAMS) {
        return NGX_ERROR;
    }

    ngx_ahava_id_generate(id);
    id[NGX_AHAVA_NEW_ID_LEN] = '\0';

    q->values[q->nparams++] = (char *) id;
    q->values[q->nparams++] = (char *) ngx_ahava_role_name(ctx->user.role);

    return NGX_OK;
}
