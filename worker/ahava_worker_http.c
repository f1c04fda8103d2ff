
/*
 * Copyright (C) Ahava
 */


/*
 * GET /health and GET /metrics (Prometheus text format 0.0.4) on
 * metrics_listen, one thread, one short request per connection: a probe
 * or a scrape, never traffic.  /health answers 503 when Redis (or
 * PostgreSQL, when DATABASE_URL is set) does not answer.
 */


#include "ahava_worker.h"
#include "ahava_worker_run.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>


#define AHAVA_HTTP_OUT  65536


/* seconds: the upper bounds of the job duration histogram */
static const double  ahava_bucket_le[AHAVA_BUCKETS] = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60
};


typedef struct {
    char         *p;
    size_t        len;
    size_t        size;
} ahava_out_t;


static void *ahava_http_loop(void *arg);
static void ahava_http_serve(ahava_main_t *m, int fd, redisContext **c,
    PGconn **pg);
static void ahava_out(ahava_out_t *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));


void
ahava_metrics_observe(ahava_metrics_t *m, double ms)
{
    int  i;

    for (i = 0; i < AHAVA_BUCKETS; i++) {
        if (ms / 1000.0 <= ahava_bucket_le[i]) {
            __atomic_fetch_add(&m->buckets[i], 1, __ATOMIC_RELAXED);
            break;
        }
    }

    __atomic_fetch_add(&m->count, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&m->sum_us, (uint64_t) (ms * 1000), __ATOMIC_RELAXED);
}


int
ahava_http_start(ahava_main_t *m)
{
    struct sockaddr_in  sin;
    char                host[64], *colon;
    int                 fd, one, port;

    m->started = ahava_now_ms();
    m->http_fd = -1;

    if (m->metrics_listen == NULL || strcmp(m->metrics_listen, "off") == 0) {
        return 0;
    }

    snprintf(host, sizeof(host), "%s", m->metrics_listen);
    colon = strrchr(host, ':');

    if (colon) {
        *colon = '\0';
        port = atoi(colon + 1);
    } else {
        port = atoi(host);
        strcpy(host, "127.0.0.1");
    }

    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);

    if (port <= 0 || port > 65535
        || inet_pton(AF_INET, host[0] ? host : "0.0.0.0", &sin.sin_addr) != 1)
    {
        ahava_log("error", "metrics_listen: expected address:port", "{s:s}",
                  "value", m->metrics_listen);
        return -1;
    }

    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));

    if (fd == -1 || bind(fd, (struct sockaddr *) &sin, sizeof(sin)) != 0
        || listen(fd, 16) != 0)
    {
        ahava_log("error", "metrics_listen: cannot listen", "{s:s,s:s}",
                  "value", m->metrics_listen, "error", strerror(errno));
        if (fd != -1) {
            close(fd);
        }
        return -1;
    }

    m->http_fd = fd;

    return pthread_create(&m->http, NULL, ahava_http_loop, m) == 0 ? 0 : -1;
}


void
ahava_http_stop(ahava_main_t *m)
{
    if (m->http_fd != -1) {
        pthread_join(m->http, NULL);
        close(m->http_fd);
        m->http_fd = -1;
    }
}


static void *
ahava_http_loop(void *arg)
{
    ahava_main_t   *m = arg;
    struct pollfd   pfd;
    redisContext   *c;
    PGconn         *pg;
    int             fd;

    c = NULL;
    pg = NULL;

    while (!__atomic_load_n(&m->keeper_stop, __ATOMIC_SEQ_CST)) {
        pfd.fd = m->http_fd;
        pfd.events = POLLIN;

        if (poll(&pfd, 1, 250) <= 0) {
            continue;
        }

        fd = accept4(m->http_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd == -1) {
            continue;
        }

        ahava_http_serve(m, fd, &c, &pg);
        close(fd);
    }

    if (c) {
        redisFree(c);
    }

    if (pg) {
        PQfinish(pg);
    }

    return NULL;
}


static void
ahava_out(ahava_out_t *o, const char *fmt, ...)
{
    va_list  ap;
    int      n;

    if (o->len >= o->size) {
        return;
    }

    va_start(ap, fmt);
    n = vsnprintf(o->p + o->len, o->size - o->len, fmt, ap);
    va_end(ap);

    o->len += (n > 0) ? (size_t) n : 0;

    if (o->len > o->size) {
        o->len = o->size;
    }
}


static int
ahava_http_redis_ok(ahava_main_t *m, redisContext **c)
{
    redisReply  *r;
    char         err[AHAVA_ERR_LEN];
    int          ok;

    if (*c == NULL) {
        *c = ahava_redis_connect(&m->redis, err, sizeof(err));
        if (*c == NULL) {
            return 0;
        }
    }

    r = redisCommand(*c, "PING");

    if (r == NULL) {
        redisFree(*c);
        *c = NULL;
        return 0;
    }

    /* -LOADING or -NOAUTH is not a Redis we can use */
    ok = (r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0);
    freeReplyObject(r);

    return ok;
}


