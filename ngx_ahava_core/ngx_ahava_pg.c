
/*
 * The per-worker asynchronous PostgreSQL pool.
 *
 * libpq's non-blocking API driven by nginx events: each connection's socket
 * is wrapped in an ngx_connection_t registered level-triggered (libpq reads
 * at most one buffer per PQconsumeInput, so an edge-triggered fd could leave
 * the tail of a result in the kernel with no new edge coming).
 *
 * The pool is bounded (pg_pool_size connections, pg_wait_queue waiters with
 * a timer each); beyond that a request is answered 503 at once.  A broken
 * connection is closed; when connecting fails the pool is "down" and answers
 * 503 at once while a cancelable timer retries with back-off, so a restarted
 * PostgreSQL heals without touching nginx.
 */


#include "ngx_ahava_core.h"


#define NGX_AHAVA_PG_RETRY_MIN   250
#define NGX_AHAVA_PG_RETRY_MAX   10000


typedef enum {
    NGX_AHAVA_PG_CONNECTING = 0,
    NGX_AHAVA_PG_IDLE,
    NGX_AHAVA_PG_BUSY
} ngx_ahava_pg_state_e;


typedef struct {
    ngx_queue_t                queue;           /* idle or active list */
    ngx_ahava_pg_pool_t       *pool;
    PGconn                    *conn;
    ngx_connection_t          *c;
    ngx_ahava_pg_query_t      *query;           /* NULL while draining */
    PGresult                  *result;          /* kept for the handler */
    ngx_ahava_pg_state_e       state;
    unsigned                   failed:1;        /* a result said error */
} ngx_ahava_pg_conn_t;


struct ngx_ahava_pg_pool_s {
    ngx_ahava_main_conf_t     *amcf;
    ngx_log_t                 *log;
    ngx_queue_t                idle;
    ngx_queue_t                active;          /* connecting or busy */
    ngx_queue_t                waiters;
    ngx_uint_t                 nconns;
    ngx_uint_t                 nwaiters;
    ngx_event_t                retry;
    ngx_msec_t                 backoff;
    unsigned                   down:1;
    unsigned                   exiting:1;
};


static ngx_ahava_pg_conn_t *ngx_ahava_pg_connect(ngx_ahava_pg_pool_t *pool);
static void ngx_ahava_pg_connect_poll(ngx_ahava_pg_conn_t *pc);
static ngx_int_t ngx_ahava_pg_start(ngx_ahava_pg_conn_t *pc,
    ngx_ahava_pg_query_t *q);
static void ngx_ahava_pg_flush(ngx_ahava_pg_conn_t *pc);
static void ngx_ahava_pg_read_handler(ngx_event_t *ev);
static void ngx_ahava_pg_write_handler(ngx_event_t *ev);
static void ngx_ahava_pg_consume(ngx_ahava_pg_conn_t *pc);
static void ngx_ahava_pg_release(ngx_ahava_pg_conn_t *pc);
static void ngx_ahava_pg_close(ngx_ahava_pg_conn_t *pc, ngx_int_t rc);
static void ngx_ahava_pg_finish(ngx_ahava_pg_query_t *q, PGresult *res,
    ngx_int_t rc);
static void ngx_ahava_pg_set_events(ngx_ahava_pg_conn_t *pc, ngx_uint_t read,
    ngx_uint_t write);
static void ngx_ahava_pg_mark_down(ngx_ahava_pg_pool_t *pool);
static void ngx_ahava_pg_retry_handler(ngx_event_t *ev);
static void ngx_ahava_pg_wait_timeout_handler(ngx_event_t *ev);
static void ngx_ahava_pg_cleanup(void *data);
static void ngx_ahava_pg_serve_waiter(ngx_ahava_pg_pool_t *pool);
static void ngx_ahava_pg_notice(void *arg, const char *message);
static void ngx_ahava_pg_fail_waiters(ngx_ahava_pg_pool_t *pool);
static ngx_ahava_pg_query_t *ngx_ahava_pg_next_waiter(
    ngx_ahava_pg_pool_t *pool);
static void ngx_ahava_pg_unwait(ngx_ahava_pg_query_t *q);
static ngx_int_t ngx_ahava_pg_dispatch(ngx_ahava_pg_pool_t *pool,
    ngx_ahava_pg_query_t *q, ngx_log_t *log);


