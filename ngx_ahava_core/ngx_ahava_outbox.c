
/*
 * The outbox relay (SPEC §8, §9).  A mutation writes what it owes Redis —
 * its events and its jobs — into "ahava_outbox" in its own statement
 * (sql/006_outbox.sql), so they commit with it or not at all.  After the
 * commit the request hands the rows' ids to its worker's relay, which reads
 * them back, sends them to Redis with one script (events as PUBLISH, jobs
 * into BullMQ's layout) and deletes them — in the statement that reads the
 * next batch, or after NGX_AHAVA_OUTBOX_LINGER ms when none comes: one
 * statement and one script per batch under load.
 *
 * A row that is not deleted is read again later, by this worker or
 * another, or by two at once; it is still sent once: the script records
 * each row's id in the sorted set ahava:outbox:relayed (score: Redis's
 * clock) in the same atomic step, after the row's commands, and skips the
 * ids it holds.  An id is forgotten only once it is older than 30 s — far
 * longer than a read may take before it is sent (NGX_AHAVA_OUTBOX_STALE) —
 * and lower than every id still in the outbox, so a row that outlives its
 * delete (PostgreSQL down) is remembered as long as it exists.  A job's
 * BullMQ id is "ahava-<row id>" besides, and an id BullMQ holds is never
 * added again.
 *
 * What a request could not hand over — Redis down, a failed step, a worker
 * that died, the ids of another nginx host — is picked up by the sweep:
 * every second each worker relays the rows older than two seconds, oldest
 * first.  After a failure a worker relays only through the sweep, oldest
 * first and without the age, until the outbox is drained, so that what
 * waited goes out before what came after.
 *
 * Nothing here blocks: one cycle at a time per worker (a statement on the
 * pool, then a Redis script), at most NGX_AHAVA_OUTBOX_BATCH rows.
 */


#include "ngx_ahava_core.h"


#define NGX_AHAVA_OUTBOX_PENDING  4096          /* ids handed over, a worker;
                                                   likewise ids to delete */
#define NGX_AHAVA_OUTBOX_BATCH    100           /* rows per cycle */
#define NGX_AHAVA_OUTBOX_SWEEP    1000          /* ms between sweeps */
#define NGX_AHAVA_OUTBOX_AGE      "2000"        /* ms: then anyone's to send */
#define NGX_AHAVA_OUTBOX_KEEP     "30000"       /* ms an id is remembered */
#define NGX_AHAVA_OUTBOX_SEEN_MAX "100000"      /* ids remembered, at most */
#define NGX_AHAVA_OUTBOX_RETRY    "10000"       /* ms a refused row waits */
#define NGX_AHAVA_OUTBOX_STALE    10000         /* ms: a slower read is not
                                                   sent */
#define NGX_AHAVA_OUTBOX_LINGER   20            /* ms a delete waits for a
                                                   read to go with */

/* the columns of a row read back */
enum {
    NGX_AHAVA_OB_ID = 0,
    NGX_AHAVA_OB_TOPIC,                         /* NULL: no event */
    NGX_AHAVA_OB_RECIPIENTS,
    NGX_AHAVA_OB_PAYLOAD,
    NGX_AHAVA_OB_SECRET,
    NGX_AHAVA_OB_TIME,
    NGX_AHAVA_OB_JOBS,                          /* NULL: no job */
    NGX_AHAVA_OB_FLOOR                          /* the lowest id left */
};

/* the script's arguments: EVAL, the script, no keys, now, the floor; per
 * row its id and how many items, then per item (its event, its jobs) */
