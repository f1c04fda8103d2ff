
/*
 * Security events (SPEC §11): each goes to the error log at once and to
 * audit_logs through a per-worker journal, written in batches (one INSERT
 * of up to 100 rows) by a query of the worker's own that only ever takes an
 * idle connection — so a flood can neither crowd out API requests nor wait
 * in their queue.
 *
 * Failed authentications are aggregated: one row per reason, code and
 * client address while a batch is pending, with the count and the last
 * time, so a flood of bad tokens costs a row per second at most, not a
 * statement per request.  The journal is bounded; what it cannot hold is
 * counted, logged, and recorded as an AUDIT_EVENTS_DROPPED row as soon as
 * there is room: the record is never lost silently.  Rows leave the
 * journal only once their INSERT committed.
 *
 * The mutations that must commit with their row (assignments,
 * cancellations, deletions) write it in their own statement instead.
 */


#include "ngx_ahava_core.h"


#define NGX_AHAVA_AUDIT_MAX       1024          /* entries per worker */
#define NGX_AHAVA_AUDIT_BATCH     100           /* rows per INSERT */
#define NGX_AHAVA_AUDIT_DELAY     100           /* ms before a flush */
#define NGX_AHAVA_AUDIT_RETRY     1000          /* ms when none is idle */


typedef struct {
    u_char                     id[NGX_AHAVA_NEW_ID_LEN + 1];
    u_char                     user[NGX_AHAVA_ID_MAX_LEN + 1];
    u_char                     rid[NGX_AHAVA_ID_MAX_LEN + 1];
    u_char                     time[NGX_AHAVA_ISO_TIME_LEN + 1];
    const char                *role;            /* static, or NULL */
    const char                *action;          /* static */
    const char                *resource;        /* static */
    ngx_str_t                  meta;            /* ngx_alloc()ed JSON */

    /* AUTH_FAILED: the aggregation key and count */
    const char                *code;
    const char                *reason;
    u_char                     client[NGX_SOCKADDR_STRLEN + 1];
    ngx_uint_t                 count;
} ngx_ahava_audit_entry_t;


struct ngx_ahava_audit_s {
    ngx_ahava_main_conf_t     *amcf;
    ngx_log_t                 *log;
    ngx_ahava_audit_entry_t   *entries;         /* a ring */
    ngx_uint_t                 head;
    ngx_uint_t                 n;
    ngx_uint_t                 inflight;        /* the first n being sent */
    ngx_uint_t                 dropped;
    ngx_event_t                flush;
    ngx_ahava_log_limit_t      drop_log;
    ngx_ahava_log_limit_t      fail_log;
    unsigned                   exiting:1;
};


static ngx_ahava_audit_entry_t *ngx_ahava_audit_push(ngx_ahava_audit_t *a);
static void ngx_ahava_audit_schedule(ngx_ahava_audit_t *a, ngx_msec_t ms);
static void ngx_ahava_audit_flush_handler(ngx_event_t *ev);
static void ngx_ahava_audit_done(ngx_ahava_pg_query_t *q);
static u_char *ngx_ahava_audit_element(u_char *p, u_char *s, size_t len);
static size_t ngx_ahava_audit_element_size(u_char *s, size_t len);


/* one INSERT for a batch: arrays of texts, one element per row */

static ngx_ahava_stmt_t  ngx_ahava_audit_stmts[] = {

    { ngx_string("audit rows"),
      "INSERT INTO audit_logs (id, \"userId\", \"userRole\", action,"
      " resource, \"resourceId\", metadata, checksum, \"createdAt\")"
      " SELECT e.id, e.uid, e.role::\"UserRole\", e.action, e.resource,"
      " e.rid, e.meta::jsonb, "
      NGX_AHAVA_AUDIT_CHECKSUM("e.id", "e.uid", "e.role", "e.action",
                               "e.resource", "e.rid", "e.meta::jsonb::text",
                               "e.t::timestamp(3)")
      ", e.t::timestamp(3)"
      " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
      " $5::text[], $6::text[], $7::text[], $8::text[])"
      " AS e(id, uid, role, action, resource, rid, meta, t)",
      8, 0, "" },
};


ngx_int_t
ngx_ahava_audit_declare(ngx_conf_t *cf)
{
    return ngx_ahava_declare(cf, ngx_ahava_audit_stmts, 1);
}


