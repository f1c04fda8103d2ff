
/*
 * Prometheus metrics (issue 13): every worker counts into one shared
 * memory zone, "ahava_metrics", and any worker answers a scrape of an
 * "ahava_metrics" location with the sum.
 *
 * Counters are atomics in the zone: they outlive a worker that dies and a
 * reload (a zone of the same name and size is kept).  What a worker has
 * (its PostgreSQL connections, its Redis client, its WebSocket sockets) is
 * a gauge in a slot the worker claims by its pid when it starts and gives
 * back when it exits; a scrape adds up the slots of live processes only,
 * so a worker that crashed stops counting at once.
 *
 * Routes are labelled by their table's path ("/api/visits/:id"), never by
 * the request's URI, so the number of series is bounded by the route
 * tables: a slot per route, claimed by its method and path when the
 * configuration is loaded.  Requests no route took (unknown paths, other
 * methods, nginx's own errors) are counted as route "other".
 */


#include "ngx_ahava_core.h"


#define NGX_AHAVA_METRICS_ROUTES    64
#define NGX_AHAVA_METRICS_WORKERS   256
#define NGX_AHAVA_METRICS_PATH      64
#define NGX_AHAVA_METRICS_ZONE      (256 * 1024)
#define NGX_AHAVA_METRICS_TICK      1000        /* ms: gauges refreshed */
#define NGX_AHAVA_METRICS_DEPTH     5           /* ticks: outbox counted */

/* HTTP statuses counted one by one; the rest as "other" */
static ngx_uint_t  ngx_ahava_metrics_statuses[] = {
    101, 200, 201, 202, 204, 206, 301, 302, 304, 400, 401, 403, 404, 405,
    408, 409, 413, 414, 415, 416, 422, 429, 494, 499, 500, 502, 503, 504
};

#define NGX_AHAVA_METRICS_NSTATUS                                            \
    (sizeof(ngx_ahava_metrics_statuses) / sizeof(ngx_uint_t) + 1)

/* histogram bounds, ms; the last bucket is +Inf */
static ngx_msec_t  ngx_ahava_metrics_bounds[] = {
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000
};

static const char  *ngx_ahava_metrics_les[] = {
    "0.001", "0.002", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
    "0.5", "1", "2.5", "5", "10", "+Inf"
};

#define NGX_AHAVA_METRICS_NBOUNDS                                            \
    (sizeof(ngx_ahava_metrics_bounds) / sizeof(ngx_msec_t))
#define NGX_AHAVA_METRICS_NBUCKETS  (NGX_AHAVA_METRICS_NBOUNDS + 1)


typedef struct {
    ngx_atomic_t               requests[NGX_AHAVA_METRICS_NSTATUS];
    ngx_atomic_t               buckets[NGX_AHAVA_METRICS_NBUCKETS];
    ngx_atomic_t               sum_ms;
    ngx_uint_t                 methods;
    size_t                     len;
    u_char                     path[NGX_AHAVA_METRICS_PATH];
} ngx_ahava_metrics_route_t;


typedef struct {
    ngx_atomic_t               pid;
    ngx_atomic_t               gauges[NGX_AHAVA_G_N];
} ngx_ahava_metrics_worker_t;


typedef struct {
    ngx_atomic_t               counters[NGX_AHAVA_M_N];
    ngx_uint_t                 nroutes;
    ngx_ahava_metrics_route_t  routes[NGX_AHAVA_METRICS_ROUTES];
    ngx_ahava_metrics_worker_t workers[NGX_AHAVA_METRICS_WORKERS];
} ngx_ahava_metrics_sh_t;


/* a route row and its slot: the tables stay as the modules wrote them */
typedef struct {
    ngx_ahava_route_t         *route;
    ngx_uint_t                 slot;
} ngx_ahava_metrics_map_t;


/* a metric the scrape prints from the zone */
typedef struct {
    const char                *name;
    const char                *type;
    const char                *help;
    const char                *labels;          /* as printed, or NULL */
    ngx_int_t                  counter;         /* NGX_AHAVA_M_*, or -1 */
    ngx_int_t                  gauge;           /* NGX_AHAVA_G_*, or -1 */
} ngx_ahava_metrics_line_t;