ngx_ahava_pg_pool_t *
ngx_ahava_pg_pool_create(ngx_cycle_t *cycle, ngx_ahava_main_conf_t *amcf)
{
    ngx_ahava_pg_pool_t  *pool;
    ngx_ahava_pg_conn_t  *pc;

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

    /* one warm connection: the first request need not wait for a connect */
    pc = ngx_ahava_pg_connect(pool);
    if (pc == NULL) {
        ngx_ahava_pg_mark_down(pool);
    }

    return pool;
}


void
ngx_ahava_pg_pool_destroy(ngx_ahava_pg_pool_t *pool)
{
    ngx_queue_t          *q;
    ngx_ahava_pg_conn_t  *pc;

    pool->exiting = 1;

    if (pool->retry.timer_set) {
        ngx_del_timer(&pool->retry);
    }

    ngx_ahava_pg_fail_waiters(pool);

    while (!ngx_queue_empty(&pool->idle)) {
        q = ngx_queue_head(&pool->idle);
        pc = ngx_queue_data(q, ngx_ahava_pg_conn_t, queue);
        ngx_ahava_pg_close(pc, NGX_HTTP_SERVICE_UNAVAILABLE);
    }

    while (!ngx_queue_empty(&pool->active)) {
        q = ngx_queue_head(&pool->active);
        pc = ngx_queue_data(q, ngx_ahava_pg_conn_t, queue);
        ngx_ahava_pg_close(pc, NGX_HTTP_SERVICE_UNAVAILABLE);
    }
}


ngx_int_t
ngx_ahava_pg_healthy(ngx_ahava_pg_pool_t *pool)
{
    return (pool != NULL && !pool->down) ? NGX_OK : NGX_ERROR;
}


ngx_ahava_pg_query_t *
ngx_ahava_pg_query(ngx_http_request_t *r, const char *sql,
    ngx_ahava_pg_handler_pt handler)
{
    ngx_ahava_pg_query_t  *q;

    q = ngx_pcalloc(r->pool, sizeof(ngx_ahava_pg_query_t));
    if (q == NULL) {
        return NULL;
    }

    if (sql) {
        q->sql.data = (u_char *) sql;
        q->sql.len = ngx_strlen(sql);
    }

    q->handler = handler;

    return q;
}


/*
 * Starts q for r.  NGX_OK: the handler will run later, from an event, never
 * from inside this call.  Otherwise an HTTP status to answer with now.
 */

ngx_int_t
ngx_ahava_pg_send(ngx_http_request_t *r, ngx_ahava_pg_query_t *q)
{
    ngx_ahava_pg_pool_t     *pool;
    ngx_http_cleanup_t      *cln;
    ngx_ahava_main_conf_t   *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_ahava_core_module);
    pool = amcf->pg;

    if (pool == NULL || pool->down) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "ahava: postgresql unavailable, answering 503");
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_ahava_pg_cleanup;
    cln->data = q;

    q->request = r;

    /* the caller goes asynchronous: notice a client that goes away */
    r->read_event_handler = ngx_http_test_reading;

    return ngx_ahava_pg_dispatch(pool, q, r->connection->log);
}


/*
 * A query no request waits for (an audit entry, say): it lives in its own
 * memory pool, destroyed when the query ends.  NGX_OK, or NGX_DECLINED when
 * the pool is down or busy — the caller logs what is lost.
 */

ngx_int_t
ngx_ahava_pg_background(ngx_ahava_pg_pool_t *pool, ngx_ahava_pg_query_t *q)
{
    if (pool == NULL || pool->down || q->own_pool == NULL) {
        return NGX_DECLINED;
    }

    /*
     * never in the wait queue: a flood of, say, bad tokens must not take
     * the places of API requests
     */
    if (ngx_queue_empty(&pool->idle)
        && pool->nconns >= pool->amcf->pg_pool_size)
    {
        return NGX_DECLINED;
    }

    q->request = NULL;

    return (ngx_ahava_pg_dispatch(pool, q, pool->log) == NGX_OK)
           ? NGX_OK : NGX_DECLINED;
}