#define NGX_AHAVA_OB_HEAD         5
#define NGX_AHAVA_OB_ROW          2
#define NGX_AHAVA_OB_ITEM         6
#define NGX_AHAVA_OB_MAX_JOBS     16            /* per row */


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
 * One batch.  ARGV: now (ms), the lowest id still in the outbox, then per
 * row: its id, how many items, and per item: kind (e|j), recipients (e:
 * ids joined by ",") or queue (j), job name, payload (e: the frame; j: the
 * job's data), job opts, priority.  The k-th job of row n is BullMQ job
 * "ahava-n-k", added as BullMQ 6.7's addPrioritizedJob does with a custom
 * id (BULLMQ-LAYOUT.md §4, §2.2): INCR id, "duplicated" if the id exists,
 * else the hash, "added", a score from pc, "waiting"; once per queue and
 * batch, the queue's meta is read and its marker set unless paused or
 * maxed (workers wake after the script anyway).  A row is recorded once all
 * its items ran, its jobs before its event.  A row Redis refuses (a queue's
 * key of another type, a bad events limit: checked before the row writes
 * anything) is not recorded, and the rows after it go on; the relay puts it
 * off (NGX_AHAVA_OUTBOX_RETRY).  An error of Redis itself (out of memory, a
 * read-only replica) fails the batch.  Returns { how many rows were new,
 * then per refused row its id and the error }.
 */
static const char  ngx_ahava_outbox_script[] =
    "local now, floor = ARGV[1], tonumber(ARGV[2])\n"
    "local seen = 'ahava:outbox:relayed'\n"
    "local t = redis.call('TIME')\n"
    "local clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local old = redis.call('ZRANGEBYSCORE', seen, '-inf', clock - "
    NGX_AHAVA_OUTBOX_KEEP ", 'LIMIT', 0, 1000)\n"
    /* bounded: past NGX_AHAVA_OUTBOX_SEEN_MAX ids (a row Redis refuses
     * for long holds the floor down), old ones go whatever the floor */
    "local over = redis.call('ZCARD', seen) > " NGX_AHAVA_OUTBOX_SEEN_MAX "\n"
    "for _, id in ipairs(old) do\n"
    "  if over or tonumber(id) < floor then redis.call('ZREM', seen, id) end\n"
    "end\n"
    /* a queue's keys and events limit, looked up once a batch */
    "local queues = {}\n"
    /* and its keys' types checked first: a row is refused before it
     * writes anything, rather than midway (a job's hash without its
     * place in the queue would be taken for a duplicate when sent again) */
    "local kinds = { meta = 'hash', events = 'stream', id = 'string',"
    " pc = 'string', prioritized = 'zset', marker = 'zset' }\n"
    "local function is(key, kind)\n"
    "  local t = redis.call('TYPE', key).ok\n"
    "  if t ~= 'none' and t ~= kind then\n"
    "    error('WRONGTYPE ' .. key .. ' is a ' .. t .. ', not a ' .. kind, 0)\n"
    "  end\n"
    "end\n"
    "local function queue(name)\n"
    "  local q = queues[name]\n"
    "  if not q then\n"
    "    local P = 'bull:' .. name .. ':'\n"
    "    for k, kind in pairs(kinds) do is(P .. k, kind) end\n"
    "    local max = redis.call('HGET', P .. 'meta', 'opts.maxLenEvents')\n"
    "    if not max then\n"
    "      max = '10000'\n"
    "      redis.call('HSET', P .. 'meta', 'opts.maxLenEvents', max)\n"
    "    elseif not tonumber(max) then\n"
    "      error('ERR ' .. P .. 'meta opts.maxLenEvents is not a number', 0)\n"
    "    end\n"
    "    q = { P = P, max = max, added = false }\n"
    "    queues[name] = q\n"
    "  end\n"
    "  return q\n"
    "end\n"
    /* a row's jobs before its event: a row that fails midway has then
     * published nothing, and its jobs that went are not added again */
    "local function row(id, first, last)\n"
    "  local j = 0\n"
    "  for k = first, last, 6 do\n"
    "    if ARGV[k] == 'j' then\n"
    "      is(queue(ARGV[k+1]).P .. 'ahava-' .. id .. '-' .. j, 'hash')\n"
    "      j = j + 1\n"
    "    end\n"
    "  end\n"
    "  j = 0\n"
    "  for k = first, last, 6 do\n"
    "    if ARGV[k] == 'j' then\n"
    "      local q = queue(ARGV[k+1])\n"
    "      local P = q.P\n"
    "      local job = 'ahava-' .. id .. '-' .. j\n"
    "      j = j + 1\n"
    "      redis.call('INCR', P .. 'id')\n"
    "      if redis.call('EXISTS', P .. job) == 1 then\n"
    "        redis.call('XADD', P .. 'events', '*', 'event', 'duplicated',"
    " 'jobId', job)\n"
    "      else\n"
    "        redis.call('HMSET', P .. job, 'name', ARGV[k+2], 'data',"
    " ARGV[k+3], 'opts', ARGV[k+4], 'timestamp', now, 'delay', '0',"
    " 'priority', ARGV[k+5])\n"
    "        redis.call('XADD', P .. 'events', '*', 'event', 'added',"
    " 'jobId', job, 'name', ARGV[k+2])\n"
    "        local pc = redis.call('INCR', P .. 'pc')\n"
    "        redis.call('ZADD', P .. 'prioritized',"
    " tonumber(ARGV[k+5]) * 0x100000000 + pc % 0x100000000, job)\n"
    "        redis.call('XADD', P .. 'events', 'MAXLEN', '~', q.max, '*',"
    " 'event', 'waiting', 'jobId', job)\n"
    "        q.added = true\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  for k = first, last, 6 do\n"
    "    if ARGV[k] == 'e' then\n"
    "      for user in string.gmatch(ARGV[k+1], '[^,]+') do\n"
    "        redis.call('PUBLISH', 'ahava:user:' .. user, ARGV[k+3])\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    /* a row Redis refuses (a queue's key of the wrong type...) is not
     * recorded and is said: it stays in the outbox, the others go on */
    "local new, i, out = 0, 3, {0}\n"
    "while i <= #ARGV do\n"
    "  local id, n = ARGV[i], tonumber(ARGV[i+1])\n"
    "  local first = i + 2\n"
    "  i = first + n * 6\n"
    "  if not redis.call('ZSCORE', seen, id) then\n"
    "    local ok, err = pcall(row, id, first, i - 1)\n"
    "    if ok then\n"
    "      redis.call('ZADD', seen, clock, id)\n"
    "      new = new + 1\n"
    "    else\n"
    "      if type(err) == 'table' then err = err.err or 'error' end\n"
    "      err = tostring(err)\n"
    /* Redis itself unwell (its memory, a replica...): not the row's
     * fault; the batch fails, what ran is recorded and skipped later */
    "      for _, p in ipairs({'OOM', 'READONLY', 'MISCONF', 'NOREPLICAS',"
    " 'MASTERDOWN', 'LOADING', 'BUSY', 'TRYAGAIN', 'CLUSTERDOWN'}) do\n"
    "        if string.sub(err, 1, #p) == p then"
    " return redis.error_reply(err) end\n"
    "      end\n"
    "      out[#out + 1] = id\n"
    "      out[#out + 1] = err\n"
    "    end\n"
    "  end\n"
    "end\n"
    /* workers wake once the script is done: one marker per queue is
     * enough, unless the queue is paused or at its global concurrency */
    "for _, q in pairs(queues) do\n"
    "  if q.added then\n"
    "    pcall(function()\n"
    "      local meta = redis.call('HMGET', q.P .. 'meta', 'paused',"
    " 'concurrency')\n"
    "      local limit = tonumber(meta[2])\n"
    "      if not meta[1] and (not limit or"
    " redis.call('LLEN', q.P .. 'active') < limit) then\n"
    "        redis.call('ZADD', q.P .. 'marker', 0, '0')\n"
    "      end\n"
    "    end)\n"
    "  end\n"
    "end\n"
    "out[1] = new\n"
    "return out\n";


/*
 * A cycle's one statement: delete what was sent ($2), put off what Redis
 * refused ($3: "retryAt", sql/011), read the next rows — those handed over
 * ($1), or the oldest, older than $1 ms and not put off.  The delete's and
 * the put-off's effects are not visible to the read of the same
 * statement: the oldest are read without $2 and $3.  The sweep also reads
 * the lowest id left (the script's floor; NULL: none), in a row of its own
 * when no row is due; not every cycle: the lowest ids of a busy outbox are
 * dead rows waiting for vacuum, which min() walks through.
 */
#define NGX_AHAVA_OUTBOX_COLUMNS                                             \
    "o.id, o.topic, array_to_string(o.recipients, ','), o.payload,"        \
    " o.secret, " NGX_AHAVA_TS("o.\"createdAt\"") ", o.jobs"

#define NGX_AHAVA_OUTBOX_GONE                                                \
    "WITH gone AS (DELETE FROM ahava_outbox WHERE id = ANY($2::bigint[])),"  \
    " later AS (UPDATE ahava_outbox SET \"retryAt\" = LOCALTIMESTAMP(3)"     \
    " + " NGX_AHAVA_OUTBOX_RETRY " * interval '1 millisecond'"              \
    " WHERE id = ANY($3::bigint[]))"

enum {
    NGX_AHAVA_OUTBOX_ROWS = 0,
    NGX_AHAVA_OUTBOX_BACKLOG
};

static ngx_ahava_stmt_t  ngx_ahava_outbox_stmts[] = {

    { ngx_string("outbox rows"),
      NGX_AHAVA_OUTBOX_GONE
      " SELECT " NGX_AHAVA_OUTBOX_COLUMNS ", NULL::bigint"
      " FROM ahava_outbox o WHERE o.id = ANY($1::bigint[]) ORDER BY o.id",
      3, 0, "" },

    { ngx_string("outbox backlog"),
      NGX_AHAVA_OUTBOX_GONE
      " SELECT " NGX_AHAVA_OUTBOX_COLUMNS ", f.floor"
      " FROM (SELECT min(id) AS floor FROM ahava_outbox) f"
      " LEFT JOIN LATERAL (SELECT * FROM ahava_outbox"
      " WHERE \"createdAt\" <= LOCALTIMESTAMP(3)"
      " - $1::int * interval '1 millisecond' AND id <> ALL($2::bigint[])"
      " AND id <> ALL($3::bigint[])"
      " AND (\"retryAt\" IS NULL OR \"retryAt\" <= LOCALTIMESTAMP(3))"
      " ORDER BY id LIMIT 100) o ON true ORDER BY o.id",
      3, 0, "" },
};


/* ids in a bounded list, printed as a PostgreSQL array */
typedef struct {
    int64_t                   *ids;
    ngx_uint_t                 n;
} ngx_ahava_outbox_ids_t;


typedef struct {
    ngx_ahava_main_conf_t     *amcf;
    ngx_log_t                 *log;

    ngx_ahava_outbox_ids_t     pending;         /* handed over, in order */
    ngx_ahava_outbox_ids_t     sent;            /* sent, to delete */
    ngx_ahava_outbox_ids_t     refused;         /* to put off */

    ngx_pool_t                *pool;            /* the running cycle's */
    ngx_ahava_pg_query_t      *query;
    int64_t                   *batch;           /* the ids read */
    int64_t                    last;            /* the highest id read */
    u_char                     floor[NGX_INT64_LEN + 1];  /* the lowest id
                                                   left, as the last sweep
                                                   saw it */
    ngx_uint_t                 nrows;
    ngx_uint_t                 nevents;         /* rows with an event */
    ngx_msec_t                 started;         /* the read was sent */

    ngx_event_t                sweep;
    ngx_event_t                kick;
    ngx_event_t                linger;
    ngx_ahava_log_limit_t      fail_log;
    ngx_ahava_log_limit_t      row_log;         /* rows Redis refused */

    unsigned                   running:1;
    unsigned                   sweeping:1;      /* this cycle reads by age */
    unsigned                   sweep_due:1;     /* a second passed */
    unsigned                   backlog:1;       /* send the oldest first */
    unsigned                   dropped:1;       /* handed-over ids were lost
                                                   since the sweep began */
    unsigned                   lost:1;          /* ... before it began */
    unsigned                   exiting:1;
} ngx_ahava_outbox_t;


static ngx_ahava_outbox_t  *ngx_ahava_outbox;


static void ngx_ahava_outbox_sweep_handler(ngx_event_t *ev);
static void ngx_ahava_outbox_kick_handler(ngx_event_t *ev);
static void ngx_ahava_outbox_start(ngx_ahava_outbox_t *o);
static void ngx_ahava_outbox_drop(ngx_ahava_outbox_t *o);
static char *ngx_ahava_outbox_array(ngx_pool_t *pool, int64_t *ids,
    ngx_uint_t n);
static void ngx_ahava_outbox_read(ngx_ahava_pg_query_t *q);
static ngx_uint_t ngx_ahava_outbox_items(ngx_ahava_outbox_t *o,
    PGresult *res, int row, const char **argv, size_t *lens);
static void ngx_ahava_outbox_sent(redisAsyncContext *ac, void *reply,
    void *data);
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

    o->pending.ids = ngx_palloc(cycle->pool,
                                NGX_AHAVA_OUTBOX_PENDING * sizeof(int64_t));
    o->sent.ids = ngx_palloc(cycle->pool,
                             NGX_AHAVA_OUTBOX_PENDING * sizeof(int64_t));
    o->refused.ids = ngx_palloc(cycle->pool,
                                NGX_AHAVA_OUTBOX_PENDING * sizeof(int64_t));
    if (o->pending.ids == NULL || o->sent.ids == NULL
        || o->refused.ids == NULL)
    {
        return NGX_ERROR;
    }

    o->amcf = amcf;
    o->log = cycle->log;
    o->floor[0] = '0';                  /* forget nothing before a sweep */

    o->sweep.handler = ngx_ahava_outbox_sweep_handler;
    o->sweep.data = o;
    o->sweep.log = cycle->log;
    o->sweep.cancelable = 1;

    o->kick.handler = ngx_ahava_outbox_kick_handler;
    o->kick.data = o;
    o->kick.log = cycle->log;

    o->linger.handler = ngx_ahava_outbox_kick_handler;
    o->linger.data = o;
    o->linger.log = cycle->log;
    o->linger.cancelable = 1;

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

    if (o->linger.timer_set) {
        ngx_del_timer(&o->linger);
    }

    if (o->kick.posted) {
        ngx_delete_posted_event(&o->kick);
    }

    if (o->query) {
        ngx_ahava_pg_cancel(o->query);
        o->query = NULL;
    }

    /* what is left is in the outbox: sent rows are skipped when read
     * again, the others go out with the next sweep anywhere */
    ngx_ahava_outbox = NULL;
}