static ngx_int_t ngx_ahava_metrics_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_ahava_metrics_depth(void);
static void ngx_ahava_metrics_depth_done(ngx_ahava_pg_query_t *q);
static void ngx_ahava_metrics_claim_routes(ngx_ahava_metrics_sh_t *sh);
static size_t ngx_ahava_metrics_label(ngx_ahava_route_t *rt, u_char *buf);
static void ngx_ahava_metrics_tick(ngx_event_t *ev);
static void ngx_ahava_metrics_refresh(void);
static ngx_int_t ngx_ahava_metrics_handler(ngx_http_request_t *r);
static u_char *ngx_ahava_metrics_write(u_char *p, u_char *last);
static const char *ngx_ahava_metrics_method(ngx_uint_t methods);


/*
 * How many rows the outbox relay still owes Redis: counted by one worker
 * every few seconds, whether Redis is up or not, and no further than
 * 100 000 rows, so a large backlog costs little to watch.
 */

static ngx_ahava_stmt_t  ngx_ahava_metrics_stmts[] = {

    { ngx_string("outbox depth"),
      "SELECT count(*) FROM (SELECT FROM ahava_outbox LIMIT 100000) o",
      0, 0, "" },
};


static ngx_ahava_metrics_line_t  ngx_ahava_metrics_lines[] = {

    { "ahava_pg_connections", "gauge",
      "PostgreSQL connections of the workers' pools, opening ones included",
      NULL, -1, NGX_AHAVA_G_PG_CONNECTIONS },

    { "ahava_pg_connections_busy", "gauge",
      "PostgreSQL connections running a statement",
      NULL, -1, NGX_AHAVA_G_PG_BUSY },

    { "ahava_pg_waiters", "gauge",
      "Statements waiting for a PostgreSQL connection",
      NULL, -1, NGX_AHAVA_G_PG_WAITERS },

    { "ahava_pg_rejected_total", "counter",
      "Statements answered 503: pool and wait queue full, wait or "
      "statement timed out, or PostgreSQL unreachable",
      NULL, NGX_AHAVA_M_PG_REJECTED, -1 },

    { "ahava_pg_reconnects_total", "counter",
      "PostgreSQL connections lost or failed to open (the pool opens "
      "others)",
      NULL, NGX_AHAVA_M_PG_RECONNECTS, -1 },

    { "ahava_redis_connected", "gauge",
      "Workers whose Redis client is connected and ready",
      NULL, -1, NGX_AHAVA_G_REDIS_CONNECTED },

    { "ahava_redis_reconnects_total", "counter",
      "Redis connections lost or failed to open (they are retried)",
      NULL, NGX_AHAVA_M_REDIS_RECONNECTS, -1 },

    { "ahava_events_published_total", "counter",
      "Events published to Redis: changes' events through the outbox, "
      "typing indicators directly",
      NULL, NGX_AHAVA_M_EVENTS_PUBLISHED, -1 },

    { "ahava_events_relayed_late_total", "counter",
      "Outbox rows sent by the sweep rather than right after their "
      "request: Redis was down, a step failed, or a worker died",
      NULL, NGX_AHAVA_M_EVENTS_LATE, -1 },

    { "ahava_outbox_relayed_total", "counter",
      "Outbox rows (a change's events and jobs) sent to Redis",
      NULL, NGX_AHAVA_M_OUTBOX_RELAYED, -1 },

    { "ahava_outbox_refused_total", "counter",
      "Outbox rows Redis refused (a command of theirs failed: a queue's "
      "key of another type...); they stay in ahava_outbox and are tried "
      "again",
      NULL, NGX_AHAVA_M_OUTBOX_REFUSED, -1 },

    { "ahava_outbox_depth", "gauge",
      "Rows waiting in the table ahava_outbox, counted every 5 s up to "
      "100000",
      NULL, NGX_AHAVA_M_OUTBOX_DEPTH, -1 },

    { "ahava_ws_connections", "gauge",
      "Open WebSocket sockets (authenticated)",
      NULL, -1, NGX_AHAVA_G_WS_SOCKETS },

    { "ahava_ws_users", "gauge",
      "Users with at least one open socket, counted once per worker",
      NULL, -1, NGX_AHAVA_G_WS_USERS },

    { "ahava_uploads_accepted_total", "counter",
      "Uploads stored and recorded",
      NULL, NGX_AHAVA_M_UPLOADS_ACCEPTED, -1 },

    { "ahava_uploads_rejected_total", "counter",
      "Uploads refused, by reason",
      "{reason=\"too_large\"}", NGX_AHAVA_M_UPLOADS_TOO_LARGE, -1 },

    { "ahava_uploads_rejected_total", NULL, NULL,
      "{reason=\"unsupported_type\"}", NGX_AHAVA_M_UPLOADS_UNSUPPORTED, -1 },

    { "ahava_uploads_rejected_total", NULL, NULL,
      "{reason=\"invalid\"}", NGX_AHAVA_M_UPLOADS_INVALID, -1 },

    { "ahava_uploads_rejected_total", NULL, NULL,
      "{reason=\"storage_error\"}", NGX_AHAVA_M_UPLOADS_FAILED, -1 },

    { NULL, NULL, NULL, NULL, -1, -1 }
};


