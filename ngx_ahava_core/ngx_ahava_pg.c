
/*
 * The per-worker asynchronous PostgreSQL pool.
 *
 * libpq's non-blocking API driven by nginx events: each connection's socket
 * is wrapped in an ngx_connection_t registered level-triggered (libpq reads
 * at most one buffer per PQconsumeInput, so an edge-triggered fd could leave
 * the tail of a result in the kernel with no new edge coming; over TLS the
 * tail can also wait inside OpenSSL, hence the SSL_pending loop).
 *
 * A connection prepares every declared statement when it opens (and so
 * again after any reconnect) before it serves a query; queries run with
 * PQsendQueryPrepared.
 *
 * A query belongs to an owner — a request in any phase, a WebSocket
 * session, the worker itself — and its completion (q->done) runs from an
 * event, never from inside ngx_ahava_pg_send(): a failure found while
 * sending is the caller's answer, a failure found later is done's.
 *
 * The pool is bounded (pg_pool_size connections, pg_wait_queue waiters with
 * a timer each).  Health is per connection: a query waits for whichever
 * connection frees first, and is refused (503) only when the queue is full
 * or no connection can serve — none is open, none is opening, and the last
 * attempt to open one failed.  Failed connects back off (250 ms doubling to
 * 10 s); a cancelable retry timer keeps trying while nothing is open, so a
 * restarted PostgreSQL heals without touching nginx.
 */


#include "ngx_ahava_core.h"

#include <openssl/ssl.h>


#define NGX_AHAVA_PG_RETRY_MIN   250
#define NGX_AHAVA_PG_RETRY_MAX   10000


typedef enum {
    NGX_AHAVA_PG_CONNECTING = 0,
    NGX_AHAVA_PG_PREPARING,
    NGX_AHAVA_PG_IDLE,
    NGX_AHAVA_PG_BUSY
} ngx_ahava_pg_state_e;


typedef struct {
    ngx_queue_t                queue;           /* idle or active list */
    ngx_ahava_pg_pool_t       *pool;
    PGconn                    *conn;
    ngx_connection_t          *c;
    ngx_ahava_pg_query_t      *query;           /* NULL while draining */
    PGresult                  *result;          /* the statement's result */
    ino_t                      socket;          /* libpq's current socket */
    ngx_uint_t                 prepared;        /* statements so far */
    ngx_ahava_pg_state_e       state;
    unsigned                   failed:1;        /* a result said error */
    unsigned                   discard:1;       /* close once done */
} ngx_ahava_pg_conn_t;


struct ngx_ahava_pg_pool_s {
    ngx_ahava_main_conf_t     *amcf;
    ngx_log_t                 *log;
    ngx_queue_t                idle;
    ngx_queue_t                active;          /* opening or busy */
    ngx_queue_t                waiters;
    ngx_uint_t                 nconns;          /* every state */
    ngx_uint_t                 nopening;        /* connecting, preparing */
    ngx_uint_t                 nwaiters;
    ngx_event_t                retry;
    ngx_event_t                fail;            /* posted: fail the waiters */
    ngx_msec_t                 backoff;
    ngx_msec_t                 connect_after;   /* no new connect before */
    ngx_ahava_log_limit_t      refuse_log;
    ngx_ahava_log_limit_t      connect_log;
    unsigned                   failed:1;        /* the last connect failed */
    unsigned                   exiting:1;
};


static ngx_int_t ngx_ahava_pg_connect(ngx_ahava_pg_pool_t *pool);
static void ngx_ahava_pg_connect_poll(ngx_ahava_pg_conn_t *pc);
static ngx_int_t ngx_ahava_pg_rebind(ngx_ahava_pg_conn_t *pc);
static ino_t ngx_ahava_pg_socket_id(int fd);
static void ngx_ahava_pg_prepare_next(ngx_ahava_pg_conn_t *pc);
static void ngx_ahava_pg_connect_failed(ngx_ahava_pg_conn_t *pc,
    const char *what);
static ngx_int_t ngx_ahava_pg_start(ngx_ahava_pg_conn_t *pc,
    ngx_ahava_pg_query_t *q);
static ngx_int_t ngx_ahava_pg_flush(ngx_ahava_pg_conn_t *pc);
static void ngx_ahava_pg_read_handler(ngx_event_t *ev);
static void ngx_ahava_pg_write_handler(ngx_event_t *ev);
static void ngx_ahava_pg_consume(ngx_ahava_pg_conn_t *pc);
static void ngx_ahava_pg_complete(ngx_ahava_pg_conn_t *pc);
static void ngx_ahava_pg_release(ngx_ahava_pg_conn_t *pc);
static void ngx_ahava_pg_close(ngx_ahava_pg_conn_t *pc);
static void ngx_ahava_pg_lost(ngx_ahava_pg_conn_t *pc, const char *why);
static void ngx_ahava_pg_finish(ngx_ahava_pg_query_t *q, PGresult *res,
    ngx_int_t rc);
