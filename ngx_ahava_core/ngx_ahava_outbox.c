
/*
 * The outbox relay (SPEC §8, §9).  A mutation writes what it owes Redis —
 * its events and its jobs — into "ahava_outbox" in its own statement
 * (sql/006_outbox.sql), so they commit with it or not at all.  After the
 * commit the request hands the rows' ids to its worker's relay, which reads
 * them back, sends them to Redis with one script (events as PUBLISH, jobs
 * into BullMQ's layout) and deletes them.  A row that is not deleted is
 * read again later, by this worker or another, or by two at once; it is
 * still sent once: the script records each row's id in the sorted set
 * ahava:outbox:relayed (score: Redis's clock) in the same atomic step and
 * skips the ids it holds, for 30 s — far longer than a read may take
 * before it is sent (NGX_AHAVA_OUTBOX_STALE) or a sent row may wait for
 * its delete.  A job's BullMQ id is "ahava-<row id>" besides, and an id
 * BullMQ still holds is never added again.
 *
 * What a request could not hand over — Redis down, a failed step, a worker
 * that died, the ids of another nginx host — is picked up by the sweep:
 * every second each worker relays the rows older than two seconds, oldest
 * first.  After a failure a worker relays only through the sweep, oldest
 * first and without the age, until the outbox is drained, so that what
 * waited goes out before what came after.
 *
 * Nothing here blocks: one cycle at a time per worker (read, send, delete),
 * each step a statement on the pool or a Redis command, at most
 * NGX_AHAVA_OUTBOX_BATCH rows.
 */


#include "ngx_ahava_core.h"


#define NGX_AHAVA_OUTBOX_PENDING  4096          /* ids handed over, a worker */
#define NGX_AHAVA_OUTBOX_BATCH    100           /* rows per cycle */
#define NGX_AHAVA_OUTBOX_SWEEP    1000          /* ms between sweeps */
#define NGX_AHAVA_OUTBOX_AGE      "2000"        /* ms: then anyone's to send */
#define NGX_AHAVA_OUTBOX_KEEP     "30000"       /* ms an id is remembered */
#define NGX_AHAVA_OUTBOX_STALE    10000         /* ms: a slower read is not
                                                   sent (see the script) */

/* the columns of a row read back */
enum {
    NGX_AHAVA_OB_ID = 0,
    NGX_AHAVA_OB_KIND,
    NGX_AHAVA_OB_TOPIC,
    NGX_AHAVA_OB_RECIPIENTS,
    NGX_AHAVA_OB_PAYLOAD,
    NGX_AHAVA_OB_SECRET,
    NGX_AHAVA_OB_TIME
};

/* the script's arguments per row */
#define NGX_AHAVA_OB_ARGS         7


/* SPEC §9: the queues, their job names, priorities and retention */
typedef struct {
    const char                *queue;
    const char                *name;
    const char                *priority;
    const char                *opts;
} ngx_ahava_outbox_queue_t;

#define NGX_AHAVA_JOB_OPTS(prio, keep, fail)                                 \
    "{\"attempts\":3,\"backoff\":{\"type\":\"exponential\",\"delay\":2000},"  \
    "\"priority\":" prio ",\"removeOnComplete\":" keep ","                   \
    "\"removeOnFail\":" fail "}"

static ngx_ahava_outbox_queue_t  ngx_ahava_outbox_queues[] = {
    { "pdf-export", "generate-pdf", "1", NGX_AHAVA_JOB_OPTS("1", "10", "5") },
    { "email", "send-email", "3", NGX_AHAVA_JOB_OPTS("3", "50", "10") },
    { "push-notification", "send-push", "5",
      NGX_AHAVA_JOB_OPTS("5", "100", "10") },
    { NULL, NULL, NULL, NULL }
};


/*
 * One batch, atomically.  ARGV: now (ms), then per row: kind (e|j), outbox
 * id, recipients (e: ids joined by ",") or queue (j), job name, payload
 * (e: the frame; j: the job's data), job opts, priority.  A job is added
 * as BullMQ 6.7's addPrioritizedJob does with a custom id (BULLMQ-LAYOUT.md
 * §4, §2.2): INCR id, "duplicated" if the id exists, else the hash,
 * "added", a score from pc, the marker unless paused or maxed, "waiting".
 * Returns how many rows were new.
 */