/* Redis is (back) up: what waits goes now, not at the next sweep */

void
ngx_ahava_outbox_redis_ready(ngx_ahava_redis_t *redis, void *data)
{
    ngx_ahava_outbox_t  *o;

    o = ngx_ahava_outbox;

    if (o == NULL || o->exiting || o->running || o->kick.posted) {
        return;
    }

    ngx_post_event(&o->kick, &ngx_posted_events);
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

    if (o->backlog && ngx_ahava_redis_healthy(o->amcf->redis) != NGX_OK) {
        ngx_ahava_log_limited(&o->fail_log, NGX_LOG_WARN, o->log,
                              "ahava: redis unavailable: events and jobs "
                              "wait in PostgreSQL");
    }

    p = ids + 1;
    last = ids + len - 1;

    while (p < last) {
        id = 0;

        while (p < last && *p >= '0' && *p <= '9') {
            id = id * 10 + (*p++ - '0');
        }

        if (id > 0) {
            if (o->pending.n == NGX_AHAVA_OUTBOX_PENDING) {
                /* too many at once: the sweep sends them, oldest first */
                ngx_ahava_outbox_drop(o);
                return;
            }

            o->pending.ids[o->pending.n++] = id;
        }

        while (p < last && (*p < '0' || *p > '9')) {
            p++;
        }
    }

    /* in backlog they wait for the sweep to catch up with them */
    if (!o->running && o->pending.n && !o->backlog && !o->kick.posted) {
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
        ngx_ahava_outbox_start(o);
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

    /* due even under load: the cycle running starts it when it ends */
    o->sweep_due = 1;

    if (!o->running) {
        ngx_ahava_outbox_start(o);
    }

    ngx_add_timer(&o->sweep, NGX_AHAVA_OUTBOX_SWEEP);
}


/*
 * A cycle: delete what was sent and read the next rows (the sweep's when
 * due or in backlog, else those handed over), send them, and come back.
 */

static void
ngx_ahava_outbox_start(ngx_ahava_outbox_t *o)
{
    ngx_uint_t             n, sweep, deletes_only;
    ngx_ahava_pg_query_t  *q;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, o->log, 0,
                   "ahava: outbox cycle, %ui pending, %ui sent, backlog %d",
                   o->pending.n, o->sent.n, (int) o->backlog);

    if (o->linger.timer_set) {
        ngx_del_timer(&o->linger);
    }

    sweep = o->backlog || o->sweep_due;

    if (!sweep && o->pending.n == 0 && o->sent.n == 0 && o->refused.n == 0) {
        return;
    }

    deletes_only = 0;

    if (ngx_ahava_redis_healthy(o->amcf->redis) != NGX_OK
        || ngx_ahava_pg_healthy(o->amcf->pg) != NGX_OK)
    {
        /* the rows wait in PostgreSQL; the sweep tries again */
        if (o->pending.n) {
            ngx_ahava_log_limited(&o->fail_log, NGX_LOG_WARN, o->log,
                                  "ahava: %s unavailable: events and jobs "
                                  "wait in PostgreSQL",
                                  ngx_ahava_redis_healthy(o->amcf->redis)
                                  == NGX_OK ? "postgresql" : "redis");
        }

        ngx_ahava_outbox_drop(o);

        if ((o->sent.n == 0 && o->refused.n == 0)
            || ngx_ahava_pg_healthy(o->amcf->pg) != NGX_OK)
        {
            return;
        }

        /* Redis is down: what it took is deleted all the same */
        deletes_only = 1;
        sweep = 0;
    }

    o->pool = ngx_create_pool(4096, o->log);
    if (o->pool == NULL) {
        return;
    }

    q = ngx_pcalloc(o->pool, sizeof(ngx_ahava_pg_query_t));
    if (q == NULL) {
        goto failed;
    }

    q->nparams = 3;
    q->done = ngx_ahava_outbox_read;
    q->data = o;
    q->log = o->log;

    /* what was sent goes now; if this fails, the rows stay and are
     * skipped when read again */
    q->values[1] = ngx_ahava_outbox_array(o->pool, o->sent.ids, o->sent.n);
    if (q->values[1] == NULL) {
        goto failed;
    }

    o->sent.n = 0;

    q->values[2] = ngx_ahava_outbox_array(o->pool, o->refused.ids,
                                          o->refused.n);
    if (q->values[2] == NULL) {
        goto failed;
    }

    o->refused.n = 0;

    if (sweep) {
        q->stmt = &ngx_ahava_outbox_stmts[NGX_AHAVA_OUTBOX_BACKLOG];
        q->values[0] = o->backlog ? "0" : NGX_AHAVA_OUTBOX_AGE;
        o->sweep_due = 0;
        o->lost = o->dropped;
        o->dropped = 0;

    } else if (deletes_only) {
        q->stmt = &ngx_ahava_outbox_stmts[NGX_AHAVA_OUTBOX_ROWS];
        q->values[0] = "{}";

    } else {
        n = ngx_min(o->pending.n, NGX_AHAVA_OUTBOX_BATCH);

        q->stmt = &ngx_ahava_outbox_stmts[NGX_AHAVA_OUTBOX_ROWS];
        q->values[0] = ngx_ahava_outbox_array(o->pool, o->pending.ids, n);
        if (q->values[0] == NULL) {
            goto failed;
        }

        o->pending.n -= n;
        ngx_memmove(o->pending.ids, o->pending.ids + n,
                    o->pending.n * sizeof(int64_t));
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

    ngx_ahava_outbox_drop(o);
    ngx_destroy_pool(o->pool);
    o->pool = NULL;
}


/*
 * Something failed, or too much was handed over: the ids handed over are
 * forgotten (their rows wait in the outbox) and the sweep sends everything,
 * oldest first, until it has read all that was there when it began.
 */

static void
ngx_ahava_outbox_drop(ngx_ahava_outbox_t *o)
{
    o->backlog = 1;

    if (o->pending.n) {
        o->pending.n = 0;
        o->dropped = 1;
    }
}


static char *
ngx_ahava_outbox_array(ngx_pool_t *pool, int64_t *ids, ngx_uint_t n)
{
    u_char      *p, *s;
    ngx_uint_t   i;

    s = ngx_pnalloc(pool, n * (NGX_INT64_LEN + 1) + 3);
    if (s == NULL) {
        return NULL;
    }

    p = s;
    *p++ = '{';

    for (i = 0; i < n; i++) {
        p = ngx_sprintf(p, i ? ",%L" : "%L", ids[i]);
    }

    *p++ = '}';
    *p = '\0';

    return (char *) s;
}


static void
ngx_ahava_outbox_read(ngx_ahava_pg_query_t *q)
{
    int                   row, nrows;
    u_char               *p;
    size_t               *lens;
    ngx_int_t             rc;
    ngx_uint_t            i, k, n;
    ngx_time_t           *tp;
    const char          **argv;
    PGresult             *res;
    ngx_ahava_outbox_t   *o;

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
        /* another relay may have sent these rows long enough ago for the
         * script to have forgotten them: read again */
        ngx_ahava_outbox_finish(o, 0);
        return;
    }

    nrows = PQntuples(res);

    if (nrows && !PQgetisnull(res, 0, NGX_AHAVA_OB_FLOOR)) {
        ngx_cpystrn(o->floor,
                    (u_char *) PQgetvalue(res, 0, NGX_AHAVA_OB_FLOOR),
                    sizeof(o->floor));

    } else if (o->sweeping) {
        /* nothing left: every id may be forgotten once old enough */
        ngx_cpystrn(o->floor, (u_char *) "9223372036854775807",
                    sizeof(o->floor));
    }

    if (nrows == 1 && PQgetisnull(res, 0, NGX_AHAVA_OB_ID)) {
        nrows = 0;                      /* the sweep's row of its floor */
    }

    o->nrows = nrows;

    if (nrows == 0) {
        ngx_ahava_outbox_finish(o, 1);
        return;
    }

    /* at most an event and NGX_AHAVA_OB_MAX_JOBS jobs per row */
    k = NGX_AHAVA_OB_HEAD
        + nrows * (NGX_AHAVA_OB_ROW
                   + (1 + NGX_AHAVA_OB_MAX_JOBS) * NGX_AHAVA_OB_ITEM);

    argv = ngx_palloc(o->pool, k * sizeof(char *));
    lens = ngx_palloc(o->pool, k * sizeof(size_t));
    o->batch = ngx_palloc(o->pool, nrows * sizeof(int64_t));
    p = ngx_pnalloc(o->pool, NGX_INT64_LEN);
    if (argv == NULL || lens == NULL || o->batch == NULL || p == NULL) {
        goto failed;
    }

    tp = ngx_timeofday();

    argv[0] = "EVAL";
    argv[1] = ngx_ahava_outbox_script;
    argv[2] = "0";
    argv[3] = (char *) p;
    argv[4] = (char *) o->floor;
    lens[0] = 4;
    lens[1] = sizeof(ngx_ahava_outbox_script) - 1;
    lens[2] = 1;
    lens[3] = ngx_sprintf(p, "%L", (int64_t) tp->sec * 1000 + tp->msec) - p;
    lens[4] = ngx_strlen(o->floor);

    i = NGX_AHAVA_OB_HEAD;

    for (row = 0; row < nrows; row++) {

        /* deleted once sent, whatever becomes of it */
        o->batch[row] = ngx_atoof((u_char *) PQgetvalue(res, row,
                                                        NGX_AHAVA_OB_ID),
                                  PQgetlength(res, row, NGX_AHAVA_OB_ID));
        o->last = o->batch[row];

        if (!PQgetisnull(res, row, NGX_AHAVA_OB_TOPIC)) {
            o->nevents++;                   /* for the metrics */
        }

        argv[i] = PQgetvalue(res, row, NGX_AHAVA_OB_ID);
        lens[i] = PQgetlength(res, row, NGX_AHAVA_OB_ID);

        n = ngx_ahava_outbox_items(o, res, row, &argv[i + NGX_AHAVA_OB_ROW],
                                   &lens[i + NGX_AHAVA_OB_ROW]);
        if (n == (ngx_uint_t) NGX_ERROR) {
            goto failed;
        }

        p = ngx_pnalloc(o->pool, NGX_INT_T_LEN);
        if (p == NULL) {
            goto failed;
        }

        argv[i + 1] = (char *) p;
        lens[i + 1] = ngx_sprintf(p, "%ui", n) - p;

        i += NGX_AHAVA_OB_ROW + n * NGX_AHAVA_OB_ITEM;
    }

    rc = ngx_ahava_redis_command_argv(o->amcf->redis, ngx_ahava_outbox_sent,
                                      o, (int) i, argv, lens);
    if (rc != NGX_OK) {
        ngx_ahava_log_limited(&o->fail_log, NGX_LOG_WARN, o->log,
                              "ahava: outbox not relayed: redis unavailable; "
                              "events and jobs wait in PostgreSQL");
        ngx_ahava_outbox_finish(o, 0);
    }

    return;

failed:

    ngx_ahava_outbox_finish(o, 0);
}