static int
ahava_http_pg_ok(ahava_main_t *m, PGconn **pg)
{
    ahava_thread_t   t;
    PGresult        *res;
    char             err[AHAVA_ERR_LEN];
    int              ok;

    memset(&t, 0, sizeof(t));
    t.conf = m->conf;
    t.pg = *pg;

    if (ahava_thread_pg(&t, err, sizeof(err)) == NULL) {
        *pg = NULL;
        return 0;
    }

    *pg = t.pg;
    res = PQexec(*pg, "SELECT 1");
    ok = PQresultStatus(res) == PGRES_TUPLES_OK;
    PQclear(res);

    return ok;
}


static void
ahava_http_metrics(ahava_main_t *m, ahava_out_t *o, redisContext **c)
{
    ahava_queue_t  *q;
    redisReply     *r;
    uint64_t        cum, hits, misses;
    int             i, k, redis_up, cap, listening;

    static const char  *depths[][2] = {
        { "wait", "LLEN" }, { "active", "LLEN" }, { "prioritized", "ZCARD" },
        { "delayed", "ZCARD" }, { "completed", "ZCARD" }, { "failed", "ZCARD" },
    };

#define AHAVA_COUNTER(metric, help, field)                                   \
    ahava_out(o, "# HELP ahava_worker_" metric " " help "\n"                  \
              "# TYPE ahava_worker_" metric " counter\n");                    \
    for (i = 0; i < m->nqueues; i++) {                                        \
        ahava_out(o, "ahava_worker_" metric "{queue=\"%s\"} %llu\n",          \
                  m->queues[i].name, (unsigned long long)                     \
                  __atomic_load_n(&m->queues[i].m.field, __ATOMIC_RELAXED));  \
    }

    AHAVA_COUNTER("jobs_processed_total",
                  "Jobs completed by this process.", completed)
    AHAVA_COUNTER("jobs_failed_total",
                  "Jobs failed for good by this process.", failed)
    AHAVA_COUNTER("jobs_retried_total",
                  "Attempts that failed and were scheduled again.", retried)
    AHAVA_COUNTER("jobs_stalled_total",
                  "Stalled jobs this process moved back to wait.", stalled)
    AHAVA_COUNTER("jobs_lock_lost_total",
                  "Results discarded because the job's lock was lost.",
                  lock_lost)

#undef AHAVA_COUNTER

    ahava_out(o, "# HELP ahava_worker_jobs_in_flight Jobs this process"
              " holds now.\n# TYPE ahava_worker_jobs_in_flight gauge\n");

    for (i = 0; i < m->nqueues; i++) {
        ahava_out(o, "ahava_worker_jobs_in_flight{queue=\"%s\"} %lld\n",
                  m->queues[i].name, (long long)
                  __atomic_load_n(&m->queues[i].m.inflight, __ATOMIC_RELAXED));
    }

    ahava_out(o, "# HELP ahava_worker_job_duration_seconds Time a job's"
              " processor ran.\n"
              "# TYPE ahava_worker_job_duration_seconds histogram\n");

    for (i = 0; i < m->nqueues; i++) {
        q = &m->queues[i];
        cum = 0;

        for (k = 0; k < AHAVA_BUCKETS; k++) {
            cum += __atomic_load_n(&q->m.buckets[k], __ATOMIC_RELAXED);
            ahava_out(o, "ahava_worker_job_duration_seconds_bucket"
                      "{queue=\"%s\",le=\"%g\"} %llu\n", q->name,
                      ahava_bucket_le[k], (unsigned long long) cum);
        }

        ahava_out(o, "ahava_worker_job_duration_seconds_bucket"
                  "{queue=\"%s\",le=\"+Inf\"} %llu\n"
                  "ahava_worker_job_duration_seconds_sum{queue=\"%s\"} %.6f\n"
                  "ahava_worker_job_duration_seconds_count{queue=\"%s\"}"
                  " %llu\n", q->name, (unsigned long long)
                  __atomic_load_n(&q->m.count, __ATOMIC_RELAXED), q->name,
                  __atomic_load_n(&q->m.sum_us, __ATOMIC_RELAXED) / 1e6,
                  q->name, (unsigned long long)
                  __atomic_load_n(&q->m.count, __ATOMIC_RELAXED));
    }

    ahava_tokens_stats(&hits, &misses, &cap, &listening);

    ahava_out(o, "# HELP ahava_worker_push_token_cache_total Push recipients"
              " looked up in the tokens cache while it was in use: found"
              " (hit) or read from PostgreSQL (miss).\n"
              "# TYPE ahava_worker_push_token_cache_total counter\n"
              "ahava_worker_push_token_cache_total{result=\"hit\"} %llu\n"
              "ahava_worker_push_token_cache_total{result=\"miss\"} %llu\n"
              "# HELP ahava_worker_push_token_cache_capacity Users the push"
              " tokens cache holds at most (push_token_cache).\n"
              "# TYPE ahava_worker_push_token_cache_capacity gauge\n"
              "ahava_worker_push_token_cache_capacity %d\n"
              "# HELP ahava_worker_push_token_cache_listening Whether the"
              " push tokens cache is in use: it hears changes.\n"
              "# TYPE ahava_worker_push_token_cache_listening gauge\n"
              "ahava_worker_push_token_cache_listening %d\n",
              (unsigned long long) hits, (unsigned long long) misses, cap,
              listening);

    redis_up = ahava_http_redis_ok(m, c);

    ahava_out(o, "# HELP ahava_worker_redis_up Whether Redis answered this"
              " scrape.\n# TYPE ahava_worker_redis_up gauge\n"
              "ahava_worker_redis_up %d\n", redis_up);

    if (!redis_up) {
        return;
    }

    ahava_out(o, "# HELP ahava_worker_queue_jobs Jobs in each state of the"
              " queue (all processes).\n"
              "# TYPE ahava_worker_queue_jobs gauge\n");

    for (i = 0; i < m->nqueues; i++) {
        q = &m->queues[i];

        for (k = 0; k < 6; k++) {
            redisAppendCommand(*c, "%s %s%s", depths[k][1], q->bq.prefix,
                               depths[k][0]);
        }

        for (k = 0; k < 6; k++) {
            if (redisGetReply(*c, (void **) &r) != REDIS_OK) {
                redisFree(*c);
                *c = NULL;
                return;
            }

            if (r->type == REDIS_REPLY_INTEGER) {
                ahava_out(o, "ahava_worker_queue_jobs{queue=\"%s\","
                          "state=\"%s\"} %lld\n", q->name, depths[k][0],
                          (long long) r->integer);
            }

            freeReplyObject(r);
        }
    }
}