static const char  ngx_ahava_outbox_script[] =
    "local now = ARGV[1]\n"
    "local seen = 'ahava:outbox:relayed'\n"
    "local t = redis.call('TIME')\n"
    "local clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "redis.call('ZREMRANGEBYSCORE', seen, '-inf', clock - "
    NGX_AHAVA_OUTBOX_KEEP ")\n"
    "local new = 0\n"
    "for i = 2, #ARGV, 7 do\n"
    "  local kind, id, target, name, payload, opts, prio ="
    " ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5],"
    " ARGV[i+6]\n"
    "  if redis.call('ZADD', seen, 'NX', clock, id) == 1 then\n"
    "    new = new + 1\n"
    "    if kind == 'e' then\n"
    "      for user in string.gmatch(target, '[^,]+') do\n"
    "        redis.call('PUBLISH', 'ahava:user:' .. user, payload)\n"
    "      end\n"
    "    else\n"
    "      local P = 'bull:' .. target .. ':'\n"
    "      local job = 'ahava-' .. id\n"
    "      redis.call('INCR', P .. 'id')\n"
    "      local max = redis.call('HGET', P .. 'meta', 'opts.maxLenEvents')\n"
    "      if not max then\n"
    "        max = '10000'\n"
    "        redis.call('HSET', P .. 'meta', 'opts.maxLenEvents', max)\n"
    "      end\n"
    "      if redis.call('EXISTS', P .. job) == 1 then\n"
    "        redis.call('XADD', P .. 'events', '*', 'event', 'duplicated',"
    " 'jobId', job)\n"
    "      else\n"
    "        redis.call('HMSET', P .. job, 'name', name, 'data', payload,"
    " 'opts', opts, 'timestamp', now, 'delay', '0', 'priority', prio)\n"
    "        redis.call('XADD', P .. 'events', '*', 'event', 'added',"
    " 'jobId', job, 'name', name)\n"
    "        local pc = redis.call('INCR', P .. 'pc')\n"
    "        redis.call('ZADD', P .. 'prioritized',"
    " tonumber(prio) * 0x100000000 + pc % 0x100000000, job)\n"
    "        local meta = redis.call('HMGET', P .. 'meta', 'paused',"
    " 'concurrency')\n"
    "        if not meta[1] and (not meta[2] or"
    " redis.call('LLEN', P .. 'active') < tonumber(meta[2])) then\n"
    "          redis.call('ZADD', P .. 'marker', 0, '0')\n"
    "        end\n"
    "        redis.call('XADD', P .. 'events', 'MAXLEN', '~', max, '*',"
    " 'event', 'waiting', 'jobId', job)\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return new\n";


#define NGX_AHAVA_OUTBOX_COLUMNS                                             \
    "SELECT id, kind, topic, array_to_string(recipients, ','), payload,"     \
    " secret, " NGX_AHAVA_TS("\"createdAt\"") " FROM ahava_outbox"

enum {
    NGX_AHAVA_OUTBOX_ROWS = 0,
    NGX_AHAVA_OUTBOX_BACKLOG,
    NGX_AHAVA_OUTBOX_DELETE
};

static ngx_ahava_stmt_t  ngx_ahava_outbox_stmts[] = {

    /* the rows a request handed over; $1 their ids */
    { ngx_string("outbox rows"),
      NGX_AHAVA_OUTBOX_COLUMNS " WHERE id = ANY($1::bigint[]) ORDER BY id",
      1, 0, "" },

    /* the oldest rows, those older than $1 ms */
    { ngx_string("outbox backlog"),
      NGX_AHAVA_OUTBOX_COLUMNS " WHERE \"createdAt\" <= LOCALTIMESTAMP(3)"
      " - $1::int * interval '1 millisecond' ORDER BY id LIMIT 100",
      1, 0, "" },

    /* sent: $1 their ids */
    { ngx_string("outbox relayed"),
      "DELETE FROM ahava_outbox WHERE id = ANY($1::bigint[])",
      1, 0, "" },
};


typedef struct {
    ngx_ahava_main_conf_t     *amcf;
    ngx_log_t                 *log;

    int64_t                   *pending;         /* handed over, sorted by
                                                   arrival */
    ngx_uint_t                 npending;

    ngx_pool_t                *pool;            /* the running cycle's */
    ngx_ahava_pg_query_t      *query;
    char                      *ids;             /* the batch's, {1,2,3} */
    ngx_uint_t                 nrows;
    ngx_msec_t                 started;         /* the read was sent */

    ngx_event_t                sweep;
    ngx_event_t                kick;
    ngx_ahava_log_limit_t      fail_log;

    unsigned                   running:1;
    unsigned                   sweeping:1;      /* this cycle reads by age */
    unsigned                   backlog:1;       /* send the oldest first */
    unsigned                   exiting:1;
} ngx_ahava_outbox_t;


static ngx_ahava_outbox_t  *ngx_ahava_outbox;


static void ngx_ahava_outbox_sweep_handler(ngx_event_t *ev);
static void ngx_ahava_outbox_kick_handler(ngx_event_t *ev);
static void ngx_ahava_outbox_start(ngx_ahava_outbox_t *o, ngx_uint_t sweep);
static void ngx_ahava_outbox_read(ngx_ahava_pg_query_t *q);
static void ngx_ahava_outbox_sent(redisAsyncContext *ac, void *reply,
    void *data);
static void ngx_ahava_outbox_deleted(ngx_ahava_pg_query_t *q);
static void ngx_ahava_outbox_finish(ngx_ahava_outbox_t *o, ngx_uint_t ok);
static ngx_int_t ngx_ahava_outbox_frame(ngx_ahava_outbox_t *o, PGresult *res,
    int row, ngx_str_t *frame);


ngx_int_t
ngx_ahava_outbox_declare(ngx_conf_t *cf)
{
    return ngx_ahava_declare(cf, ngx_ahava_outbox_stmts,
                             sizeof(ngx_ahava_outbox_stmts)
                             / sizeof(ngx_ahava_stmt_t));
}


ngx_int_t
ngx_ahava_outbox_init(ngx_cycle_t *cycle, ngx_ahava_main_conf_t *amcf)
{
    ngx_ahava_outbox_t  *o;

    o = ngx_pcalloc(cycle->pool, sizeof(ngx_ahava_outbox_t));
    if (o == NULL) {
        return NGX_ERROR;
    }

    o->pending = ngx_palloc(cycle->pool,
                            NGX_AHAVA_OUTBOX_PENDING * sizeof(int64_t));
    if (o->pending == NULL) {
        return NGX_ERROR;
    }

    o->amcf = amcf;
    o->log = cycle->log;

    o->sweep.handler = ngx_ahava_outbox_sweep_handler;
    o->sweep.data = o;
    o->sweep.log = cycle->log;
    o->sweep.cancelable = 1;

    o->kick.handler = ngx_ahava_outbox_kick_handler;
    o->kick.data = o;
    o->kick.log = cycle->log;

    /* rows left by a worker that is gone go out soon after the start */
    o->backlog = 1;
    ngx_add_timer(&o->sweep, NGX_AHAVA_OUTBOX_SWEEP);

    ngx_ahava_outbox = o;

    return NGX_OK;
}


void
ngx_ahava_outbox_exit(void)
{
    ngx_ahava_outbox_t  *o;

    o = ngx_ahava_outbox;

    if (o == NULL) {
        return;
    }

    o->exiting = 1;

    if (o->sweep.timer_set) {
        ngx_del_timer(&o->sweep);
    }

    if (o->kick.posted) {
        ngx_delete_posted_event(&o->kick);
    }

    if (o->query) {
        ngx_ahava_pg_cancel(o->query);
        o->query = NULL;
    }

    /* what is left is in the outbox: the next sweep anywhere sends it */
    ngx_ahava_outbox = NULL;
}


/*
 * After a commit: the outbox rows of the mutation, as PostgreSQL prints an
 * array of ids ("{12,13}"), to be sent now.  Never fails the request: a row
 * that cannot be handed over is the sweep's.
 */

void
ngx_ahava_outbox_relay(u_char *ids, size_t len)
{
    u_char              *p, *last;
    int64_t              id;
    ngx_ahava_outbox_t  *o;

    o = ngx_ahava_outbox;

    if (o == NULL || ids == NULL || len < 2) {
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, o->log, 0,
                   "ahava: outbox relay %*s", len, ids);

    p = ids + 1;
    last = ids + len - 1;

    while (p < last) {
        id = 0;

        while (p < last && *p >= '0' && *p <= '9') {
            id = id * 10 + (*p++ - '0');
        }

        if (id > 0) {
            if (o->npending == NGX_AHAVA_OUTBOX_PENDING) {
                /* too many at once: the sweep sends them, oldest first */
                o->backlog = 1;
                o->npending = 0;
                break;
            }

            o->pending[o->npending++] = id;
        }

        while (p < last && (*p < '0' || *p > '9')) {
            p++;
        }
    }

    if (o->backlog) {
        /* the sweep sends them, after what waits already */
        o->npending = 0;

        if (ngx_ahava_redis_healthy(o->amcf->redis) != NGX_OK) {
            ngx_ahava_log_limited(&o->fail_log, NGX_LOG_WARN, o->log,
                                  "ahava: redis unavailable: events and "
                                  "jobs wait in PostgreSQL");
        }

        return;
    }

    if (!o->running && o->npending && !o->kick.posted) {
        /* after the request's own answer, from the event loop */
        ngx_post_event(&o->kick, &ngx_posted_events);
    }
}


static void
ngx_ahava_outbox_kick_handler(ngx_event_t *ev)
{
    ngx_ahava_outbox_t  *o;

    o = ev->data;

    if (!o->running && !o->exiting) {
        ngx_ahava_outbox_start(o, 0);
    }
}


static void
ngx_ahava_outbox_sweep_handler(ngx_event_t *ev)
{
    ngx_ahava_outbox_t  *o;

    o = ev->data;

    if (o->exiting) {
        return;
    }

    if (!o->running) {
        ngx_ahava_outbox_start(o, 1);
    }

    ngx_add_timer(&o->sweep, NGX_AHAVA_OUTBOX_SWEEP);
}


/* a cycle: read the rows (handed over, or the oldest), send, delete */

static void
ngx_ahava_outbox_start(ngx_ahava_outbox_t *o, ngx_uint_t sweep)
{
    u_char                *p;
    ngx_uint_t             i, n;
    ngx_ahava_pg_query_t  *q;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, o->log, 0,
                   "ahava: outbox cycle, %ui pending, backlog %d",
                   o->npending, (int) o->backlog);

    if (o->backlog) {
        o->npending = 0;
        sweep = 1;
    }

    if (!sweep && o->npending == 0) {
        return;
    }

    if (ngx_ahava_redis_healthy(o->amcf->redis) != NGX_OK
        || ngx_ahava_pg_healthy(o->amcf->pg) != NGX_OK)
    {
        /* the rows wait in PostgreSQL; the sweep tries again */
        if (o->npending) {
            ngx_ahava_log_limited(&o->fail_log, NGX_LOG_WARN, o->log,
                                  "ahava: %s unavailable: events and jobs "
                                  "wait in PostgreSQL",
                                  ngx_ahava_redis_healthy(o->amcf->redis)
                                  == NGX_OK ? "postgresql" : "redis");
        }

        o->backlog = 1;
        o->npending = 0;
        return;
    }

    o->pool = ngx_create_pool(4096, o->log);
    if (o->pool == NULL) {
        return;
    }

    q = ngx_pcalloc(o->pool, sizeof(ngx_ahava_pg_query_t));
    if (q == NULL) {
        goto failed;
    }

    q->nparams = 1;
    q->done = ngx_ahava_outbox_read;
    q->data = o;
    q->log = o->log;

    if (sweep) {
        q->stmt = &ngx_ahava_outbox_stmts[NGX_AHAVA_OUTBOX_BACKLOG];
        q->values[0] = o->backlog ? "0" : NGX_AHAVA_OUTBOX_AGE;

    } else {
        n = ngx_min(o->npending, NGX_AHAVA_OUTBOX_BATCH);

        p = ngx_pnalloc(o->pool, n * (NGX_INT64_LEN + 1) + 3);
        if (p == NULL) {
            goto failed;
        }

        q->stmt = &ngx_ahava_outbox_stmts[NGX_AHAVA_OUTBOX_ROWS];
        q->values[0] = (char *) p;

        *p++ = '{';

        for (i = 0; i < n; i++) {
            p = ngx_sprintf(p, i ? ",%L" : "%L", o->pending[i]);
        }

        *p++ = '}';
        *p = '\0';

        o->npending -= n;
        ngx_memmove(o->pending, o->pending + n, o->npending * sizeof(int64_t));
    }

    o->sweeping = sweep;

    if (ngx_ahava_pg_send(o->amcf->pg, q) != NGX_OK) {
        goto failed;
    }

    o->query = q;
    o->running = 1;
    o->started = ngx_current_msec;

    return;

failed:

    o->backlog = 1;
    ngx_destroy_pool(o->pool);
    o->pool = NULL;
}