static void ngx_ahava_pg_set_events(ngx_ahava_pg_conn_t *pc, ngx_uint_t read,
    ngx_uint_t write);
static void ngx_ahava_pg_grow(ngx_ahava_pg_pool_t *pool);
static void ngx_ahava_pg_check(ngx_ahava_pg_pool_t *pool);
static void ngx_ahava_pg_retry_handler(ngx_event_t *ev);
static void ngx_ahava_pg_fail_handler(ngx_event_t *ev);
static void ngx_ahava_pg_wait_timeout_handler(ngx_event_t *ev);
static ngx_ahava_pg_query_t *ngx_ahava_pg_next_waiter(
    ngx_ahava_pg_pool_t *pool);
static void ngx_ahava_pg_unwait(ngx_ahava_pg_query_t *q);
static void ngx_ahava_pg_notice(void *arg, const char *message);


ngx_ahava_pg_pool_t *
ngx_ahava_pg_pool_create(ngx_cycle_t *cycle, ngx_ahava_main_conf_t *amcf)
{
    ngx_ahava_pg_pool_t  *pool;

    pool = ngx_pcalloc(cycle->pool, sizeof(ngx_ahava_pg_pool_t));
    if (pool == NULL) {
        return NULL;
    }

    pool->amcf = amcf;
    pool->log = cycle->log;
    ngx_queue_init(&pool->idle);
    ngx_queue_init(&pool->active);
    ngx_queue_init(&pool->waiters);

    pool->retry.handler = ngx_ahava_pg_retry_handler;
    pool->retry.data = pool;
    pool->retry.log = cycle->log;
    pool->retry.cancelable = 1;

    pool->fail.handler = ngx_ahava_pg_fail_handler;
    pool->fail.data = pool;
    pool->fail.log = cycle->log;

    /* one warm connection: the first request need not wait for a connect */
    if (ngx_ahava_pg_connect(pool) != NGX_OK) {
        pool->failed = 1;
        ngx_add_timer(&pool->retry, NGX_AHAVA_PG_RETRY_MIN);
    }

    return pool;
}


/*
 * At worker exit: nothing is run for the owners (their requests are being
 * torn down too), no connection is opened any more, every socket goes.
 */

void
ngx_ahava_pg_pool_destroy(ngx_ahava_pg_pool_t *pool)
{
    ngx_queue_t           *qu;
    ngx_ahava_pg_conn_t   *pc;
    ngx_ahava_pg_query_t  *q;

    pool->exiting = 1;

    if (pool->retry.timer_set) {
        ngx_del_timer(&pool->retry);
    }

    if (pool->fail.posted) {
        ngx_delete_posted_event(&pool->fail);
    }

    while ((q = ngx_ahava_pg_next_waiter(pool)) != NULL) {
        /* detached: done is never called */
    }

    while (!ngx_queue_empty(&pool->idle)) {
        qu = ngx_queue_head(&pool->idle);
        ngx_ahava_pg_close(ngx_queue_data(qu, ngx_ahava_pg_conn_t, queue));
    }

    while (!ngx_queue_empty(&pool->active)) {
        qu = ngx_queue_head(&pool->active);
        pc = ngx_queue_data(qu, ngx_ahava_pg_conn_t, queue);

        if (pc->query) {
            pc->query->conn = NULL;
            pc->query->running = 0;
            pc->query = NULL;
        }

        ngx_ahava_pg_close(pc);
    }
}


/* PostgreSQL can serve: a connection is open, or none has failed yet */

ngx_int_t
ngx_ahava_pg_healthy(ngx_ahava_pg_pool_t *pool)
{
    if (pool == NULL) {
        return NGX_ERROR;
    }

    return (pool->nconns > pool->nopening || !pool->failed) ? NGX_OK
                                                           : NGX_ERROR;
}


/* what the metrics show of a worker's pool */

void
ngx_ahava_pg_stats(ngx_ahava_pg_pool_t *pool, ngx_uint_t *conns,
    ngx_uint_t *busy, ngx_uint_t *waiters)
{
    ngx_uint_t    idle;
    ngx_queue_t  *q;

    idle = 0;

    for (q = ngx_queue_head(&pool->idle);
         q != ngx_queue_sentinel(&pool->idle);
         q = ngx_queue_next(q))
    {
        idle++;
    }

    *conns = pool->nconns;
    *busy = pool->nconns - pool->nopening - ngx_min(idle, pool->nconns
                                                          - pool->nopening);
    *waiters = pool->nwaiters;
}


/*
 * Starts q.  NGX_OK: q->done will run later, from an event, never from
 * inside this call.  NGX_HTTP_SERVICE_UNAVAILABLE: refused now (the queue
 * is full, or no connection can serve); done will not run.
 */