static ngx_str_t                    ngx_ahava_metrics_name =
    ngx_string("ahava_metrics");
static ngx_ahava_metrics_sh_t      *ngx_ahava_metrics_sh;
static ngx_ahava_metrics_worker_t  *ngx_ahava_metrics_me;
static ngx_ahava_main_conf_t       *ngx_ahava_metrics_amcf;
static ngx_event_t                  ngx_ahava_metrics_timer;
static ngx_ahava_metrics_map_t
    ngx_ahava_metrics_map[NGX_AHAVA_METRICS_ROUTES];
static ngx_uint_t                   ngx_ahava_metrics_nmap;
static ngx_ahava_pg_query_t        *ngx_ahava_metrics_depth_query;
static ngx_uint_t                   ngx_ahava_metrics_ticks;


/*
 * The zone, and the route tables whose rows get a slot: called from the
 * core's postconfiguration, after every location was read.
 */

ngx_int_t
ngx_ahava_metrics_conf(ngx_conf_t *cf, ngx_ahava_main_conf_t *amcf)
{
    ngx_shm_zone_t  *zone;

    zone = ngx_shared_memory_add(cf, &ngx_ahava_metrics_name,
                                 NGX_AHAVA_METRICS_ZONE,
                                 &ngx_ahava_core_module);
    if (zone == NULL) {
        return NGX_ERROR;
    }

    zone->init = ngx_ahava_metrics_init_zone;
    zone->data = amcf;

    return NGX_OK;
}


ngx_int_t
ngx_ahava_metrics_declare(ngx_conf_t *cf)
{
    return ngx_ahava_declare(cf, ngx_ahava_metrics_stmts,
                             sizeof(ngx_ahava_metrics_stmts)
                             / sizeof(ngx_ahava_stmt_t));
}


/*
 * A location's route table is counted: the core calls this for every
 * table a directive names, once per table.
 */

ngx_int_t
ngx_ahava_metrics_add_routes(ngx_conf_t *cf, ngx_ahava_route_t *routes)
{
    ngx_uint_t              i;
    ngx_ahava_route_t     **t;
    ngx_ahava_main_conf_t  *amcf;

    amcf = ngx_http_conf_get_module_main_conf(cf, ngx_ahava_core_module);

    t = amcf->route_tables.elts;

    for (i = 0; i < amcf->route_tables.nelts; i++) {
        if (t[i] == routes) {
            return NGX_OK;
        }
    }

    t = ngx_array_push(&amcf->route_tables);
    if (t == NULL) {
        return NGX_ERROR;
    }

    *t = routes;

    return NGX_OK;
}


static ngx_int_t
ngx_ahava_metrics_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_slab_pool_t         *shpool;
    ngx_ahava_metrics_sh_t  *sh;

    ngx_ahava_metrics_amcf = shm_zone->data;

    if (data) {
        /* a reload: the counters go on */
        sh = data;

    } else {
        shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

        if (shm_zone->shm.exists) {
            sh = shpool->data;

        } else {
            sh = ngx_slab_calloc(shpool, sizeof(ngx_ahava_metrics_sh_t));
            if (sh == NULL) {
                return NGX_ERROR;
            }

            shpool->data = sh;

            /* slot 0: what no route took */
            sh->nroutes = 1;
            sh->routes[0].len = ngx_cpymem(sh->routes[0].path, "other", 5)
                                - sh->routes[0].path;
        }
    }

    shm_zone->data = sh;
    ngx_ahava_metrics_sh = sh;

    ngx_ahava_metrics_claim_routes(sh);

    return NGX_OK;
}


/*
 * Each row of each table finds its slot by method and path, or takes a
 * new one (only the master does this, before the workers start).
 */