static ngx_int_t
ngx_ahava_pg_dispatch(ngx_ahava_pg_pool_t *pool, ngx_ahava_pg_query_t *q,
    ngx_log_t *log)
{
    ngx_queue_t           *qu;
    ngx_ahava_pg_conn_t   *pc;

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

        ngx_ahava_pg_close(pc, NGX_HTTP_SERVICE_UNAVAILABLE);
    }

    if (pool->nconns < pool->amcf->pg_pool_size) {
        pc = ngx_ahava_pg_connect(pool);
        if (pc == NULL) {
            q->done = 1;
            ngx_ahava_pg_mark_down(pool);
            return NGX_HTTP_SERVICE_UNAVAILABLE;
        }

        pc->query = q;
        q->conn = pc;
        return NGX_OK;
    }

    if (pool->nwaiters >= pool->amcf->pg_wait_queue) {
        q->done = 1;
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "ahava: postgresql pool and wait queue are full, "
                      "answering 503");
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    ngx_queue_insert_tail(&pool->waiters, &q->queue);
    pool->nwaiters++;
    q->waiting = 1;

    q->wait_timer.handler = ngx_ahava_pg_wait_timeout_handler;
    q->wait_timer.data = q;
    q->wait_timer.log = log;
    ngx_add_timer(&q->wait_timer, pool->amcf->pg_wait_timeout);

    return NGX_OK;
}


static ngx_ahava_pg_conn_t *
ngx_ahava_pg_connect(ngx_ahava_pg_pool_t *pool)
{
    int                     fd;
    PGconn                 *conn;
    ngx_event_t            *rev, *wev;
    ngx_connection_t       *c;
    ngx_ahava_pg_conn_t    *pc;
    ngx_ahava_main_conf_t  *amcf;

    amcf = pool->amcf;

    conn = PQconnectStartParams((const char * const *) amcf->pg_keywords,
                                (const char * const *) amcf->pg_values, 0);
    if (conn == NULL) {
        ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                      "ahava: PQconnectStartParams() failed: out of memory");
        return NULL;
    }

    if (PQstatus(conn) == CONNECTION_BAD) {
        ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                      "ahava: postgresql connect failed: %s",
                      PQerrorMessage(conn));
        PQfinish(conn);
        return NULL;
    }

    /* libpq would print notices to stderr */
    PQsetNoticeProcessor(conn, ngx_ahava_pg_notice, pool);

    if (PQsetnonblocking(conn, 1) == -1) {
        ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                      "ahava: PQsetnonblocking() failed: %s",
                      PQerrorMessage(conn));
        PQfinish(conn);
        return NULL;
    }

    fd = PQsocket(conn);

    c = ngx_get_connection(fd, pool->log);
    if (c == NULL) {
        PQfinish(conn);
        return NULL;
    }

    pc = ngx_calloc(sizeof(ngx_ahava_pg_conn_t), pool->log);
    if (pc == NULL) {
        ngx_free_connection(c);
        PQfinish(conn);
        return NULL;
    }

    pc->pool = pool;
    pc->conn = conn;
    pc->c = c;
    pc->state = NGX_AHAVA_PG_CONNECTING;

    c->data = pc;
    rev = c->read;
    wev = c->write;
    rev->handler = ngx_ahava_pg_read_handler;
    wev->handler = ngx_ahava_pg_write_handler;
    rev->log = pool->log;
    wev->log = pool->log;

    ngx_queue_insert_tail(&pool->active, &pc->queue);
    pool->nconns++;

    /* PQconnectPoll ignores connect_timeout: our own timer bounds it */
    ngx_add_timer(rev, amcf->pg_connect_timeout);

    /* libpq's docs: after PQconnectStart, wait for write-ready first */
    ngx_ahava_pg_set_events(pc, 0, 1);

    return pc;
}