ngx_int_t
ngx_ahava_pg_send(ngx_ahava_pg_pool_t *pool, ngx_ahava_pg_query_t *q)
{
    ngx_uint_t             room;
    ngx_queue_t           *qu;
    ngx_ahava_pg_conn_t   *pc;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, q->log, 0,
                   "ahava pg: send \"%V\"", &q->stmt->name);

    if (pool == NULL || pool->exiting) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    q->pool = pool;
    q->rc = NGX_AGAIN;

    while (!ngx_queue_empty(&pool->idle)) {
        qu = ngx_queue_head(&pool->idle);
        pc = ngx_queue_data(qu, ngx_ahava_pg_conn_t, queue);

        ngx_queue_remove(qu);
        ngx_queue_insert_tail(&pool->active, qu);

        if (ngx_ahava_pg_start(pc, q) == NGX_OK) {
            return NGX_OK;
        }

        /* a broken idle connection: no query of anyone's is on it */
        ngx_ahava_pg_lost(pc, "sending failed");
    }

    if (pool->nconns == 0 && pool->failed
        && ngx_current_msec < pool->connect_after)
    {
        ngx_ahava_log_limited(&pool->refuse_log, NGX_LOG_WARN, q->log,
                              "ahava: postgresql is unreachable, "
                              "answering 503");
        ngx_ahava_metrics_count(NGX_AHAVA_M_PG_REJECTED, 1);
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    /* waiters the connections being (or about to be) opened will take
     * do not count against the queue */
    room = pool->amcf->pg_wait_queue + pool->nopening;

    if ((ngx_msec_int_t) (ngx_current_msec - pool->connect_after) >= 0) {
        room += pool->amcf->pg_pool_size - pool->nconns;
    }

    if (pool->nwaiters >= room) {
        ngx_ahava_log_limited(&pool->refuse_log, NGX_LOG_WARN, q->log,
                              "ahava: postgresql pool and wait queue are "
                              "full, answering 503");
        ngx_ahava_metrics_count(NGX_AHAVA_M_PG_REJECTED, 1);
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    ngx_queue_insert_tail(&pool->waiters, &q->queue);
    pool->nwaiters++;
    q->waiting = 1;

    q->wait_timer.handler = ngx_ahava_pg_wait_timeout_handler;
    q->wait_timer.data = q;
    q->wait_timer.log = q->log;
    ngx_add_timer(&q->wait_timer, pool->amcf->pg_wait_timeout);

    ngx_ahava_pg_grow(pool);

    return NGX_OK;
}


/*
 * A query of the worker's own (audit rows, say) that must never take a
 * place in the wait queue: it runs on an idle connection now, or
 * NGX_DECLINED and the caller tries again later.
 */

ngx_int_t
ngx_ahava_pg_background(ngx_ahava_pg_pool_t *pool, ngx_ahava_pg_query_t *q)
{
    if (pool == NULL || pool->exiting || ngx_queue_empty(&pool->idle)) {
        return NGX_DECLINED;
    }

    return (ngx_ahava_pg_send(pool, q) == NGX_OK) ? NGX_OK : NGX_DECLINED;
}


/*
 * The owner goes away (client abort, timeout, socket closed): a waiter
 * leaves the queue, a running query is detached and its connection drains
 * the result and returns to the pool (statement_timeout bounds how long).
 * done will not run.
 */

void
ngx_ahava_pg_cancel(ngx_ahava_pg_query_t *q)
{
    ngx_ahava_pg_conn_t  *pc;

    if (q->waiting) {
        ngx_ahava_pg_unwait(q);
        return;
    }

    if (q->running) {
        pc = q->conn;
        pc->query = NULL;
        q->conn = NULL;
        q->running = 0;

        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, q->log, 0,
                       "ahava pg: query detached, connection drains");
    }
}