/*
 * A row's items, as the script takes them: its event's frame, then each
 * job [queue, data] with its queue's name, options and priority.  A job
 * that can never be sent (no such queue, not JSON) is said and left out,
 * rather than stopping every row after it.  Returns how many, or
 * NGX_ERROR (out of memory).
 */

static ngx_uint_t
ngx_ahava_outbox_items(ngx_ahava_outbox_t *o, PGresult *res, int row,
    const char **argv, size_t *lens)
{
    char                      *text;
    size_t                     k, njobs;
    json_t                    *jobs, *job, *data;
    ngx_str_t                  frame;
    ngx_uint_t                 n;
    const char                *queue_name;
    ngx_ahava_outbox_queue_t  *queue;

    n = 0;

    if (!PQgetisnull(res, row, NGX_AHAVA_OB_TOPIC)) {
        if (ngx_ahava_outbox_frame(o, res, row, &frame) != NGX_OK) {
            return (ngx_uint_t) NGX_ERROR;
        }

        argv[0] = "e";
        lens[0] = 1;
        argv[1] = PQgetvalue(res, row, NGX_AHAVA_OB_RECIPIENTS);
        lens[1] = PQgetlength(res, row, NGX_AHAVA_OB_RECIPIENTS);
        argv[2] = "";
        lens[2] = 0;
        argv[3] = (char *) frame.data;
        lens[3] = frame.len;
        argv[4] = "";
        lens[4] = 0;
        argv[5] = "0";
        lens[5] = 1;

        n++;
    }

    if (PQgetisnull(res, row, NGX_AHAVA_OB_JOBS)) {
        return n;
    }

    jobs = json_loadb(PQgetvalue(res, row, NGX_AHAVA_OB_JOBS),
                      PQgetlength(res, row, NGX_AHAVA_OB_JOBS), 0, NULL);

    njobs = json_is_array(jobs) ? json_array_size(jobs) : 0;

    if (njobs > NGX_AHAVA_OB_MAX_JOBS) {
        ngx_log_error(NGX_LOG_ALERT, o->log, 0,
                      "ahava: outbox row %s has %uz jobs, only the first "
                      "%d are sent", PQgetvalue(res, row, NGX_AHAVA_OB_ID),
                      njobs, NGX_AHAVA_OB_MAX_JOBS);
        njobs = NGX_AHAVA_OB_MAX_JOBS;
    }

    for (k = 0; k < njobs; k++) {
        job = json_array_get(jobs, k);
        queue_name = json_string_value(json_array_get(job, 0));
        data = json_array_get(job, 1);

        for (queue = ngx_ahava_outbox_queues; queue->queue; queue++) {
            if (queue_name && ngx_strcmp(queue->queue, queue_name) == 0) {
                break;
            }
        }

        if (queue->queue == NULL || !json_is_object(data)) {
            ngx_log_error(NGX_LOG_ALERT, o->log, 0,
                          "ahava: outbox row %s: job %uz is not a job of a "
                          "known queue and is dropped",
                          PQgetvalue(res, row, NGX_AHAVA_OB_ID), k);
            continue;
        }

        text = json_dumps(data, JSON_COMPACT);
        if (text == NULL) {
            json_decref(jobs);
            return (ngx_uint_t) NGX_ERROR;
        }

        argv += (n ? NGX_AHAVA_OB_ITEM : 0);
        lens += (n ? NGX_AHAVA_OB_ITEM : 0);

        argv[0] = "j";
        lens[0] = 1;
        argv[1] = queue->queue;
        lens[1] = ngx_strlen(queue->queue);
        argv[2] = queue->name;
        lens[2] = ngx_strlen(queue->name);
        argv[4] = queue->opts;
        lens[4] = ngx_strlen(queue->opts);
        argv[5] = queue->priority;
        lens[5] = ngx_strlen(queue->priority);

        /* the job's data lives as long as the cycle */
        lens[3] = ngx_strlen(text);
        argv[3] = ngx_pnalloc(o->pool, lens[3]);

        if (argv[3] == NULL) {
            free(text);
            json_decref(jobs);
            return (ngx_uint_t) NGX_ERROR;
        }

        ngx_memcpy((char *) argv[3], text, lens[3]);
        free(text);

        n++;
    }

    if (jobs == NULL && !PQgetisnull(res, row, NGX_AHAVA_OB_JOBS)) {
        ngx_log_error(NGX_LOG_ALERT, o->log, 0,
                      "ahava: outbox row %s: jobs are not JSON and are "
                      "dropped", PQgetvalue(res, row, NGX_AHAVA_OB_ID));
    }

    json_decref(jobs);

    return n;
}