ngx_ahava_audit_t *
ngx_ahava_audit_create(ngx_cycle_t *cycle, ngx_ahava_main_conf_t *amcf)
{
    ngx_ahava_audit_t  *a;

    a = ngx_pcalloc(cycle->pool, sizeof(ngx_ahava_audit_t));
    if (a == NULL) {
        return NULL;
    }

    a->entries = ngx_pcalloc(cycle->pool, NGX_AHAVA_AUDIT_MAX
                                          * sizeof(ngx_ahava_audit_entry_t));
    if (a->entries == NULL) {
        return NULL;
    }

    a->amcf = amcf;
    a->log = cycle->log;

    a->flush.handler = ngx_ahava_audit_flush_handler;
    a->flush.data = a;
    a->flush.log = cycle->log;
    a->flush.cancelable = 1;

    return a;
}


/* At exit: what was not written is said in the log, with its count */

void
ngx_ahava_audit_destroy(ngx_ahava_audit_t *a)
{
    ngx_uint_t  i;

    a->exiting = 1;

    if (a->flush.timer_set) {
        ngx_del_timer(&a->flush);
    }

    if (a->n || a->dropped) {
        ngx_log_error(NGX_LOG_WARN, a->log, 0,
                      "ahava: %ui security events not written to audit_logs "
                      "at exit (they are in this log)", a->n + a->dropped);
    }

    for (i = 0; i < a->n; i++) {
        ngx_free(a->entries[(a->head + i) % NGX_AHAVA_AUDIT_MAX].meta.data);
    }

    a->n = 0;
}


/*
 * A security event: the error log always, audit_logs through the journal.
 * Steals metadata.
 */

void
ngx_ahava_audit(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    const char *action, const char *resource, ngx_str_t *resource_id,
    json_t *metadata)
{
    ngx_str_t                 meta;
    ngx_ahava_audit_t        *a;
    ngx_ahava_audit_entry_t  *e;
    ngx_ahava_main_conf_t    *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_ahava_core_module);
    a = amcf->audit;

    ngx_str_null(&meta);

    if (metadata) {
        (void) ngx_ahava_json_dump(r->pool, metadata, &meta);
        json_decref(metadata);
    }

    ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                  "ahava: security event %s on %s \"%V\" by user \"%s\" "
                  "(%s) %V", action, resource,
                  resource_id ? resource_id : &(ngx_str_t) ngx_null_string,
                  ctx->user.id_len ? ctx->user.id : (u_char *) "",
                  ctx->user.role ? ngx_ahava_role_name(ctx->user.role) : "-",
                  &meta);

    if (a == NULL || a->exiting) {
        return;
    }

    e = ngx_ahava_audit_push(a);
    if (e == NULL) {
        return;
    }

    ngx_cpystrn(e->user, ctx->user.id, sizeof(e->user));
    e->role = ctx->user.role ? ngx_ahava_role_name(ctx->user.role) : NULL;
    e->action = action;
    e->resource = resource;

    if (resource_id && resource_id->len) {
        ngx_cpystrn(e->rid, resource_id->data,
                    ngx_min(resource_id->len + 1, sizeof(e->rid)));
    }

    if (meta.len) {
        e->meta.data = ngx_alloc(meta.len, a->log);
        if (e->meta.data) {
            ngx_memcpy(e->meta.data, meta.data, meta.len);
            e->meta.len = meta.len;
        }
    }

    ngx_ahava_audit_schedule(a, NGX_AHAVA_AUDIT_DELAY);
}


/* A failed authentication (SPEC §11): the reason, never the token */

void
ngx_ahava_audit_auth_failed(ngx_http_request_t *r, const char *code,
    const char *reason)
{
    u_char                    client[NGX_SOCKADDR_STRLEN + 1];
    ngx_uint_t                i;
    ngx_ahava_audit_t        *a;
    ngx_ahava_audit_entry_t  *e;
    ngx_ahava_main_conf_t    *amcf;

    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "ahava: authentication failed: %s (%s)", reason, code);

    amcf = ngx_http_get_module_main_conf(r, ngx_ahava_core_module);
    a = amcf->audit;

    if (a == NULL || a->exiting) {
        return;
    }

    ngx_cpystrn(client, r->connection->addr_text.data,
                ngx_min(r->connection->addr_text.len + 1, sizeof(client)));

    /* the same failure, not yet on its way: counted in its row */
    for (i = a->inflight; i < a->n; i++) {
        e = &a->entries[(a->head + i) % NGX_AHAVA_AUDIT_MAX];

        if (e->code == code && e->reason == reason
            && ngx_strcmp(e->client, client) == 0)
        {
            e->count++;
            (void) ngx_ahava_iso_time(e->time);
            return;
        }
    }

    e = ngx_ahava_audit_push(a);
    if (e == NULL) {
        return;
    }

    e->action = "AUTH_FAILED";
    e->resource = "auth";
    e->code = code;
    e->reason = reason;
    e->count = 1;
    ngx_memcpy(e->client, client, sizeof(client));

    ngx_ahava_audit_schedule(a, NGX_AHAVA_AUDIT_DELAY);
}