static void
ngx_ahava_metrics_claim_routes(ngx_ahava_metrics_sh_t *sh)
{
    size_t                      len;
    u_char                      label[NGX_AHAVA_METRICS_PATH];
    ngx_uint_t                  i, k, slot;
    ngx_ahava_route_t          *rt, **t;
    ngx_ahava_metrics_route_t  *mr;

    ngx_ahava_metrics_nmap = 0;

    if (ngx_ahava_metrics_amcf == NULL) {
        return;
    }

    t = ngx_ahava_metrics_amcf->route_tables.elts;

    for (i = 0; i < ngx_ahava_metrics_amcf->route_tables.nelts; i++) {

        for (rt = t[i]; rt->path; rt++) {
            len = ngx_ahava_metrics_label(rt, label);
            slot = 0;

            for (k = 1; k < sh->nroutes; k++) {
                mr = &sh->routes[k];

                if (mr->methods == rt->methods && mr->len == len
                    && ngx_memcmp(mr->path, label, len) == 0)
                {
                    slot = k;
                    break;
                }
            }

            if (slot == 0 && sh->nroutes < NGX_AHAVA_METRICS_ROUTES) {
                mr = &sh->routes[sh->nroutes];
                mr->methods = rt->methods;
                mr->len = len;
                ngx_memcpy(mr->path, label, len);

                /* old workers may be scraping: the slot before its count */
                ngx_memory_barrier();
                slot = sh->nroutes++;
            }

            /* beyond the bound, the row counts as "other" */
            if (slot && ngx_ahava_metrics_nmap < NGX_AHAVA_METRICS_ROUTES) {
                ngx_ahava_metrics_map[ngx_ahava_metrics_nmap].route = rt;
                ngx_ahava_metrics_map[ngx_ahava_metrics_nmap].slot = slot;
                ngx_ahava_metrics_nmap++;
            }
        }
    }
}


/* "/api/visits/:/status" is shown as "/api/visits/:id/status" */

static size_t
ngx_ahava_metrics_label(ngx_ahava_route_t *rt, u_char *buf)
{
    u_char      *p, *last;
    const char  *s;

    p = buf;
    last = buf + NGX_AHAVA_METRICS_PATH - 8;

    for (s = rt->path; *s && p < last; s++) {

        if (*s == ':' && (s[1] == '/' || s[1] == '\0')) {
            p = ngx_cpymem(p, ":id", 3);

        } else if (*s == '*' && (s[1] == '/' || s[1] == '\0')) {
            p = ngx_cpymem(p, ":name", 5);

        } else {
            *p++ = *s;
        }
    }

    return p - buf;
}


/*
 * A worker takes a slot for its gauges: a free one, a dead process's, or
 * its own pid's (left by a process that had it before).  The main
 * configuration is the running cycle's, never the one init_zone saw (a
 * reload that failed after it would leave that one freed).
 */

ngx_int_t
ngx_ahava_metrics_init_process(ngx_cycle_t *cycle, ngx_ahava_main_conf_t *amcf)
{
    ngx_uint_t                   i, k;
    ngx_atomic_uint_t            pid;
    ngx_ahava_metrics_worker_t  *w;

    ngx_ahava_metrics_amcf = amcf;

    if (ngx_ahava_metrics_sh == NULL) {
        return NGX_OK;
    }

    for (i = 0; i < NGX_AHAVA_METRICS_WORKERS; i++) {
        w = &ngx_ahava_metrics_sh->workers[i];
        pid = w->pid;

        if (pid != 0 && pid != (ngx_atomic_uint_t) ngx_pid
            && (kill((pid_t) pid, 0) == 0 || ngx_errno != NGX_ESRCH))
        {
            continue;
        }

        if (!ngx_atomic_cmp_set(&w->pid, pid, (ngx_atomic_uint_t) ngx_pid)) {
            continue;
        }

        for (k = 0; k < NGX_AHAVA_G_N; k++) {
            w->gauges[k] = 0;
        }

        ngx_ahava_metrics_me = w;
        break;
    }

    if (ngx_ahava_metrics_me == NULL) {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "ahava: no metrics slot left for this worker: its "
                      "gauges are not counted");
    }

    if (amcf->pg && ngx_worker == 0) {
        ngx_ahava_metrics_depth_query = ngx_pcalloc(cycle->pool,
                                                 sizeof(ngx_ahava_pg_query_t));
        if (ngx_ahava_metrics_depth_query == NULL) {
            return NGX_ERROR;
        }
    }

    /* pool and Redis gauges are read once a second */
    ngx_ahava_metrics_timer.handler = ngx_ahava_metrics_tick;
    ngx_ahava_metrics_timer.log = cycle->log;
    ngx_ahava_metrics_timer.cancelable = 1;
    ngx_add_timer(&ngx_ahava_metrics_timer, NGX_AHAVA_METRICS_TICK);

    return NGX_OK;
}