static void
ngx_ahava_outbox_read(ngx_ahava_pg_query_t *q)
{
    int                        row, nrows;
    u_char                    *p;
    size_t                    *lens;
    ngx_int_t                  rc;
    ngx_str_t                  frame;
    ngx_time_t                *tp;
    ngx_uint_t                 i, k;
    const char               **argv, *kind, *topic;
    PGresult                  *res;
    ngx_ahava_outbox_t        *o;
    ngx_ahava_outbox_queue_t  *queue;

    o = q->data;
    o->query = NULL;
    res = q->result;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, o->log, 0,
                   "ahava: outbox read, rc %i", q->rc);

    if (q->rc != NGX_OK) {
        ngx_ahava_log_limited(&o->fail_log, NGX_LOG_WARN, o->log,
                              "ahava: outbox not read (%s): events and jobs "
                              "wait in PostgreSQL",
                              q->sqlstate ? q->sqlstate : "unavailable");
        ngx_ahava_outbox_finish(o, 0);
        return;
    }

    if (ngx_current_msec - o->started > NGX_AHAVA_OUTBOX_STALE) {
        /* what another relay read at the same time may be forgotten by
         * the script by now: read again */
        ngx_ahava_outbox_finish(o, 0);
        return;
    }

    nrows = PQntuples(res);
    o->nrows = nrows;

    if (nrows == 0) {
        ngx_ahava_outbox_finish(o, 1);
        return;
    }

    /* EVAL, the script, no keys, now, the rows */
    k = 4 + nrows * NGX_AHAVA_OB_ARGS;

    argv = ngx_palloc(o->pool, k * sizeof(char *));
    lens = ngx_palloc(o->pool, k * sizeof(size_t));
    p = ngx_pnalloc(o->pool, nrows * (NGX_INT64_LEN + 1) + 3 + NGX_INT64_LEN);
    if (argv == NULL || lens == NULL || p == NULL) {
        goto failed;
    }

    argv[0] = "EVAL";
    argv[1] = ngx_ahava_outbox_script;
    argv[2] = "0";
    argv[3] = (char *) p;
    tp = ngx_timeofday();
    p = ngx_sprintf(p, "%L", (int64_t) tp->sec * 1000 + tp->msec);
    lens[0] = 4;
    lens[1] = sizeof(ngx_ahava_outbox_script) - 1;
    lens[2] = 1;
    lens[3] = p - (u_char *) argv[3];

    /* the ids of the batch, for the DELETE */
    o->ids = (char *) p;
    *p++ = '{';

    i = 4;

    for (row = 0; row < nrows; row++) {
        kind = PQgetvalue(res, row, NGX_AHAVA_OB_KIND);
        topic = PQgetvalue(res, row, NGX_AHAVA_OB_TOPIC);

        p = ngx_cpymem(p, PQgetvalue(res, row, NGX_AHAVA_OB_ID),
                       PQgetlength(res, row, NGX_AHAVA_OB_ID));
        *p++ = (row == nrows - 1) ? '}' : ',';

        argv[i + 1] = PQgetvalue(res, row, NGX_AHAVA_OB_ID);
        lens[i + 1] = PQgetlength(res, row, NGX_AHAVA_OB_ID);

        if (kind[0] == 'e') {
            if (ngx_ahava_outbox_frame(o, res, row, &frame) != NGX_OK) {
                goto failed;
            }

            argv[i] = "e";
            argv[i + 2] = PQgetvalue(res, row, NGX_AHAVA_OB_RECIPIENTS);
            lens[i + 2] = PQgetlength(res, row, NGX_AHAVA_OB_RECIPIENTS);
            argv[i + 3] = "";
            argv[i + 4] = (char *) frame.data;
            lens[i + 4] = frame.len;
            argv[i + 5] = "";
            argv[i + 6] = "0";

        } else {
            for (queue = ngx_ahava_outbox_queues; queue->queue; queue++) {
                if (ngx_strcmp(queue->queue, topic) == 0) {
                    break;
                }
            }

            if (queue->queue == NULL) {
                ngx_log_error(NGX_LOG_ALERT, o->log, 0,
                              "ahava: outbox row %s names no queue \"%s\"",
                              argv[i + 1], topic);
                goto failed;
            }

            argv[i] = "j";
            argv[i + 2] = queue->queue;
            lens[i + 2] = ngx_strlen(queue->queue);
            argv[i + 3] = queue->name;
            argv[i + 4] = PQgetvalue(res, row, NGX_AHAVA_OB_PAYLOAD);
            lens[i + 4] = PQgetlength(res, row, NGX_AHAVA_OB_PAYLOAD);
            argv[i + 5] = queue->opts;
            argv[i + 6] = queue->priority;
            lens[i + 5] = ngx_strlen(queue->opts);
        }

        lens[i] = 1;
        lens[i + 3] = ngx_strlen(argv[i + 3]);
        lens[i + 6] = ngx_strlen(argv[i + 6]);
        if (kind[0] == 'e') {
            lens[i + 5] = 0;
        }

        i += NGX_AHAVA_OB_ARGS;
    }

    *p = '\0';

    rc = ngx_ahava_redis_command_argv(o->amcf->redis, ngx_ahava_outbox_sent,
                                      o, (int) i, argv, lens);
    if (rc != NGX_OK) {
        ngx_ahava_log_limited(&o->fail_log, NGX_LOG_WARN, o->log,
                              "ahava: outbox not relayed: redis unavailable "
                              "(%i); events and jobs wait in PostgreSQL", rc);
        ngx_ahava_outbox_finish(o, 0);
    }

    return;