static void
ahava_http_serve(ahava_main_t *m, int fd, redisContext **c, PGconn **pg)
{
    struct pollfd   pfd;
    ahava_out_t     o;
    char            req[2048], head[256];
    const char     *status, *type;
    ssize_t         n;
    size_t          got, off;
    int             redis_ok, pg_ok, i;

    got = 0;

    /* the request line is enough; 2 s for it */
    while (got < sizeof(req) - 1) {
        pfd.fd = fd;
        pfd.events = POLLIN;

        if (poll(&pfd, 1, 2000) <= 0) {
            return;
        }

        n = read(fd, req + got, sizeof(req) - 1 - got);
        if (n <= 0) {
            return;
        }

        got += n;
        req[got] = '\0';

        if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n")) {
            break;
        }
    }

    o.size = AHAVA_HTTP_OUT;
    o.len = 0;
    o.p = malloc(o.size + 1);
    if (o.p == NULL) {
        return;
    }

    if (strncmp(req, "GET /metrics ", 13) == 0) {
        status = "200 OK";
        type = "text/plain; version=0.0.4; charset=utf-8";
        ahava_http_metrics(m, &o, c);

    } else if (strncmp(req, "GET /health ", 12) == 0) {
        redis_ok = ahava_http_redis_ok(m, c);
        pg_ok = m->conf->database_url ? ahava_http_pg_ok(m, pg) : -1;

        status = (redis_ok && pg_ok != 0) ? "200 OK"
                                          : "503 Service Unavailable";
        type = "application/json";

        ahava_out(&o, "{\"status\":\"%s\",\"redis\":\"%s\","
                  "\"postgres\":\"%s\",\"worker\":\"%s\","
                  "\"uptimeSeconds\":%lld,\"stopping\":%s,\"queues\":[",
                  (redis_ok && pg_ok != 0) ? "ok" : "degraded",
                  redis_ok ? "up" : "down",
                  pg_ok == -1 ? "not configured" : (pg_ok ? "up" : "down"),
                  m->worker_name,
                  (long long) (ahava_now_ms() - m->started) / 1000,
                  m->stopping ? "true" : "false");

        for (i = 0; i < m->nqueues; i++) {
            ahava_out(&o, "%s{\"name\":\"%s\",\"enabled\":%s,"
                      "\"concurrency\":%d,\"inFlight\":%lld}",
                      i ? "," : "", m->queues[i].name,
                      m->queues[i].enabled ? "true" : "false",
                      m->queues[i].concurrency, (long long)
                      __atomic_load_n(&m->queues[i].m.inflight,
                                      __ATOMIC_RELAXED));
        }

        ahava_out(&o, "]}\n");

    } else if (strncmp(req, "GET ", 4) == 0) {
        status = "404 Not Found";
        type = "application/json";
        ahava_out(&o, "{\"error\":\"not found: GET /health or"
                  " GET /metrics\"}\n");

    } else {
        status = "405 Method Not Allowed";
        type = "application/json";
        ahava_out(&o, "{\"error\":\"method not allowed\"}\n");
    }

    n = snprintf(head, sizeof(head), "HTTP/1.1 %s\r\nContent-Type: %s\r\n"
                 "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                 status, type, o.len);

    if (write(fd, head, n) == n) {
        for (off = 0; off < o.len; off += n) {
            n = write(fd, o.p + off, o.len - off);
            if (n <= 0) {
                break;
            }
        }
    }

    free(o.p);
}