void
ngx_ahava_metrics_exit_process(void)
{
    ngx_uint_t                   k;
    ngx_ahava_metrics_worker_t  *w;

    w = ngx_ahava_metrics_me;

    if (w == NULL) {
        return;
    }

    for (k = 0; k < NGX_AHAVA_G_N; k++) {
        w->gauges[k] = 0;
    }

    ngx_ahava_metrics_me = NULL;
    (void) ngx_atomic_cmp_set(&w->pid, (ngx_atomic_uint_t) ngx_pid, 0);
}


static void
ngx_ahava_metrics_tick(ngx_event_t *ev)
{
    ngx_ahava_metrics_refresh();

    if (++ngx_ahava_metrics_ticks % NGX_AHAVA_METRICS_DEPTH == 0) {
        ngx_ahava_metrics_depth();
    }

    if (!ngx_exiting && !ngx_terminate && !ngx_quit) {
        ngx_add_timer(ev, NGX_AHAVA_METRICS_TICK);
    }
}


static void
ngx_ahava_metrics_depth(void)
{
    ngx_ahava_pg_query_t  *q;

    q = ngx_ahava_metrics_depth_query;

    if (q == NULL || q->running || q->waiting) {
        return;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ngx_ahava_metrics_timer.log, 0,
                   "ahava: metrics, outbox depth");

    ngx_memzero(q, sizeof(ngx_ahava_pg_query_t));
    q->stmt = &ngx_ahava_metrics_stmts[0];
    q->done = ngx_ahava_metrics_depth_done;
    q->log = ngx_ahava_metrics_timer.log;

    /* a place in the wait queue like any statement: refused, it is
     * counted in ahava_pg_rejected_total and tried again later */
    (void) ngx_ahava_pg_send(ngx_ahava_metrics_amcf->pg, q);
}


static void
ngx_ahava_metrics_depth_done(ngx_ahava_pg_query_t *q)
{
    ngx_int_t  n;

    if (q->rc != NGX_OK || PQntuples(q->result) != 1) {
        return;
    }

    n = ngx_ahava_pg_int(q->result, 0, 0);

    if (n >= 0) {
        ngx_ahava_metrics_set(NGX_AHAVA_M_OUTBOX_DEPTH, n);
    }
}


static void
ngx_ahava_metrics_refresh(void)
{
    ngx_uint_t                   conns, busy, waiters;
    ngx_ahava_main_conf_t       *amcf;
    ngx_ahava_metrics_worker_t  *w;

    w = ngx_ahava_metrics_me;
    amcf = ngx_ahava_metrics_amcf;

    if (w == NULL || amcf == NULL) {
        return;
    }

    conns = busy = waiters = 0;

    if (amcf->pg) {
        ngx_ahava_pg_stats(amcf->pg, &conns, &busy, &waiters);
    }

    w->gauges[NGX_AHAVA_G_PG_CONNECTIONS] = conns;
    w->gauges[NGX_AHAVA_G_PG_BUSY] = busy;
    w->gauges[NGX_AHAVA_G_PG_WAITERS] = waiters;
    w->gauges[NGX_AHAVA_G_REDIS_CONNECTED] =
        (ngx_ahava_redis_healthy(amcf->redis) == NGX_OK);
}


void
ngx_ahava_metrics_count(ngx_uint_t counter, ngx_uint_t n)
{
    if (ngx_ahava_metrics_sh) {
        (void) ngx_atomic_fetch_add(&ngx_ahava_metrics_sh->counters[counter],
                                    n);
    }
}


void
ngx_ahava_metrics_set(ngx_uint_t counter, ngx_uint_t value)
{
    if (ngx_ahava_metrics_sh) {
        ngx_ahava_metrics_sh->counters[counter] = value;
    }
}


void
ngx_ahava_metrics_gauge(ngx_uint_t gauge, ngx_int_t delta)
{
    if (ngx_ahava_metrics_me) {
        ngx_ahava_metrics_me->gauges[gauge] += delta;
    }
}