static ngx_int_t
ngx_ahava_pg_connect(ngx_ahava_pg_pool_t *pool)
{
    PGconn                 *conn;
    ngx_connection_t       *c;
    ngx_ahava_pg_conn_t    *pc;
    ngx_ahava_main_conf_t  *amcf;

    amcf = pool->amcf;

    conn = PQconnectStartParams((const char * const *) amcf->pg_keywords,
                                (const char * const *) amcf->pg_values, 0);
    if (conn == NULL) {
        ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                      "ahava: PQconnectStartParams() failed: out of memory");
        return NGX_ERROR;
    }

    if (PQstatus(conn) == CONNECTION_BAD) {
        ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                      "ahava: postgresql connect failed: %s",
                      PQerrorMessage(conn));
        ngx_ahava_metrics_count(NGX_AHAVA_M_PG_RECONNECTS, 1);
        PQfinish(conn);
        return NGX_ERROR;
    }

    /* libpq would print notices to stderr */
    PQsetNoticeProcessor(conn, ngx_ahava_pg_notice, pool);

    if (PQsetnonblocking(conn, 1) == -1) {
        ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                      "ahava: PQsetnonblocking() failed: %s",
                      PQerrorMessage(conn));
        PQfinish(conn);
        return NGX_ERROR;
    }

    c = ngx_get_connection(PQsocket(conn), pool->log);
    if (c == NULL) {
        PQfinish(conn);
        return NGX_ERROR;
    }

    pc = ngx_calloc(sizeof(ngx_ahava_pg_conn_t), pool->log);
    if (pc == NULL) {
        ngx_ahava_forget_connection(c);
        PQfinish(conn);
        return NGX_ERROR;
    }

    pc->pool = pool;
    pc->conn = conn;
    pc->c = c;
    pc->socket = ngx_ahava_pg_socket_id(PQsocket(conn));
    pc->state = NGX_AHAVA_PG_CONNECTING;

    c->data = pc;
    c->read->handler = ngx_ahava_pg_read_handler;
    c->write->handler = ngx_ahava_pg_write_handler;
    c->read->log = pool->log;
    c->write->log = pool->log;

    ngx_queue_insert_tail(&pool->active, &pc->queue);
    pool->nconns++;
    pool->nopening++;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, pool->log, 0,
                   "ahava pg: connecting, %ui connections", pool->nconns);

    /* PQconnectPoll ignores connect_timeout: our own timer bounds it */
    ngx_add_timer(c->read, amcf->pg_connect_timeout);

    /* libpq's docs: after PQconnectStart, wait for write-ready first */
    ngx_ahava_pg_set_events(pc, 0, 1);

    return NGX_OK;
}


static void
ngx_ahava_pg_connect_poll(ngx_ahava_pg_conn_t *pc)
{
    PostgresPollingStatusType  st;

    for ( ;; ) {
        st = PQconnectPoll(pc->conn);

        /*
         * the next address of the list: a new socket, which may well have
         * the number of the old one (closed, so out of epoll already); the
         * socket's inode tells, the fd number alone cannot
         */
        if (PQsocket(pc->conn) != -1
            && (PQsocket(pc->conn) != pc->c->fd
                || ngx_ahava_pg_socket_id(PQsocket(pc->conn)) != pc->socket))
        {
            pc->socket = ngx_ahava_pg_socket_id(PQsocket(pc->conn));

            if (ngx_ahava_pg_rebind(pc) != NGX_OK) {
                st = PGRES_POLLING_FAILED;
            }
        }

        switch (st) {

        case PGRES_POLLING_READING:
            ngx_ahava_pg_set_events(pc, 1, 0);
            return;

        case PGRES_POLLING_WRITING:
            ngx_ahava_pg_set_events(pc, 0, 1);
            return;

        case PGRES_POLLING_OK:
            break;

        case PGRES_POLLING_ACTIVE:
            /* old libpq: CONNECTION_MADE may need another poll at once */
            continue;

        default:
            ngx_ahava_pg_connect_failed(pc, PQerrorMessage(pc->conn));
            return;
        }

        break;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, pc->pool->log, 0,
                   "ahava pg: connected, preparing statements");

    pc->state = NGX_AHAVA_PG_PREPARING;
    pc->prepared = 0;

    ngx_ahava_pg_prepare_next(pc);
}


static ino_t
ngx_ahava_pg_socket_id(int fd)
{
    struct stat  st;

    return (fstat(fd, &st) == 0) ? st.st_ino : 0;
}


/* libpq moved to a new socket: the nginx side follows it */

static ngx_int_t
ngx_ahava_pg_rebind(ngx_ahava_pg_conn_t *pc)
{
    ngx_msec_t         left;
    ngx_connection_t  *c, *old;

    old = pc->c;
    left = old->read->timer_set ? old->read->timer.key - ngx_current_msec
                                : pc->pool->amcf->pg_connect_timeout;

    /* libpq closed the old fd already */
    ngx_ahava_forget_connection(old);

    c = ngx_get_connection(PQsocket(pc->conn), pc->pool->log);
    if (c == NULL) {
        /* nothing to watch any more: PQfinish() will do the rest */
        pc->c = NULL;
        return NGX_ERROR;
    }

    c->data = pc;
    c->read->handler = ngx_ahava_pg_read_handler;
    c->write->handler = ngx_ahava_pg_write_handler;
    c->read->log = pc->pool->log;
    c->write->log = pc->pool->log;
    pc->c = c;

    ngx_add_timer(c->read, (ngx_msec_int_t) left > 0 ? left : 1);

    return NGX_OK;
}


/* The next declared statement, or the connection is ready to serve */