failed:

    ngx_ahava_outbox_finish(o, 0);
}


/*
 * An event's frame, {"type":T,"data":{...},"timestamp":ISO}, the time of
 * its commit; a message's content decrypted into data (SPEC §10: null and
 * contentError when it does not authenticate).
 */

static ngx_int_t
ngx_ahava_outbox_frame(ngx_ahava_outbox_t *o, PGresult *res, int row,
    ngx_str_t *frame)
{
    u_char     *p, *data;
    size_t      len, dlen;
    ngx_str_t   plain;
    ngx_int_t   rc;

    data = (u_char *) PQgetvalue(res, row, NGX_AHAVA_OB_PAYLOAD);
    dlen = PQgetlength(res, row, NGX_AHAVA_OB_PAYLOAD);

    ngx_str_null(&plain);
    rc = NGX_OK;

    if (!PQgetisnull(res, row, NGX_AHAVA_OB_SECRET)) {
        rc = ngx_ahava_decrypt_in(o->amcf, o->pool,
                 (u_char *) PQgetvalue(res, row, NGX_AHAVA_OB_SECRET),
                 PQgetlength(res, row, NGX_AHAVA_OB_SECRET), &plain);

        if (rc == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (rc != NGX_OK) {
            ngx_log_error(NGX_LOG_ERR, o->log, 0,
                          "ahava: outbox row %s: content failed to decrypt",
                          PQgetvalue(res, row, NGX_AHAVA_OB_ID));
        }
    }

    len = sizeof("{\"type\":\"\",\"data\":,\"timestamp\":\"\"}")
          + PQgetlength(res, row, NGX_AHAVA_OB_TOPIC) + dlen
          + PQgetlength(res, row, NGX_AHAVA_OB_TIME)
          + sizeof(",\"content\":null,\"contentError\":\"DECRYPTION_FAILED\"")
          + ngx_ahava_json_string_size(plain.data, plain.len);

    frame->data = ngx_pnalloc(o->pool, len);
    if (frame->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(frame->data, "{\"type\":\"%s\",\"data\":",
                    PQgetvalue(res, row, NGX_AHAVA_OB_TOPIC));

    if (PQgetisnull(res, row, NGX_AHAVA_OB_SECRET) || dlen < 2
        || data[dlen - 1] != '}')
    {
        p = ngx_cpymem(p, data, dlen);

    } else {
        p = ngx_cpymem(p, data, dlen - 1);

        if (dlen > 2) {
            *p++ = ',';
        }

        if (rc == NGX_OK) {
            p = ngx_cpymem(p, "\"content\":", sizeof("\"content\":") - 1);
            p = ngx_ahava_json_string_write(p, plain.data, plain.len);

        } else {
            p = ngx_cpymem(p, "\"content\":null,\"contentError\":"
                           "\"DECRYPTION_FAILED\"",
                           sizeof("\"content\":null,\"contentError\":"
                                  "\"DECRYPTION_FAILED\"") - 1);
        }

        *p++ = '}';
    }

    p = ngx_sprintf(p, ",\"timestamp\":\"%s\"}",
                    PQgetvalue(res, row, NGX_AHAVA_OB_TIME));

    frame->len = p - frame->data;

    return NGX_OK;
}


static void
ngx_ahava_outbox_sent(redisAsyncContext *ac, void *reply, void *data)
{
    redisReply            *rr;
    ngx_ahava_outbox_t    *o;
    ngx_ahava_pg_query_t  *q;

    o = data;
    rr = reply;

    if (o->exiting || ngx_ahava_outbox != o) {
        return;
    }

    if (rr == NULL || rr->type == REDIS_REPLY_ERROR) {
        ngx_ahava_log_limited(&o->fail_log, NGX_LOG_WARN, o->log,
                              "ahava: outbox not relayed: %s; events and "
                              "jobs wait in PostgreSQL",
                              rr ? rr->str : "redis connection lost");
        ngx_ahava_outbox_finish(o, 0);
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, o->log, 0,
                   "ahava: outbox relayed %ui rows, %L new", o->nrows,
                   (int64_t) rr->integer);

    q = ngx_pcalloc(o->pool, sizeof(ngx_ahava_pg_query_t));
    if (q == NULL) {
        ngx_ahava_outbox_finish(o, 0);
        return;
    }

    q->stmt = &ngx_ahava_outbox_stmts[NGX_AHAVA_OUTBOX_DELETE];
    q->nparams = 1;
    q->values[0] = o->ids;
    q->done = ngx_ahava_outbox_deleted;
    q->data = o;
    q->log = o->log;

    if (ngx_ahava_pg_send(o->amcf->pg, q) != NGX_OK) {
        /* sent, still there: the sweep finds them, the script skips them */
        ngx_ahava_outbox_finish(o, 0);
        return;
    }

    o->query = q;
}


static void
ngx_ahava_outbox_deleted(ngx_ahava_pg_query_t *q)
{
    ngx_ahava_outbox_t  *o;

    o = q->data;
    o->query = NULL;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, o->log, 0,
                   "ahava: outbox deleted, rc %i", q->rc);

    if (q->rc != NGX_OK) {
        ngx_ahava_log_limited(&o->fail_log, NGX_LOG_WARN, o->log,
                              "ahava: relayed outbox rows not deleted (%s): "
                              "they will be skipped when seen again",
                              q->sqlstate ? q->sqlstate : "unavailable");
        ngx_ahava_outbox_finish(o, 0);
        return;
    }

    ngx_ahava_outbox_finish(o, 1);
}


/*
 * The end of a cycle.  A full batch read by age means more waits: go on.
 * A failure sends everything through the sweep, oldest first.
 */

static void
ngx_ahava_outbox_finish(ngx_ahava_outbox_t *o, ngx_uint_t ok)
{
    ngx_uint_t  more;

    more = ok && o->sweeping && o->nrows == NGX_AHAVA_OUTBOX_BATCH;

    if (!ok) {
        o->backlog = 1;
        o->npending = 0;

    } else if (o->sweeping && !more) {
        o->backlog = 0;
    }

    o->running = 0;
    o->query = NULL;
    o->nrows = 0;

    if (o->pool) {
        ngx_destroy_pool(o->pool);
        o->pool = NULL;
    }

    if (o->exiting || !ok) {
        return;
    }

    if ((more || o->npending) && !o->kick.posted) {
        if (more) {
            o->backlog = 1;
        }

        ngx_post_event(&o->kick, &ngx_posted_events);
    }
}