/*
 * An event's frame, {"type":T,"data":{...},"timestamp":ISO}, the time of
 * its change; a message's content decrypted into data by the core's
 * splice (SPEC §10: null and contentError when it does not authenticate).
 */

static ngx_int_t
ngx_ahava_outbox_frame(ngx_ahava_outbox_t *o, PGresult *res, int row,
    ngx_str_t *frame)
{
    u_char      *p;
    size_t       len, dlen;
    ngx_uint_t   splice;

    dlen = PQgetlength(res, row, NGX_AHAVA_OB_PAYLOAD);

    /* a payload that is no object is sent as it is */
    splice = !PQgetisnull(res, row, NGX_AHAVA_OB_SECRET) && dlen >= 2;

    len = sizeof("{\"type\":\"\",\"data\":,\"timestamp\":\"\"}")
          + PQgetlength(res, row, NGX_AHAVA_OB_TOPIC)
          + PQgetlength(res, row, NGX_AHAVA_OB_TIME)
          + (splice ? ngx_ahava_splice_size(res, row, NGX_AHAVA_OB_PAYLOAD,
                                            NGX_AHAVA_OB_SECRET)
                    : dlen);

    frame->data = ngx_pnalloc(o->pool, len);
    if (frame->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(frame->data, "{\"type\":\"%s\",\"data\":",
                    PQgetvalue(res, row, NGX_AHAVA_OB_TOPIC));

    if (splice) {
        p = ngx_ahava_splice_in(o->amcf, o->pool, o->log, p, res, row,
                                NGX_AHAVA_OB_PAYLOAD, NGX_AHAVA_OB_SECRET,
                                "content", "contentError");
        if (p == NULL) {
            return NGX_ERROR;
        }

    } else {
        p = ngx_cpymem(p, PQgetvalue(res, row, NGX_AHAVA_OB_PAYLOAD), dlen);
    }

    p = ngx_sprintf(p, ",\"timestamp\":\"%s\"}",
                    PQgetvalue(res, row, NGX_AHAVA_OB_TIME));

    frame->len = p - frame->data;

    return NGX_OK;
}


static void
ngx_ahava_outbox_sent(redisAsyncContext *ac, void *reply, void *data)
{
    size_t               i;
    int64_t              row;
    redisReply          *rr, *id, *err;
    ngx_uint_t           n, k, nbad;
    ngx_ahava_outbox_t  *o;

    o = data;
    rr = reply;

    if (o->exiting || ngx_ahava_outbox != o) {
        return;
    }

    if (rr == NULL || rr->type != REDIS_REPLY_ARRAY || rr->elements == 0
        || rr->element[0]->type != REDIS_REPLY_INTEGER)
    {
        ngx_ahava_log_limited(&o->fail_log, NGX_LOG_WARN, o->log,
                              "ahava: outbox not relayed: %s; events and "
                              "jobs wait in PostgreSQL",
                              rr == NULL ? "redis connection lost"
                              : rr->type == REDIS_REPLY_ERROR ? rr->str
                              : "unexpected reply");
        ngx_ahava_outbox_finish(o, 0);
        return;
    }

    /* rows Redis refused stay in the outbox, for the sweep */
    nbad = 0;

    for (i = 1; i + 1 < rr->elements; i += 2) {
        id = rr->element[i];
        err = rr->element[i + 1];

        if (id->type != REDIS_REPLY_STRING || err->type != REDIS_REPLY_STRING) {
            continue;
        }

        ngx_ahava_log_limited(&o->row_log, NGX_LOG_ERR, o->log,
                              "ahava: outbox row %*s not relayed: %*s; it "
                              "stays in PostgreSQL and is tried again",
                              (size_t) id->len, id->str,
                              (size_t) ngx_min(err->len, 200), err->str);

        row = ngx_atoof((u_char *) id->str, id->len);

        for (k = 0; k < o->nrows; k++) {
            if (o->batch[k] == row) {
                o->batch[k] = 0;
                nbad++;
            }
        }

        /* put off for a while, so that the sweep reads past it */
        if (row > 0 && o->refused.n < NGX_AHAVA_OUTBOX_PENDING) {
            o->refused.ids[o->refused.n++] = row;
        }
    }

    if (nbad) {
        ngx_ahava_metrics_count(NGX_AHAVA_M_OUTBOX_REFUSED, nbad);
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, o->log, 0,
                   "ahava: outbox relayed %ui rows, %L new, %ui refused",
                   o->nrows, (int64_t) rr->element[0]->integer, nbad);

    if (rr->element[0]->integer > 0) {
        /* rows another relay sent first are not counted twice */
        n = (ngx_uint_t) rr->element[0]->integer;
        ngx_ahava_metrics_count(NGX_AHAVA_M_OUTBOX_RELAYED, n);
        ngx_ahava_metrics_count(NGX_AHAVA_M_EVENTS_PUBLISHED,
                                ngx_min(n, o->nevents));

        if (o->sweeping) {
            ngx_ahava_metrics_count(NGX_AHAVA_M_EVENTS_LATE,
                                    ngx_min(n, o->nevents));
        }
    }

    /* deleted by the next cycle's statement; beyond the bound, they stay
     * until read again (and skipped) */
    for (k = 0; k < o->nrows && o->sent.n < NGX_AHAVA_OUTBOX_PENDING; k++) {
        if (o->batch[k]) {
            o->sent.ids[o->sent.n++] = o->batch[k];
        }
    }

    ngx_ahava_outbox_finish(o, 1);
}


/*
 * The end of a cycle.  A sweep that read a full batch of old rows means
 * the relay fell behind: the backlog.  The backlog ends once a sweep read
 * all that was there when it began (fewer than a batch), or, when no id
 * handed over was lost, once it reached the oldest one handed over — those
 * go on from there, in order (what the sweep sent of them is skipped).  A
 * failure sends everything through the sweep.  What was sent is deleted
 * with the next read, or alone after a moment.
 */

static void
ngx_ahava_outbox_finish(ngx_ahava_outbox_t *o, ngx_uint_t ok)
{
    ngx_uint_t  more;

    more = 0;

    if (!ok) {
        ngx_ahava_outbox_drop(o);

    } else if (o->sweeping && o->backlog) {
        if (o->nrows < NGX_AHAVA_OUTBOX_BATCH) {
            o->backlog = o->dropped;
            more = o->dropped;

        } else if (!o->lost && !o->dropped && o->pending.n
                   && o->last >= o->pending.ids[0])
        {
            o->backlog = 0;

        } else {
            more = 1;
        }

    } else if (o->sweeping && o->nrows == NGX_AHAVA_OUTBOX_BATCH) {
        o->backlog = 1;
        more = 1;
    }

    o->running = 0;
    o->query = NULL;
    o->nrows = 0;
    o->nevents = 0;
    o->batch = NULL;

    if (o->pool) {
        ngx_destroy_pool(o->pool);
        o->pool = NULL;
    }

    if (o->exiting || !ok) {
        return;
    }

    if (more || (o->pending.n && !o->backlog) || o->sweep_due) {
        if (!o->kick.posted) {
            ngx_post_event(&o->kick, &ngx_posted_events);
        }

    } else if ((o->sent.n || o->refused.n) && !o->linger.timer_set) {
        ngx_add_timer(&o->linger, NGX_AHAVA_OUTBOX_LINGER);
    }
}