static void
ngx_ahava_pg_prepare_next(ngx_ahava_pg_conn_t *pc)
{
    ngx_ahava_stmt_t     **stmts, *st;
    ngx_ahava_pg_pool_t   *pool;

    pool = pc->pool;
    stmts = pool->amcf->stmts.elts;

    if (pc->prepared == pool->amcf->stmts.nelts) {
        if (pc->c->read->timer_set) {
            ngx_del_timer(pc->c->read);
        }

        pool->nopening--;
        pool->failed = 0;
        pool->backoff = 0;
        pool->connect_after = 0;

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, pool->log, 0,
                       "ahava pg: ready, %ui statements, %ui connections",
                       pc->prepared, pool->nconns);

        ngx_ahava_pg_release(pc);
        return;
    }

    st = stmts[pc->prepared];

    if (!PQsendPrepare(pc->conn, (char *) st->id, st->sql, (int) st->nparams,
                       NULL)
        || ngx_ahava_pg_flush(pc) != NGX_OK)
    {
        ngx_ahava_pg_connect_failed(pc, PQerrorMessage(pc->conn));
    }
}


/*
 * Opening a connection failed.  Other connections go on serving the
 * waiters; only when none is open nor opening are the waiters answered 503
 * (from a posted event: this may run inside a send).
 */

static void
ngx_ahava_pg_connect_failed(ngx_ahava_pg_conn_t *pc, const char *what)
{
    ngx_ahava_pg_pool_t  *pool;

    pool = pc->pool;

    ngx_ahava_log_limited(&pool->connect_log, NGX_LOG_ERR, pool->log,
                          "ahava: postgresql connect failed: %s", what);

    if (!pool->exiting) {
        ngx_ahava_metrics_count(NGX_AHAVA_M_PG_RECONNECTS, 1);
    }

    ngx_ahava_pg_close(pc);

    if (pool->exiting) {
        return;
    }

    pool->failed = 1;
    pool->backoff = pool->backoff ? ngx_min(pool->backoff * 2,
                                            NGX_AHAVA_PG_RETRY_MAX)
                                  : NGX_AHAVA_PG_RETRY_MIN;
    pool->connect_after = ngx_current_msec + pool->backoff;

    if (!pool->retry.timer_set) {
        ngx_add_timer(&pool->retry, pool->backoff);
    }

    ngx_ahava_pg_check(pool);
}


static ngx_int_t
ngx_ahava_pg_start(ngx_ahava_pg_conn_t *pc, ngx_ahava_pg_query_t *q)
{
    ngx_ahava_stmt_t  *st;

    st = q->stmt;

    if (!PQsendQueryPrepared(pc->conn, (char *) st->id, (int) q->nparams,
                             (const char * const *) q->values, NULL, NULL, 0))
    {
        ngx_log_error(NGX_LOG_ERR, pc->pool->log, 0,
                      "ahava: PQsendQueryPrepared() failed: %s",
                      PQerrorMessage(pc->conn));
        return NGX_ERROR;
    }

    if (ngx_ahava_pg_flush(pc) != NGX_OK) {
        return NGX_ERROR;
    }

    /* from here on its outcome may be unknown to us, not to the server
     * (a statement cut off before its Sync never runs) */
    q->sent = 1;

    pc->query = q;
    pc->failed = 0;
    pc->state = NGX_AHAVA_PG_BUSY;
    q->conn = pc;
    q->running = 1;

    /* statement_timeout ends the query server-side first; this is a guard */
    ngx_add_timer(pc->c->read, pc->pool->amcf->pg_query_timeout + 1000);

    return NGX_OK;
}


/* NGX_OK, or NGX_ERROR: the connection is broken, the caller closes it */

static ngx_int_t
ngx_ahava_pg_flush(ngx_ahava_pg_conn_t *pc)
{
    int  rc;

    rc = PQflush(pc->conn);

    if (rc == -1) {
        ngx_log_error(NGX_LOG_ERR, pc->pool->log, 0,
                      "ahava: PQflush() failed: %s", PQerrorMessage(pc->conn));
        return NGX_ERROR;
    }

    /* write interest only while libpq has unsent data */
    ngx_ahava_pg_set_events(pc, 1, rc == 1);

    return NGX_OK;
}


static void
ngx_ahava_pg_write_handler(ngx_event_t *ev)
{
    ngx_connection_t     *c;
    ngx_ahava_pg_conn_t  *pc;

    c = ev->data;
    pc = c->data;

    switch (pc->state) {

    case NGX_AHAVA_PG_CONNECTING:
        ngx_ahava_pg_connect_poll(pc);
        return;

    case NGX_AHAVA_PG_PREPARING:
        if (ngx_ahava_pg_flush(pc) != NGX_OK) {
            ngx_ahava_pg_connect_failed(pc, "sending failed");
        }

        return;

    case NGX_AHAVA_PG_BUSY:
        if (ngx_ahava_pg_flush(pc) != NGX_OK) {
            ngx_ahava_pg_lost(pc, "sending failed");
        }

        return;

    default: /* NGX_AHAVA_PG_IDLE */
        ngx_ahava_pg_set_events(pc, 1, 0);
        return;
    }
}