static ngx_ahava_audit_entry_t *
ngx_ahava_audit_push(ngx_ahava_audit_t *a)
{
    ngx_ahava_audit_entry_t  *e;

    if (a->n == NGX_AHAVA_AUDIT_MAX) {
        a->dropped++;
        ngx_ahava_log_limited(&a->drop_log, NGX_LOG_ERR, a->log,
                              "ahava: the security-event journal is full, "
                              "%ui events so far kept in this log only",
                              a->dropped);
        return NULL;
    }

    e = &a->entries[(a->head + a->n) % NGX_AHAVA_AUDIT_MAX];
    a->n++;

    ngx_memzero(e, sizeof(ngx_ahava_audit_entry_t));
    ngx_ahava_id_generate(e->id);
    (void) ngx_ahava_iso_time(e->time);

    return e;
}


static void
ngx_ahava_audit_schedule(ngx_ahava_audit_t *a, ngx_msec_t ms)
{
    if (!a->flush.timer_set && a->inflight == 0 && !a->exiting) {
        ngx_add_timer(&a->flush, ms);
    }
}


/*
 * Sends the oldest entries as one INSERT, if a connection is idle; else
 * tries again later.  The parameters are PostgreSQL array literals.
 */

static void
ngx_ahava_audit_flush_handler(ngx_event_t *ev)
{
    u_char                   *p[8], meta[512], *m;
    size_t                    size[8], len;
    ngx_uint_t                i, k, n;
    ngx_pool_t               *pool;
    ngx_ahava_audit_t        *a;
    ngx_ahava_pg_query_t     *q;
    ngx_ahava_audit_entry_t  *e, *d;

    a = ev->data;

    if (a->exiting || a->inflight) {
        return;
    }

    if (a->dropped && a->n < NGX_AHAVA_AUDIT_MAX) {
        /* say, in audit_logs itself, how much it is missing */
        d = ngx_ahava_audit_push(a);
        d->action = "AUDIT_EVENTS_DROPPED";
        d->resource = "audit";
        d->code = NULL;
        d->count = a->dropped;
        a->dropped = 0;
    }

    if (a->n == 0) {
        return;
    }

    n = ngx_min(a->n, NGX_AHAVA_AUDIT_BATCH);

    pool = ngx_create_pool(4096, a->log);
    if (pool == NULL) {
        goto later;
    }

    q = ngx_pcalloc(pool, sizeof(ngx_ahava_pg_query_t));
    if (q == NULL) {
        goto failed;
    }

    q->stmt = &ngx_ahava_audit_stmts[0];
    q->nparams = 8;
    q->done = ngx_ahava_audit_done;
    q->data = pool;
    q->log = a->log;

    for (k = 0; k < 8; k++) {
        size[k] = 3;
    }

    for (i = 0; i < n; i++) {
        e = &a->entries[(a->head + i) % NGX_AHAVA_AUDIT_MAX];

        if (e->count) {
            /* the aggregate's metadata, built now that its count is final */
            m = (e->code == NULL)
                ? ngx_snprintf(meta, sizeof(meta), "{\"count\":%ui}",
                               e->count)
                : ngx_snprintf(meta, sizeof(meta),
                               "{\"reason\":\"%s\",\"code\":\"%s\","
                               "\"client\":\"%s\",\"count\":%ui,"
                               "\"lastAt\":\"%s\"}", e->reason, e->code,
                               e->client, e->count, e->time);
            len = m - meta;

            ngx_free(e->meta.data);
            e->meta.data = ngx_alloc(len, a->log);
            e->meta.len = e->meta.data ? len : 0;

            if (e->meta.data) {
                ngx_memcpy(e->meta.data, meta, len);
            }
        }

        size[0] += ngx_ahava_audit_element_size(e->id, ngx_strlen(e->id));
        size[1] += ngx_ahava_audit_element_size(e->user, ngx_strlen(e->user));
        size[2] += ngx_ahava_audit_element_size((u_char *) e->role,
                                      e->role ? ngx_strlen(e->role) : 0);
        size[3] += ngx_ahava_audit_element_size((u_char *) e->action,
                                                ngx_strlen(e->action));
        size[4] += ngx_ahava_audit_element_size((u_char *) e->resource,
                                                ngx_strlen(e->resource));
        size[5] += ngx_ahava_audit_element_size(e->rid, ngx_strlen(e->rid));
        size[6] += ngx_ahava_audit_element_size(e->meta.data, e->meta.len);
        size[7] += ngx_ahava_audit_element_size(e->time,
                                                ngx_strlen(e->time));
    }

    for (k = 0; k < 8; k++) {
        p[k] = ngx_pnalloc(pool, size[k] + 1);
        if (p[k] == NULL) {
            goto failed;
        }

        q->values[k] = (char *) p[k];
        *p[k]++ = '{';
    }

    for (i = 0; i < n; i++) {
        e = &a->entries[(a->head + i) % NGX_AHAVA_AUDIT_MAX];

        if (i) {
            for (k = 0; k < 8; k++) {
                *p[k]++ = ',';
            }
        }

        p[0] = ngx_ahava_audit_element(p[0], e->id, ngx_strlen(e->id));
        p[1] = ngx_ahava_audit_element(p[1], e->user, ngx_strlen(e->user));
        p[2] = ngx_ahava_audit_element(p[2], (u_char *) e->role,
                                       e->role ? ngx_strlen(e->role) : 0);
        p[3] = ngx_ahava_audit_element(p[3], (u_char *) e->action,
                                       ngx_strlen(e->action));
        p[4] = ngx_ahava_audit_element(p[4], (u_char *) e->resource,
                                       ngx_strlen(e->resource));
        p[5] = ngx_ahava_audit_element(p[5], e->rid, ngx_strlen(e->rid));
        p[6] = ngx_ahava_audit_element(p[6], e->meta.data, e->meta.len);
        p[7] = ngx_ahava_audit_element(p[7], e->time, ngx_strlen(e->time));
    }

    for (k = 0; k < 8; k++) {
        *p[k]++ = '}';
        *p[k] = '\0';
    }

    if (ngx_ahava_pg_background(a->amcf->pg, q) != NGX_OK) {
        goto failed;
    }

    a->inflight = n;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, a->log, 0,
                   "ahava: writing %ui security events", n);
    return;