static void
ngx_ahava_pg_connect_poll(ngx_ahava_pg_conn_t *pc)
{
    ngx_ahava_pg_pool_t        *pool;
    ngx_ahava_pg_query_t       *q;
    PostgresPollingStatusType   st;

    for ( ;; ) {
        st = PQconnectPoll(pc->conn);

        if (PQsocket(pc->conn) != pc->c->fd) {
            /* fallback modes would open a new socket; we disable them */
            ngx_log_error(NGX_LOG_ERR, pc->pool->log, 0,
                          "ahava: postgresql connection changed its socket");
            st = PGRES_POLLING_FAILED;
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
            ngx_log_error(NGX_LOG_ERR, pc->pool->log, 0,
                          "ahava: postgresql connect failed: %s",
                          PQerrorMessage(pc->conn));
            pool = pc->pool;
            ngx_ahava_pg_mark_down(pool);
            ngx_ahava_pg_close(pc, NGX_HTTP_SERVICE_UNAVAILABLE);
            return;
        }

        break;
    }

    if (pc->c->read->timer_set) {
        ngx_del_timer(pc->c->read);
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, pc->pool->log, 0,
                   "ahava pg: connected, %ui connections", pc->pool->nconns);

    pc->pool->down = 0;
    pc->pool->backoff = 0;
    pc->state = NGX_AHAVA_PG_IDLE;

    q = pc->query;

    if (q == NULL) {
        ngx_ahava_pg_release(pc);
        return;
    }

    if (ngx_ahava_pg_start(pc, q) != NGX_OK) {
        ngx_ahava_pg_close(pc, NGX_HTTP_SERVICE_UNAVAILABLE);
        ngx_ahava_pg_finish(q, NULL, NGX_HTTP_SERVICE_UNAVAILABLE);
    }
}


static ngx_int_t
ngx_ahava_pg_start(ngx_ahava_pg_conn_t *pc, ngx_ahava_pg_query_t *q)
{
    ngx_ahava_main_conf_t  *amcf;

    amcf = pc->pool->amcf;

    pc->query = q;
    pc->failed = 0;
    q->conn = pc;

    if (!PQsendQueryParams(pc->conn, (const char *) q->sql.data,
                           (int) q->nparams, NULL,
                           (const char * const *) q->values, NULL, NULL, 0))
    {
        ngx_log_error(NGX_LOG_ERR, pc->pool->log, 0,
                      "ahava: PQsendQueryParams() failed: %s",
                      PQerrorMessage(pc->conn));
        pc->query = NULL;
        q->conn = NULL;
        return NGX_ERROR;
    }

    pc->state = NGX_AHAVA_PG_BUSY;

    /* statement_timeout ends the query server-side first; this is a guard */
    ngx_add_timer(pc->c->read, amcf->pg_query_timeout + 1000);

    ngx_ahava_pg_flush(pc);

    return NGX_OK;
}


static void
ngx_ahava_pg_flush(ngx_ahava_pg_conn_t *pc)
{
    int  rc;

    rc = PQflush(pc->conn);

    if (rc == -1) {
        ngx_log_error(NGX_LOG_ERR, pc->pool->log, 0,
                      "ahava: PQflush() failed: %s", PQerrorMessage(pc->conn));
        ngx_ahava_pg_close(pc, NGX_HTTP_SERVICE_UNAVAILABLE);
        return;
    }

    /* write interest only while libpq has unsent data */
    ngx_ahava_pg_set_events(pc, 1, rc == 1);
}


static void
ngx_ahava_pg_write_handler(ngx_event_t *ev)
{
    ngx_connection_t     *c;
    ngx_ahava_pg_conn_t  *pc;

    c = ev->data;
    pc = c->data;

    if (pc->state == NGX_AHAVA_PG_CONNECTING) {
        if (ev->timedout) {
            goto timeout;
        }

        ngx_ahava_pg_connect_poll(pc);
        return;
    }

    if (pc->state == NGX_AHAVA_PG_BUSY) {
        ngx_ahava_pg_flush(pc);
        return;
    }

    ngx_ahava_pg_set_events(pc, 1, 0);
    return;

timeout:

    ngx_log_error(NGX_LOG_ERR, pc->pool->log, NGX_ETIMEDOUT,
                  "ahava: postgresql connect timed out");
    ngx_ahava_pg_close(pc, NGX_HTTP_SERVICE_UNAVAILABLE);
}