static void
ngx_ahava_pg_read_handler(ngx_event_t *ev)
{
    PGresult             *res;
    ngx_connection_t     *c;
    ngx_ahava_pg_conn_t  *pc;

    c = ev->data;
    pc = c->data;

    if (ev->timedout) {
        ev->timedout = 0;

        if (pc->state == NGX_AHAVA_PG_CONNECTING
            || pc->state == NGX_AHAVA_PG_PREPARING)
        {
            ngx_ahava_pg_connect_failed(pc, "timed out");
            return;
        }

        ngx_ahava_pg_lost(pc, "the query timed out");
        return;
    }

    switch (pc->state) {

    case NGX_AHAVA_PG_CONNECTING:
        ngx_ahava_pg_connect_poll(pc);
        return;

    case NGX_AHAVA_PG_PREPARING:
    case NGX_AHAVA_PG_BUSY:
        ngx_ahava_pg_consume(pc);
        return;

    default: /* NGX_AHAVA_PG_IDLE */

        /* input on an idle connection: a NOTICE, a FATAL or EOF */
        if (PQconsumeInput(pc->conn) && PQstatus(pc->conn) == CONNECTION_OK
            && !PQisBusy(pc->conn))
        {
            res = PQgetResult(pc->conn);

            if (res == NULL) {
                return;                     /* a notice, already logged */
            }

            PQclear(res);
        }

        ngx_ahava_pg_lost(pc, "the server closed an idle connection");
        return;
    }
}


static void
ngx_ahava_pg_consume(ngx_ahava_pg_conn_t *pc)
{
    SSL             *ssl;
    PGresult        *res;
    ExecStatusType   st;

    ssl = PQsslInUse(pc->conn) ? PQsslStruct(pc->conn, "OpenSSL") : NULL;

    for ( ;; ) {
        if (!PQconsumeInput(pc->conn)) {
            goto broken;
        }

        while (!PQisBusy(pc->conn)) {

            res = PQgetResult(pc->conn);

            if (res == NULL) {
                ngx_ahava_pg_complete(pc);
                return;
            }

            st = PQresultStatus(res);

            /* one result per command; an error, once seen, is kept */
            if (pc->failed) {
                PQclear(res);
                continue;
            }

            if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
                pc->failed = 1;
            }

            if (pc->result) {
                PQclear(pc->result);
            }

            pc->result = res;
        }

        /* TLS: decrypted bytes may wait in OpenSSL with no socket event */
        if (ssl == NULL || SSL_pending(ssl) <= 0) {
            break;
        }
    }

    if (PQstatus(pc->conn) != CONNECTION_BAD) {
        return;
    }

broken:

    if (pc->state == NGX_AHAVA_PG_PREPARING) {
        ngx_ahava_pg_connect_failed(pc, PQerrorMessage(pc->conn));
        return;
    }

    ngx_ahava_pg_lost(pc, PQerrorMessage(pc->conn));
}


/* The command's results are all in: the connection is clean again */

static void
ngx_ahava_pg_complete(ngx_ahava_pg_conn_t *pc)
{
    char                  *state;
    PGresult              *res;
    ngx_int_t              rc;
    ngx_ahava_stmt_t     **stmts;
    ngx_ahava_pg_query_t  *q;

    res = pc->result;
    pc->result = NULL;

    state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

    if (pc->state == NGX_AHAVA_PG_PREPARING) {
        if (res == NULL || pc->failed) {
            stmts = pc->pool->amcf->stmts.elts;
            ngx_log_error(NGX_LOG_ALERT, pc->pool->log, 0,
                          "ahava: statement \"%V\" could not be prepared "
                          "(%s): %s (are the migrations applied?)",
                          &stmts[pc->prepared]->name, state ? state : "-",
                          res ? PQresultErrorMessage(res) : "no result");
            if (res) {
                PQclear(res);
            }

            pc->failed = 0;
            ngx_ahava_pg_connect_failed(pc, "preparing statements failed");
            return;
        }

        PQclear(res);
        pc->prepared++;
        ngx_ahava_pg_prepare_next(pc);
        return;
    }

    if (pc->c->read->timer_set) {
        ngx_del_timer(pc->c->read);
    }

    q = pc->query;
    pc->query = NULL;
    rc = NGX_OK;

    if (res == NULL) {
        rc = NGX_ERROR;

    } else if (pc->failed) {
        ngx_log_error(NGX_LOG_ERR, q ? q->log : pc->pool->log, 0,
                      "ahava: postgresql statement \"%V\" failed (%s): %s",
                      q ? &q->stmt->name : &(ngx_str_t) ngx_string("-"),
                      state ? state : "-", PQresultErrorMessage(res));

        /* 57014 statement_timeout, 08xxx connection, 57P0x shutdown,
         * 53xxx out of resources */
        if (state && (ngx_strncmp(state, "57", 2) == 0
                      || ngx_strncmp(state, "08", 2) == 0
                      || ngx_strncmp(state, "53", 2) == 0))
        {
            rc = NGX_HTTP_SERVICE_UNAVAILABLE;

        } else {
            rc = NGX_ERROR;
        }

        /* the prepared statements are gone or stale: start afresh */
        if (state && (ngx_strcmp(state, "26000") == 0
                      || ngx_strcmp(state, "0A000") == 0))
        {
            pc->discard = 1;
        }
    }

    /* the next waiter gets the connection before this owner goes on */
    ngx_ahava_pg_release(pc);

    if (q) {
        ngx_ahava_pg_finish(q, res, rc);
    }

    if (res) {
        PQclear(res);
    }
}