failed:

    ngx_destroy_pool(pool);

later:

    /* no idle connection now: the events wait, bounded, for one */
    ngx_add_timer(&a->flush, NGX_AHAVA_AUDIT_RETRY);
}


static void
ngx_ahava_audit_done(ngx_ahava_pg_query_t *q)
{
    ngx_int_t                rc;
    ngx_uint_t               i;
    ngx_ahava_audit_t       *a;
    ngx_ahava_main_conf_t   *amcf;

    amcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_ahava_core_module);
    a = amcf->audit;

    rc = q->rc;

    /* q lives in that pool */
    ngx_destroy_pool(q->data);

    if (a == NULL || a->exiting) {
        return;
    }

    if (rc == NGX_OK) {
        for (i = 0; i < a->inflight; i++) {
            ngx_free(a->entries[a->head].meta.data);
            a->entries[a->head].meta.data = NULL;
            a->head = (a->head + 1) % NGX_AHAVA_AUDIT_MAX;
            a->n--;
        }

    } else {
        ngx_ahava_log_limited(&a->fail_log, NGX_LOG_ERR, a->log,
                              "ahava: writing %ui security events to "
                              "audit_logs failed, will retry",
                              a->inflight);
    }

    a->inflight = 0;

    if (a->n || a->dropped) {
        ngx_ahava_audit_schedule(a, rc == NGX_OK ? NGX_AHAVA_AUDIT_DELAY
                                                 : NGX_AHAVA_AUDIT_RETRY);
    }
}


/* An element of a PostgreSQL array literal: quoted, or NULL when empty */

static size_t
ngx_ahava_audit_element_size(u_char *s, size_t len)
{
    size_t  i, n;

    n = 3;

    for (i = 0; i < len; i++) {
        n += (s[i] == '"' || s[i] == '\\') ? 2 : 1;
    }

    return ngx_max(n, 5);
}


static u_char *
ngx_ahava_audit_element(u_char *p, u_char *s, size_t len)
{
    size_t  i;

    if (s == NULL || len == 0) {
        return ngx_cpymem(p, "NULL", 4);
    }

    *p++ = '"';

    for (i = 0; i < len; i++) {
        if (s[i] == '"' || s[i] == '\\') {
            *p++ = '\\';
        }

        *p++ = s[i];
    }

    *p++ = '"';

    return p;
}