/*
 * The log phase of every request: an API route's own slot, and "other"
 * for what reached the JSON error page without one.
 */

ngx_int_t
ngx_ahava_metrics_log_handler(ngx_http_request_t *r)
{
    time_t                      sec;
    ngx_msec_t                  msec;
    ngx_uint_t                  i, k, status;
    ngx_msec_int_t              ms;
    ngx_time_t                 *tp;
    ngx_ahava_ctx_t            *ctx;
    ngx_http_core_loc_conf_t   *clcf;
    ngx_ahava_metrics_route_t  *mr;

    if (ngx_ahava_metrics_sh == NULL || r != r->main) {
        return NGX_OK;
    }

    k = 0;
    ctx = ngx_http_get_module_ctx(r, ngx_ahava_core_module);

    if (ctx == NULL) {
        clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

        if (clcf->handler != ngx_ahava_error_page_handler) {
            return NGX_OK;          /* not ours */
        }

    } else if (ctx->route && ctx->method_ok) {

        for (i = 0; i < ngx_ahava_metrics_nmap; i++) {
            if (ngx_ahava_metrics_map[i].route == ctx->route) {
                k = ngx_ahava_metrics_map[i].slot;
                break;
            }
        }
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: metrics of route slot %ui", k);

    mr = &ngx_ahava_metrics_sh->routes[k];

    status = r->err_status ? r->err_status : r->headers_out.status;

    for (i = 0; i < NGX_AHAVA_METRICS_NSTATUS - 1; i++) {
        if (ngx_ahava_metrics_statuses[i] == status) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&mr->requests[i], 1);

    if (status == NGX_HTTP_SWITCHING_PROTOCOLS) {
        return NGX_OK;              /* a socket's life is not a latency */
    }

    /* until the answer was handed to nginx, when the core answered */
    if (ctx && ctx->answered_sec) {
        sec = ctx->answered_sec;
        msec = ctx->answered_msec;

    } else {
        tp = ngx_timeofday();
        sec = tp->sec;
        msec = tp->msec;
    }

    ms = (ngx_msec_int_t) ((sec - r->start_sec) * 1000
                           + (msec - r->start_msec));
    ms = ngx_max(ms, 0);

    for (i = 0; i < NGX_AHAVA_METRICS_NBOUNDS; i++) {
        if ((ngx_msec_t) ms <= ngx_ahava_metrics_bounds[i]) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&mr->buckets[i], 1);
    (void) ngx_atomic_fetch_add(&mr->sum_ms, ms);

    return NGX_OK;
}


/* ahava_metrics: the location answers the scrape */

char *
ngx_ahava_metrics_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler) {
        return "is duplicate: the location already has a handler";
    }

    clcf->handler = ngx_ahava_metrics_handler;

    return NGX_CONF_OK;
}


/* the most the text may take: each route's lines, then the others */
#define NGX_AHAVA_METRICS_LINE  (NGX_AHAVA_METRICS_PATH + 160)

static ngx_int_t
ngx_ahava_metrics_handler(ngx_http_request_t *r)
{
    size_t        size;
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: metrics scrape");

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_ahava_metrics_sh == NULL) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    ngx_ahava_metrics_refresh();

    size = 8192
           + ngx_min(ngx_ahava_metrics_sh->nroutes, NGX_AHAVA_METRICS_ROUTES)
             * (NGX_AHAVA_METRICS_NSTATUS + NGX_AHAVA_METRICS_NBUCKETS + 2)
             * NGX_AHAVA_METRICS_LINE;

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_ahava_metrics_write(b->pos, b->end);
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type,
                "text/plain; version=0.0.4; charset=utf-8");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    /* counters change between two scrapes: never cached */
    r->headers_out.last_modified_time = -1;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static u_char *