/* An idle, healthy connection goes to the next waiter or to the idle list */

static void
ngx_ahava_pg_release(ngx_ahava_pg_conn_t *pc)
{
    ngx_ahava_pg_pool_t   *pool;
    ngx_ahava_pg_query_t  *q;

    pool = pc->pool;

    if (pc->discard || pool->exiting
        || PQstatus(pc->conn) != CONNECTION_OK
        || PQtransactionStatus(pc->conn) != PQTRANS_IDLE)
    {
        ngx_ahava_pg_lost(pc, "not reusable");
        return;
    }

    pc->state = NGX_AHAVA_PG_IDLE;
    ngx_ahava_pg_set_events(pc, 1, 0);

    while ((q = ngx_ahava_pg_next_waiter(pool)) != NULL) {

        if (ngx_ahava_pg_start(pc, q) == NGX_OK) {
            return;
        }

        /* the connection broke: the waiter keeps its place for another */
        ngx_queue_insert_head(&pool->waiters, &q->queue);
        pool->nwaiters++;
        q->waiting = 1;
        ngx_add_timer(&q->wait_timer, pool->amcf->pg_wait_timeout);

        ngx_ahava_pg_lost(pc, "sending failed");
        return;
    }

    ngx_queue_remove(&pc->queue);
    ngx_queue_insert_head(&pool->idle, &pc->queue);
}


/* Closes the connection; an attached query is the caller's to finish */

static void
ngx_ahava_pg_close(ngx_ahava_pg_conn_t *pc)
{
    ngx_ahava_pg_pool_t  *pool;

    pool = pc->pool;

    ngx_queue_remove(&pc->queue);
    pool->nconns--;

    if (pc->state == NGX_AHAVA_PG_CONNECTING
        || pc->state == NGX_AHAVA_PG_PREPARING)
    {
        pool->nopening--;
    }

    /* PQfinish() closes the socket, not nginx */
    if (pc->c) {
        ngx_ahava_forget_connection(pc->c);
    }

    if (pc->result) {
        PQclear(pc->result);
    }

    PQfinish(pc->conn);
    ngx_free(pc);
}


/*
 * A connection in use broke (or its query timed out): its query, if its
 * owner still waits, is answered 503; the waiters go to other connections
 * or a new one.
 */

static void
ngx_ahava_pg_lost(ngx_ahava_pg_conn_t *pc, const char *why)
{
    ngx_ahava_pg_pool_t   *pool;
    ngx_ahava_pg_query_t  *q;

    pool = pc->pool;
    q = pc->query;

    if (!pool->exiting) {
        ngx_ahava_metrics_count(NGX_AHAVA_M_PG_RECONNECTS, 1);
        ngx_ahava_log_limited(&pool->connect_log, NGX_LOG_WARN, pool->log,
                              "ahava: postgresql connection closed: %s",
                              why);
    }

    pc->query = NULL;
    ngx_ahava_pg_close(pc);

    if (pool->exiting) {
        return;
    }

    /* a server that went away: find out with a fresh connection */
    if (pool->nconns == 0 && !pool->retry.timer_set) {
        ngx_add_timer(&pool->retry, NGX_AHAVA_PG_RETRY_MIN);
    }

    if (q) {
        ngx_ahava_pg_finish(q, NULL, NGX_HTTP_SERVICE_UNAVAILABLE);
    }

    ngx_ahava_pg_grow(pool);
}


static void
ngx_ahava_pg_finish(ngx_ahava_pg_query_t *q, PGresult *res, ngx_int_t rc)
{
    q->conn = NULL;
    q->running = 0;
    q->rc = rc;

    if (rc == NGX_HTTP_SERVICE_UNAVAILABLE) {
        ngx_ahava_metrics_count(NGX_AHAVA_M_PG_REJECTED, 1);
    }

    q->result = res;
    q->sqlstate = (res && rc != NGX_OK)
                  ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

    /* the result is the pool's, cleared after this; q may be freed by
     * its owner inside done: nothing of it is touched afterwards */
    q->done(q);
}


static void
ngx_ahava_pg_set_events(ngx_ahava_pg_conn_t *pc, ngx_uint_t read,
    ngx_uint_t write)
{
    ngx_connection_t  *c;

    c = pc->c;

    /* level-triggered and the same flags on every add and del of this fd */

    if (read && !c->read->active) {
        ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT);

    } else if (!read && c->read->active) {
        ngx_del_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT);
    }

    if (write && !c->write->active) {
        ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT);

    } else if (!write && c->write->active) {
        ngx_del_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT);
    }
}