static void
ngx_ahava_pg_read_handler(ngx_event_t *ev)
{
    ngx_connection_t     *c;
    ngx_ahava_pg_conn_t  *pc;
    ngx_ahava_pg_pool_t  *pool;

    c = ev->data;
    pc = c->data;
    pool = pc->pool;

    if (ev->timedout) {
        ev->timedout = 0;

        if (pc->state == NGX_AHAVA_PG_CONNECTING) {
            ngx_log_error(NGX_LOG_ERR, pool->log, NGX_ETIMEDOUT,
                          "ahava: postgresql connect timed out");
            ngx_ahava_pg_mark_down(pool);
            ngx_ahava_pg_close(pc, NGX_HTTP_SERVICE_UNAVAILABLE);
            return;
        }

        ngx_log_error(NGX_LOG_ERR, pool->log, NGX_ETIMEDOUT,
                      "ahava: postgresql query timed out");
        ngx_ahava_pg_close(pc, NGX_HTTP_SERVICE_UNAVAILABLE);
        return;
    }

    switch (pc->state) {

    case NGX_AHAVA_PG_CONNECTING:
        ngx_ahava_pg_connect_poll(pc);
        return;

    case NGX_AHAVA_PG_BUSY:
        ngx_ahava_pg_consume(pc);
        return;

    default: /* NGX_AHAVA_PG_IDLE */

        /* input on an idle connection: NOTICE, FATAL or EOF */
        if (!PQconsumeInput(pc->conn) || PQstatus(pc->conn) == CONNECTION_BAD
            || PQisBusy(pc->conn) || PQgetResult(pc->conn) != NULL)
        {
            ngx_log_error(NGX_LOG_WARN, pool->log, 0,
                          "ahava: idle postgresql connection closed: %s",
                          PQerrorMessage(pc->conn));
            ngx_ahava_pg_close(pc, NGX_HTTP_SERVICE_UNAVAILABLE);

            /* the server went away: confirm with a fresh connection */
            if (!pool->exiting && !pool->retry.timer_set) {
                ngx_add_timer(&pool->retry, NGX_AHAVA_PG_RETRY_MIN);
            }
        }

        return;
    }
}


static void
ngx_ahava_pg_consume(ngx_ahava_pg_conn_t *pc)
{
    char                  *state;
    PGresult              *res;
    ngx_int_t              rc;
    ExecStatusType         st;
    ngx_ahava_pg_query_t  *q;

    if (!PQconsumeInput(pc->conn)) {
        ngx_log_error(NGX_LOG_ERR, pc->pool->log, 0,
                      "ahava: postgresql connection lost: %s",
                      PQerrorMessage(pc->conn));
        ngx_ahava_pg_close(pc, NGX_HTTP_SERVICE_UNAVAILABLE);
        return;
    }

    while (!PQisBusy(pc->conn)) {

        res = PQgetResult(pc->conn);

        if (res == NULL) {
            goto done;
        }

        st = PQresultStatus(res);

        if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
            state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            ngx_log_error(NGX_LOG_ERR, pc->pool->log, 0,
                          "ahava: postgresql query failed (%s): %s",
                          state ? state : "-", PQresultErrorMessage(res));
            pc->failed = 1;
        }

        /* keep the last result of the statement for the handler */
        if (pc->result) {
            PQclear(pc->result);
        }

        pc->result = res;
    }

    /* PQisBusy: the rest of the result has not arrived yet */

    if (PQstatus(pc->conn) == CONNECTION_BAD) {
        ngx_ahava_pg_close(pc, NGX_HTTP_SERVICE_UNAVAILABLE);
    }

    return;