ngx_ahava_metrics_write(u_char *p, u_char *last)
{
    ngx_uint_t                   i, k, n, live, cum;
    ngx_atomic_uint_t            pid, v;
    ngx_atomic_uint_t            gauges[NGX_AHAVA_G_N];
    ngx_ahava_metrics_sh_t      *sh;
    ngx_ahava_metrics_line_t    *ml;
    ngx_ahava_metrics_route_t   *mr;
    ngx_ahava_metrics_worker_t  *w;

    sh = ngx_ahava_metrics_sh;

    /* requests */
    p = ngx_slprintf(p, last,
            "# HELP ahava_http_requests_total Requests the Ahava routes "
            "answered, by route (the route table's path), method and "
            "status; route \"other\": no route took the request\n"
            "# TYPE ahava_http_requests_total counter\n");

    n = ngx_min(sh->nroutes, NGX_AHAVA_METRICS_ROUTES);

    for (k = 0; k < n; k++) {
        mr = &sh->routes[k];

        for (i = 0; i < NGX_AHAVA_METRICS_NSTATUS; i++) {
            v = mr->requests[i];

            if (v == 0) {
                continue;
            }

            p = ngx_slprintf(p, last,
                             "ahava_http_requests_total{route=\"%*s\","
                             "method=\"%s\",status=\"", mr->len, mr->path,
                             ngx_ahava_metrics_method(mr->methods));

            if (i < NGX_AHAVA_METRICS_NSTATUS - 1) {
                p = ngx_slprintf(p, last, "%ui\"} %uA\n",
                                 ngx_ahava_metrics_statuses[i], v);

            } else {
                p = ngx_slprintf(p, last, "other\"} %uA\n", v);
            }
        }
    }

    /* latency */
    p = ngx_slprintf(p, last,
            "# HELP ahava_http_request_duration_seconds Time from a "
            "request's first byte to its answer handed to nginx's output "
            "(static downloads: to the end of the request), by route "
            "(WebSocket sessions not included)\n"
            "# TYPE ahava_http_request_duration_seconds histogram\n");

    for (k = 0; k < n; k++) {
        mr = &sh->routes[k];
        cum = 0;

        for (i = 0; i < NGX_AHAVA_METRICS_NBUCKETS; i++) {
            cum += mr->buckets[i];

            p = ngx_slprintf(p, last,
                             "ahava_http_request_duration_seconds_bucket"
                             "{route=\"%*s\",method=\"%s\",le=\"%s\"} %ui\n",
                             mr->len, mr->path,
                             ngx_ahava_metrics_method(mr->methods),
                             ngx_ahava_metrics_les[i], cum);
        }

        v = mr->sum_ms;

        p = ngx_slprintf(p, last,
                         "ahava_http_request_duration_seconds_sum"
                         "{route=\"%*s\",method=\"%s\"} %uA.%03uA\n"
                         "ahava_http_request_duration_seconds_count"
                         "{route=\"%*s\",method=\"%s\"} %ui\n",
                         mr->len, mr->path,
                         ngx_ahava_metrics_method(mr->methods),
                         v / 1000, v % 1000,
                         mr->len, mr->path,
                         ngx_ahava_metrics_method(mr->methods), cum);
    }

    /* the workers' gauges, live processes only */
    ngx_memzero(gauges, sizeof(gauges));
    live = 0;

    for (i = 0; i < NGX_AHAVA_METRICS_WORKERS; i++) {
        w = &sh->workers[i];
        pid = w->pid;

        if (pid == 0
            || (kill((pid_t) pid, 0) == -1 && ngx_errno == NGX_ESRCH))
        {
            continue;
        }

        live++;

        for (k = 0; k < NGX_AHAVA_G_N; k++) {
            gauges[k] += w->gauges[k];
        }
    }

    p = ngx_slprintf(p, last,
                     "# HELP ahava_nginx_workers nginx worker processes "
                     "counting into the zone\n"
                     "# TYPE ahava_nginx_workers gauge\n"
                     "ahava_nginx_workers %ui\n", live);

    for (ml = ngx_ahava_metrics_lines; ml->name; ml++) {

        if (ml->help) {
            p = ngx_slprintf(p, last, "# HELP %s %s\n# TYPE %s %s\n",
                             ml->name, ml->help, ml->name, ml->type);
        }

        v = (ml->counter >= 0) ? sh->counters[ml->counter]
                               : gauges[ml->gauge];

        p = ngx_slprintf(p, last, "%s%s %uA\n", ml->name,
                         ml->labels ? ml->labels : "", v);
    }

    return p;
}


static const char *
ngx_ahava_metrics_method(ngx_uint_t methods)
{
    switch (methods) {
    case NGX_HTTP_GET:
        return "GET";
    case NGX_HTTP_POST:
        return "POST";
    case NGX_HTTP_PUT:
        return "PUT";
    case NGX_HTTP_PATCH:
        return "PATCH";
    case NGX_HTTP_DELETE:
        return "DELETE";
    case 0:
        return "any";
    default:
        return "other";
    }
}