/* One more connection per waiter with none coming, within the bounds */

static void
ngx_ahava_pg_grow(ngx_ahava_pg_pool_t *pool)
{
    while (pool->nwaiters > pool->nopening
           && pool->nconns < pool->amcf->pg_pool_size
           && !pool->exiting
           && (ngx_msec_int_t) (ngx_current_msec - pool->connect_after) >= 0)
    {
        if (ngx_ahava_pg_connect(pool) != NGX_OK) {
            pool->failed = 1;
            pool->backoff = pool->backoff ? ngx_min(pool->backoff * 2,
                                                    NGX_AHAVA_PG_RETRY_MAX)
                                          : NGX_AHAVA_PG_RETRY_MIN;
            pool->connect_after = ngx_current_msec + pool->backoff;

            if (!pool->retry.timer_set) {
                ngx_add_timer(&pool->retry, pool->backoff);
            }

            ngx_ahava_pg_check(pool);
            return;
        }
    }

    /* waiting for the back-off to pass: the retry timer grows then */
    if (pool->nwaiters > pool->nopening
        && pool->nconns < pool->amcf->pg_pool_size
        && !pool->retry.timer_set && !pool->exiting)
    {
        ngx_add_timer(&pool->retry,
                      ngx_max(pool->connect_after - ngx_current_msec, 1));
    }
}


/* No connection open nor opening: nobody can serve the waiters */

static void
ngx_ahava_pg_check(ngx_ahava_pg_pool_t *pool)
{
    if (pool->nconns == 0 && pool->nwaiters && !pool->fail.posted) {
        ngx_post_event(&pool->fail, &ngx_posted_events);
    }
}


static void
ngx_ahava_pg_fail_handler(ngx_event_t *ev)
{
    ngx_ahava_pg_pool_t   *pool;
    ngx_ahava_pg_query_t  *q;

    pool = ev->data;

    if (pool->nconns) {
        return;                     /* one came meanwhile */
    }

    while ((q = ngx_ahava_pg_next_waiter(pool)) != NULL) {
        ngx_ahava_pg_finish(q, NULL, NGX_HTTP_SERVICE_UNAVAILABLE);
    }
}


static void
ngx_ahava_pg_retry_handler(ngx_event_t *ev)
{
    ngx_ahava_pg_pool_t  *pool;

    pool = ev->data;

    if (pool->exiting || ngx_exiting || ngx_terminate) {
        return;
    }

    if (pool->nwaiters) {
        ngx_ahava_pg_grow(pool);
        return;
    }

    /* nothing open: keep trying, so health and recovery are known */
    if (pool->nconns == 0) {
        if (ngx_ahava_pg_connect(pool) != NGX_OK) {
            pool->failed = 1;
            pool->backoff = pool->backoff ? ngx_min(pool->backoff * 2,
                                                    NGX_AHAVA_PG_RETRY_MAX)
                                          : NGX_AHAVA_PG_RETRY_MIN;
            pool->connect_after = ngx_current_msec + pool->backoff;
            ngx_add_timer(&pool->retry, pool->backoff);
        }
    }
}


static void
ngx_ahava_pg_wait_timeout_handler(ngx_event_t *ev)
{
    ngx_ahava_pg_query_t  *q;

    q = ev->data;

    ngx_ahava_log_limited(&q->pool->refuse_log, NGX_LOG_WARN, ev->log,
                          "ahava: waited too long for a postgresql "
                          "connection, answering 503");

    ngx_ahava_pg_unwait(q);
    ngx_ahava_pg_finish(q, NULL, NGX_HTTP_SERVICE_UNAVAILABLE);
}


static ngx_ahava_pg_query_t *
ngx_ahava_pg_next_waiter(ngx_ahava_pg_pool_t *pool)
{
    ngx_ahava_pg_query_t  *q;

    if (ngx_queue_empty(&pool->waiters)) {
        return NULL;
    }

    q = ngx_queue_data(ngx_queue_head(&pool->waiters), ngx_ahava_pg_query_t,
                       queue);
    ngx_ahava_pg_unwait(q);

    return q;
}


static void
ngx_ahava_pg_unwait(ngx_ahava_pg_query_t *q)
{
    ngx_queue_remove(&q->queue);
    q->pool->nwaiters--;
    q->waiting = 0;

    if (q->wait_timer.timer_set) {
        ngx_del_timer(&q->wait_timer);
    }
}


static void
ngx_ahava_pg_notice(void *arg, const char *message)
{
    ngx_ahava_pg_pool_t  *pool = arg;

    ngx_log_error(NGX_LOG_NOTICE, pool->log, 0, "ahava: postgresql: %s",
                  message);
}