done:

    if (pc->c->read->timer_set) {
        ngx_del_timer(pc->c->read);
    }

    q = pc->query;
    res = pc->result;
    pc->query = NULL;
    pc->result = NULL;

    rc = NGX_OK;

    if (res == NULL) {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;

    } else if (pc->failed) {
        state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

        /* 57014 statement_timeout, 08xxx connection, 57P0x shutdown */
        if (state && (ngx_strncmp(state, "57", 2) == 0
                      || ngx_strncmp(state, "08", 2) == 0
                      || ngx_strncmp(state, "53", 2) == 0))
        {
            rc = NGX_HTTP_SERVICE_UNAVAILABLE;

        } else {
            rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    /* the connection is clean again: serve the next one before the handler */
    ngx_ahava_pg_release(pc);

    if (q) {
        if (res && rc != NGX_OK) {
            q->sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        }

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

    if (PQstatus(pc->conn) != CONNECTION_OK
        || PQtransactionStatus(pc->conn) != PQTRANS_IDLE
        || pool->exiting)
    {
        ngx_ahava_pg_close(pc, NGX_HTTP_SERVICE_UNAVAILABLE);
        return;
    }

    pc->state = NGX_AHAVA_PG_IDLE;
    ngx_ahava_pg_set_events(pc, 1, 0);

    q = ngx_ahava_pg_next_waiter(pool);

    if (q) {
        if (ngx_ahava_pg_start(pc, q) == NGX_OK) {
            return;
        }

        pc->query = NULL;
        q->conn = NULL;
        ngx_ahava_pg_close(pc, NGX_HTTP_SERVICE_UNAVAILABLE);
        ngx_ahava_pg_finish(q, NULL, NGX_HTTP_SERVICE_UNAVAILABLE);
        return;
    }

    ngx_queue_remove(&pc->queue);
    ngx_queue_insert_head(&pool->idle, &pc->queue);
}


static void
ngx_ahava_pg_close(ngx_ahava_pg_conn_t *pc, ngx_int_t rc)
{
    ngx_connection_t      *c;
    ngx_ahava_pg_pool_t   *pool;
    ngx_ahava_pg_query_t  *q;

    pool = pc->pool;
    c = pc->c;
    q = pc->query;

    ngx_queue_remove(&pc->queue);
    pool->nconns--;

    /* PQfinish() closes the socket, not nginx */
    ngx_ahava_forget_connection(c);

    if (pc->result) {
        PQclear(pc->result);
    }

    PQfinish(pc->conn);
    ngx_free(pc);

    if (q) {
        q->conn = NULL;
        ngx_ahava_pg_finish(q, NULL, rc);
    }

    /* waiters must not starve when a connection dies under them */
    if (!pool->exiting && !pool->down) {
        ngx_ahava_pg_serve_waiter(pool);
    }
}


static void
ngx_ahava_pg_serve_waiter(ngx_ahava_pg_pool_t *pool)
{
    ngx_ahava_pg_conn_t   *pc;
    ngx_ahava_pg_query_t  *q;

    if (ngx_queue_empty(&pool->waiters)
        || pool->nconns >= pool->amcf->pg_pool_size)
    {
        return;
    }

    q = ngx_ahava_pg_next_waiter(pool);

    pc = ngx_ahava_pg_connect(pool);
    if (pc == NULL) {
        ngx_ahava_pg_finish(q, NULL, NGX_HTTP_SERVICE_UNAVAILABLE);
        ngx_ahava_pg_mark_down(pool);
        return;
    }

    pc->query = q;
    q->conn = pc;
}


/*
 * Runs the query's handler (if its request is still there) and finalizes
 * the request unless the handler went asynchronous again.
 */

static void
ngx_ahava_pg_finish(ngx_ahava_pg_query_t *q, PGresult *res, ngx_int_t rc)
{
    ngx_int_t            hrc;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    if (q->done) {
        return;
    }

    q->done = 1;
    q->conn = NULL;
    q->rc = rc;
    q->result = res;

    r = q->request;

    if (r == NULL) {
        /* a background query: its failure was logged where it happened */
        ngx_destroy_pool(q->own_pool);
        return;
    }

    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    hrc = q->handler(r, q);

    /* the result belongs to the connection; never keep it past here */
    q->result = NULL;

    if (hrc != NGX_AGAIN) {
        ngx_http_finalize_request(r, hrc);
    }

    ngx_http_run_posted_requests(c);
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


static void
ngx_ahava_pg_mark_down(ngx_ahava_pg_pool_t *pool)
{
    if (pool->exiting) {
        return;
    }

    if (!pool->down) {
        ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                      "ahava: postgresql is down, answering 503 until a "
                      "connection succeeds");
    }

    pool->down = 1;

    ngx_ahava_pg_fail_waiters(pool);

    if (pool->backoff == 0) {
        pool->backoff = NGX_AHAVA_PG_RETRY_MIN;

    } else {
        pool->backoff = ngx_min(pool->backoff * 2, NGX_AHAVA_PG_RETRY_MAX);
    }

    if (!pool->retry.timer_set) {
        ngx_add_timer(&pool->retry, pool->backoff);
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

    /* a connection in progress decides for itself */
    if (pool->nconns >= pool->amcf->pg_pool_size) {
        return;
    }

    if (ngx_ahava_pg_connect(pool) == NULL) {
        ngx_ahava_pg_mark_down(pool);
    }
}


static void
ngx_ahava_pg_wait_timeout_handler(ngx_event_t *ev)
{
    ngx_ahava_pg_query_t  *q;

    q = ev->data;

    ngx_log_error(NGX_LOG_WARN, ev->log, 0,
                  "ahava: waited too long for a postgresql connection");

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
ngx_ahava_pg_fail_waiters(ngx_ahava_pg_pool_t *pool)
{
    ngx_ahava_pg_query_t  *q;

    while ((q = ngx_ahava_pg_next_waiter(pool)) != NULL) {

        if (pool->exiting) {
            q->done = 1;
            continue;
        }

        ngx_ahava_pg_finish(q, NULL, NGX_HTTP_SERVICE_UNAVAILABLE);
    }
}


/*
 * The request is going away (client abort, timeout, normal end).  A waiter
 * leaves the queue; a running query is detached so its connection drains
 * the result and returns to the pool (statement_timeout bounds how long).
 */

static void
ngx_ahava_pg_cleanup(void *data)
{
    ngx_ahava_pg_query_t  *q = data;

    ngx_ahava_pg_conn_t  *pc;

    if (q->done) {
        return;
    }

    q->done = 1;

    if (q->waiting) {
        ngx_ahava_pg_unwait(q);
        return;
    }

    pc = q->conn;

    if (pc) {
        pc->query = NULL;
        q->conn = NULL;
    }
}


static void
ngx_ahava_pg_notice(void *arg, const char *message)
{
    ngx_ahava_pg_pool_t  *pool = arg;

    ngx_log_error(NGX_LOG_NOTICE, pool->log, 0, "ahava: postgresql: %s",
                  message);
}


/* Shared answers to a failed query */

ngx_int_t
ngx_ahava_pg_result_error(ngx_http_request_t *r, ngx_ahava_pg_query_t *q)
{
    if (q->rc == NGX_HTTP_SERVICE_UNAVAILABLE) {
        return ngx_ahava_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                    "SERVICE_UNAVAILABLE",
                                    "Database unavailable, try again later",
                                    NULL);
    }

    return ngx_ahava_send_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR, "INTERNAL",
                                "Internal server error", NULL);
}


ngx_int_t
ngx_ahava_pg_str(ngx_http_request_t *r, PGresult *res, int row, int col,
    ngx_str_t *out)
{
    if (PQgetisnull(res, row, col)) {
        ngx_str_null(out);
        return NGX_DECLINED;
    }

    out->len = PQgetlength(res, row, col);
    out->data = ngx_pnalloc(r->pool, out->len + 1);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(out->data, PQgetvalue(res, row, col), out->len);
    out->data[out->len] = '\0';

    return NGX_OK;
}


/* ngx_ahava_pg_send() for a step: NGX_AGAIN, or the error already answered */

ngx_int_t
ngx_ahava_pg_run(ngx_http_request_t *r, ngx_ahava_pg_query_t *q)
{
    ngx_int_t  rc;

    rc = ngx_ahava_pg_send(r, q);

    if (rc == NGX_OK) {
        return NGX_AGAIN;
    }

    q->rc = rc;

    return ngx_ahava_pg_result_error(r, q);
}


/*
 * The common first look at a mutation's or a scoped read's result: one row
 * whose first column counts what the caller may see.  NGX_OK: go on.
 * NGX_DONE: answered already (failure, or 404 with not_found), *rc holds
 * what the handler returns.
 */

ngx_int_t
ngx_ahava_pg_visible(ngx_http_request_t *r, ngx_ahava_pg_query_t *q,
    const char *not_found, ngx_int_t *rc)
{
    if (q->rc != NGX_OK) {
        *rc = ngx_ahava_pg_result_error(r, q);
        return NGX_DONE;
    }

    if (PQntuples(q->result) != 1) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ahava: %d rows where one was expected",
                      PQntuples(q->result));
        *rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        return NGX_DONE;
    }

    if (PQgetvalue(q->result, 0, 0)[0] == '0') {
        *rc = ngx_ahava_send_error(r, NGX_HTTP_NOT_FOUND, "NOT_FOUND",
                                   not_found, NULL);
        return NGX_DONE;
    }

    return NGX_OK;
}
