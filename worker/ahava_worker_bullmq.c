
/*
 * Copyright (C) Ahava
 */


/*
 * BullMQ 6.7's state machine on its own Redis layout, as our own Lua
 * (see ../shared/BULLMQ-LAYOUT.md §5-§8): one script finishes the jobs a
 * thread has done and fetches its next ones in the same call, one renews
 * locks, one moves stalled jobs back to wait.  Node BullMQ workers and
 * QueueEvents can run beside us on the same queues.
 *
 * Numbers reach Redis as Lua numbers, never through tostring(): a delayed
 * score (due ms * 4096) has 16 digits, more than Lua's "%.14g" keeps.
 */


#include "ahava_worker.h"
#include "ahava_worker_bullmq.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>
#include <openssl/sha.h>


#define AHAVA_BQ_FINISH_ARGS  10


static double ahava_bq_random(void);


/* helpers every script shares: P, now and meta are set before them */
#define AHAVA_BQ_LUA_COMMON                                                   \
    "local P, now = ARGV[1], tonumber(ARGV[2])\n"                             \
    "local meta = redis.call('HMGET', P .. 'meta', 'paused',"                 \
    " 'concurrency', 'max', 'duration', 'opts.maxLenEvents')\n"               \
    "local maxEvents = meta[5] or '10000'\n"                                  \
    "local function pausedOrMaxed()\n"                                        \
    "  if meta[1] then return true end\n"                                     \
    "  return meta[2] and redis.call('LLEN', P .. 'active')"                  \
    " >= tonumber(meta[2])\n"                                                 \
    "end\n"                                                                   \
    "local function baseMarker()\n"                                           \
    "  if not pausedOrMaxed() then"                                           \
    " redis.call('ZADD', P .. 'marker', 0, '0') end\n"                        \
    "end\n"                                                                   \
    "local function addPrioritized(id, prio)\n"                               \
    "  local pc = redis.call('INCR', P .. 'pc')\n"                            \
    "  redis.call('ZADD', P .. 'prioritized',"                                \
    " prio * 0x100000000 + pc % 0x100000000, id)\n"                           \
    "end\n"                                                                   \
    /* by the hash's priority, not opts: as BullMQ's promotion and retry */   \
    "local function enqueue(id, lifo)\n"                                      \
    "  local prio = tonumber(redis.call('HGET', P .. id, 'priority')) or 0\n" \
    "  if prio ~= 0 then addPrioritized(id, prio)\n"                          \
    "  elseif lifo then redis.call('RPUSH', P .. 'wait', id)\n"               \
    "  else redis.call('LPUSH', P .. 'wait', id) end\n"                       \
    "end\n"


/*
 * ARGV: P, now, nfinish, then AHAVA_BQ_FINISH_ARGS per finish:
 *   id, token, kind (c completed, f failed, d delayed retry, r retry now),
 *   value (returnvalue JSON or failedReason), stacktrace JSON,
 *   keep count (-1 all), keep age s (0 none), keep limit, attempts, delay
 * then the fetch: n (0: none), token base, token seq, lock ms,
 *   limiter max (0 none), limiter duration, worker name.
 * Returns { finish codes, jobs (8 fields each), limited ttl, next delayed }.
 */
static const char  ahava_bq_step_lua[] =
    AHAVA_BQ_LUA_COMMON
    "local function removeJob(id)\n"
    "  local k = P .. id\n"
    "  redis.call('DEL', k, k .. ':logs', k .. ':dependencies',"
    " k .. ':processed', k .. ':failed', k .. ':unsuccessful')\n"
    "end\n"
    "local function delayMarker()\n"
    "  if pausedOrMaxed() then return end\n"
    "  local first = redis.call('ZRANGE', P .. 'delayed', 0, 0,"
    " 'WITHSCORES')\n"
    "  if first[2] then redis.call('ZADD', P .. 'marker',"
    " tonumber(first[2]) / 0x1000, '1') end\n"
    "end\n"
    /* FIFO among jobs due in the same ms, as addDelayedJob.lua */
    "local function delayScore(due)\n"
    "  local lo = due * 0x1000\n"
    "  local last = redis.call('ZREVRANGEBYSCORE', P .. 'delayed',"
    " lo + 0xfff, lo, 'WITHSCORES', 'LIMIT', 0, 1)\n"
    "  if last[2] then return math.min(tonumber(last[2]) + 1, lo + 0xfff)"
    " end\n"
    "  return lo\n"
    "end\n"
    "local function keep(set, count, age, limit)\n"
    "  if age > 0 then\n"
    "    local old = redis.call('ZREVRANGEBYSCORE', set, now - age * 1000,"
    " '-inf', 'LIMIT', 0, limit)\n"
    "    for _, o in ipairs(old) do removeJob(o)"
    " redis.call('ZREM', set, o) end\n"
    "  end\n"
    "  if count > 0 then\n"
    "    local extra = redis.call('ZREVRANGE', set, count, -1)\n"
    "    for _, o in ipairs(extra) do removeJob(o) end\n"
    "    if #extra > 0 then redis.call('ZREMRANGEBYRANK', set, 0,"
    " -(count + 1)) end\n"
    "  end\n"
    "end\n"
    "local trimmed = false\n"
    "local function finish(id, token, kind, value, trace, count, age,"
    " limit, attempts, delay)\n"
    "  local jk = P .. id\n"
    "  if redis.call('EXISTS', jk) == 0 then return -1 end\n"
    "  if token ~= '0' then\n"
    "    local cur = redis.call('GET', jk .. ':lock')\n"
    "    if cur == token then\n"
    "      redis.call('DEL', jk .. ':lock')\n"
    "      redis.call('SREM', P .. 'stalled', id)\n"
    "    elseif cur then return -6\n"
    "    else return -2 end\n"
    "  end\n"
    "  if kind ~= 'c' then redis.call('HMSET', jk, 'failedReason', value,"
    " 'stacktrace', trace) end\n"
    "  if redis.call('LREM', P .. 'active', -1, id) == 0 then return -3"
    " end\n"
    "  if kind == 'd' then\n"
    "    local due = now + delay\n"
    "    redis.call('HINCRBY', jk, 'atm', 1)\n"
    "    redis.call('HSET', jk, 'delay', delay)\n"
    "    redis.call('ZADD', P .. 'delayed', delayScore(due), id)\n"
    "    redis.call('XADD', P .. 'events', 'MAXLEN', '~', maxEvents, '*',"
    " 'event', 'delayed', 'jobId', id, 'delay', due)\n"
    "    delayMarker()\n"
    "    return 0\n"
    "  end\n"
    "  if kind == 'r' then\n"
    "    enqueue(id, false)\n"
    "    baseMarker()\n"
    "    redis.call('HINCRBY', jk, 'atm', 1)\n"
    "    redis.call('XADD', P .. 'events', 'MAXLEN', '~', maxEvents, '*',"
    " 'event', 'waiting', 'jobId', id, 'prev', 'active')\n"
    "    return 0\n"
    "  end\n"
    "  if not trimmed then\n"
    "    redis.call('XTRIM', P .. 'events', 'MAXLEN', '~', maxEvents)\n"
    "    trimmed = true\n"
    "  end\n"
    "  local atm = redis.call('HINCRBY', jk, 'atm', 1)\n"
    "  local set = P .. (kind == 'c' and 'completed' or 'failed')\n"
    "  if count == 0 then\n"
    "    removeJob(id)\n"
    "  else\n"
    "    redis.call('ZADD', set, now, id)\n"
    "    if kind == 'c' then\n"
    "      redis.call('HSET', jk, 'returnvalue', value, 'finishedOn', now)\n"
    "    else\n"
    "      redis.call('HSET', jk, 'failedReason', value, 'finishedOn', now)\n"
    "      redis.call('HDEL', jk, 'defa')\n"
    "    end\n"
    "    keep(set, count, age, limit)\n"
    "  end\n"
    "  if kind == 'c' then\n"
    "    redis.call('XADD', P .. 'events', '*', 'event', 'completed',"
    " 'jobId', id, 'returnvalue', value, 'prev', 'active')\n"
    "  else\n"
    "    redis.call('XADD', P .. 'events', '*', 'event', 'failed',"
    " 'jobId', id, 'failedReason', value, 'prev', 'active')\n"
    "    if atm >= attempts then\n"
    "      redis.call('XADD', P .. 'events', '*', 'event',"
    " 'retries-exhausted', 'jobId', id, 'attemptsMade', atm)\n"
    "    end\n"
    "  end\n"
    "  return 0\n"
    "end\n"
    "local codes = {}\n"
    "local nf = tonumber(ARGV[3])\n"
    "local i = 4\n"
    /* a job sent back to wait or delayed: the queue is not drained */
    "local requeued = false\n"
    "for f = 1, nf do\n"
    "  codes[f] = finish(ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3],"
    " ARGV[i+4], tonumber(ARGV[i+5]), tonumber(ARGV[i+6]),"
    " tonumber(ARGV[i+7]), tonumber(ARGV[i+8]), tonumber(ARGV[i+9]))\n"
    "  if ARGV[i+2] == 'd' or ARGV[i+2] == 'r' then requeued = true end\n"
    "  i = i + 10\n"
    "end\n"
    "local n = tonumber(ARGV[i])\n"
    "local jobs, limited, nextDelayed = {}, 0, ''\n"
    "if n > 0 then\n"
    "  local base, seq, lockMs = ARGV[i+1], tonumber(ARGV[i+2]), ARGV[i+3]\n"
    "  local limMax, limDur, wname = tonumber(ARGV[i+4]),"
    " tonumber(ARGV[i+5]), ARGV[i+6]\n"
    /* promote the delayed jobs that are due (promoteDelayedJobs.lua) */
    "  local due = redis.call('ZRANGEBYSCORE', P .. 'delayed', 0,"
    " (now + 1) * 0x1000 - 1, 'LIMIT', 0, 1000)\n"
    "  for _, id in ipairs(due) do\n"
    "    redis.call('ZREM', P .. 'delayed', id)\n"
    "    enqueue(id, false)\n"
    "    redis.call('XADD', P .. 'events', '*', 'event', 'waiting',"
    " 'jobId', id, 'prev', 'delayed')\n"
    "    redis.call('HSET', P .. id, 'delay', 0)\n"
    "  end\n"
    "  if #due > 0 then baseMarker() end\n"
    /* the queue's own limits win for max, the worker's for duration */
    "  local maxJobs = tonumber(meta[3])\n"
    "  if not maxJobs and limMax > 0 then maxJobs = limMax end\n"
    "  local duration = limDur\n"
    "  if limMax == 0 then duration = tonumber(meta[4]) or 0 end\n"
    "  local lk = P .. 'limiter'\n"
    "  for k = 1, n do\n"
    "    if maxJobs then\n"
    "      local cnt = tonumber(redis.call('GET', lk) or '0')\n"
    "      if cnt >= maxJobs then\n"
    "        local ttl = redis.call('PTTL', lk)\n"
    "        if ttl > 0 then limited = ttl break end\n"
    "        redis.call('DEL', lk)\n"
    "      end\n"
    "    end\n"
    "    if pausedOrMaxed() then break end\n"
    "    local id = redis.call('RPOPLPUSH', P .. 'wait', P .. 'active')\n"
    "    while id and string.sub(id, 1, 2) == '0:' do\n"
    "      redis.call('LREM', P .. 'active', 1, id)\n"
    "      id = redis.call('RPOPLPUSH', P .. 'wait', P .. 'active')\n"
    "    end\n"
    "    if not id then\n"
    "      local p = redis.call('ZPOPMIN', P .. 'prioritized')\n"
    "      if p[1] then\n"
    "        id = p[1]\n"
    "        redis.call('LPUSH', P .. 'active', id)\n"
    "      else\n"
    "        redis.call('DEL', P .. 'pc')\n"
    "      end\n"
    "    end\n"
    "    if not id then break end\n"
    "    local jk = P .. id\n"
    "    local h = redis.call('HMGET', jk, 'name', 'data', 'opts', 'atm',"
    " 'defa', 'stacktrace', 'attemptsMade')\n"
    "    if maxJobs and not h[5] then\n"
    "      if redis.call('INCR', lk) == 1 then\n"
    "        redis.call('PEXPIRE', lk, math.floor(math.abs(duration)))\n"
    "      end\n"
    "    end\n"
    "    local token = base .. ':' .. (seq + k)\n"
    "    redis.call('SET', jk .. ':lock', token, 'PX', lockMs)\n"
    "    redis.call('XADD', P .. 'events', '*', 'event', 'active',"
    " 'jobId', id, 'prev', 'waiting')\n"
    "    redis.call('HMSET', jk, 'processedOn', now, 'pb', wname)\n"
    "    redis.call('HINCRBY', jk, 'ats', 1)\n"
    "    local j = #jobs\n"
    "    jobs[j+1], jobs[j+2], jobs[j+3], jobs[j+4] ="
    " id, token, h[1] or '', h[2] or '{}'\n"
    "    jobs[j+5], jobs[j+6], jobs[j+7], jobs[j+8] ="
    " h[3] or '{}', h[4] or h[7] or '0', h[5] or '', h[6] or '[]'\n"
    "  end\n"
    "  if #jobs > 0 then\n"
    "    redis.call('ZADD', P .. 'marker', 0, '0')\n"
    "  else\n"
    "    local first = redis.call('ZRANGE', P .. 'delayed', 0, 0,"
    " 'WITHSCORES')\n"
    "    if first[2] then nextDelayed ="
    " tostring(math.floor(tonumber(first[2]) / 0x1000)) end\n"
    "  end\n"
    "end\n"
    /* drained, as BullMQ says it: a finish that fetched nothing, not
     * limited nor paused, with nothing waiting, delayed, active or sent
     * back */
    "if nf > 0 and #jobs == 0 and not requeued and limited == 0"
    " and not pausedOrMaxed()"
    " and redis.call('ZCARD', P .. 'delayed') == 0"
    " and redis.call('LLEN', P .. 'wait') == 0"
    " and redis.call('LLEN', P .. 'active') == 0"
    " and redis.call('ZCARD', P .. 'prioritized') == 0 then\n"
    "  redis.call('XADD', P .. 'events', 'MAXLEN', '~', maxEvents, '*',"
    " 'event', 'drained')\n"
    "end\n"
    "return { codes, jobs, limited, nextDelayed }\n";


/* ARGV: P, now, lock ms, then id, token pairs.  Returns the lost ids. */
static const char  ahava_bq_extend_lua[] =
    "local P, ms = ARGV[1], ARGV[3]\n"
    "local lost = {}\n"
    "for i = 4, #ARGV, 2 do\n"
    "  local id, token = ARGV[i], ARGV[i+1]\n"
    "  local lk = P .. id .. ':lock'\n"
    "  if redis.call('GET', lk) == token then\n"
    "    redis.call('SET', lk, token, 'PX', ms)\n"
    "    redis.call('SREM', P .. 'stalled', id)\n"
    "  else\n"
    "    lost[#lost + 1] = id\n"
    "  end\n"
    "end\n"
    "return lost\n";


/*
 * moveStalledJobsToWait (§8): ARGV P, now, interval ms, max stalled count.
 * Returns the ids moved back to wait.
 */
static const char  ahava_bq_stalled_lua[] =
    AHAVA_BQ_LUA_COMMON
    "local interval, maxStalled = ARGV[3], tonumber(ARGV[4])\n"
    "if redis.call('EXISTS', P .. 'stalled-check') == 1 then return {} end\n"
    "redis.call('SET', P .. 'stalled-check', now, 'PX', interval)\n"
    "redis.call('XTRIM', P .. 'events', 'MAXLEN', '~', maxEvents)\n"
    "local moved = {}\n"
    "local stalled = redis.call('SMEMBERS', P .. 'stalled')\n"
    "if #stalled > 0 then\n"
    "  redis.call('DEL', P .. 'stalled')\n"
    "  for _, id in ipairs(stalled) do\n"
    "    local jk = P .. id\n"
    "    if string.sub(id, 1, 2) ~= '0:'"
    " and redis.call('EXISTS', jk .. ':lock') == 0"
    " and redis.call('LREM', P .. 'active', 1, id) > 0 then\n"
    "      local stc = redis.call('HINCRBY', jk, 'stc', 1)\n"
    "      if stc > maxStalled then\n"
    "        redis.call('HSET', jk, 'defa',"
    " 'job stalled more than allowable limit')\n"
    "      end\n"
    "      redis.call('RPUSH', P .. 'wait', id)\n"
    "      baseMarker()\n"
    "      redis.call('XADD', P .. 'events', '*', 'event', 'waiting',"
    " 'jobId', id, 'prev', 'active')\n"
    "      redis.call('XADD', P .. 'events', '*', 'event', 'stalled',"
    " 'jobId', id)\n"
    "      moved[#moved + 1] = id\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local active = redis.call('LRANGE', P .. 'active', 0, -1)\n"
    "for i = 1, #active, 5000 do\n"
    "  redis.call('SADD', P .. 'stalled',"
    " unpack(active, i, math.min(i + 4999, #active)))\n"
    "end\n"
    "return moved\n";


typedef struct {
    const char  *text;
    char         sha[41];
} ahava_bq_script_t;


static ahava_bq_script_t  ahava_bq_scripts[] = {
    { ahava_bq_step_lua, "" },
    { ahava_bq_extend_lua, "" },
    { ahava_bq_stalled_lua, "" },
};


static redisReply *ahava_bq_eval(redisContext *c, int script, int argc,
    const char **argv, const size_t *lens);


void
ahava_bq_init(void)
{
    size_t          i, k;
    unsigned char   md[SHA_DIGEST_LENGTH];

    for (i = 0; i < sizeof(ahava_bq_scripts) / sizeof(ahava_bq_scripts[0]);
         i++)
    {
        SHA1((const unsigned char *) ahava_bq_scripts[i].text,
             strlen(ahava_bq_scripts[i].text), md);

        for (k = 0; k < SHA_DIGEST_LENGTH; k++) {
            sprintf(&ahava_bq_scripts[i].sha[k * 2], "%02x", md[k]);
        }
    }
}


/*
 * EVALSHA, and EVAL once when Redis does not know the script (a restarted
 * or flushed Redis): the text crosses the wire once per connection at most.
 */
static redisReply *
ahava_bq_eval(redisContext *c, int script, int argc, const char **argv,
    const size_t *lens)
{
    const char  **av;
    size_t       *al;
    redisReply   *r;
    int           i;

    av = malloc((argc + 3) * sizeof(char *));
    al = malloc((argc + 3) * sizeof(size_t));
    if (av == NULL || al == NULL) {
        free(av);
        free(al);
        return NULL;
    }

    av[0] = "EVALSHA";
    al[0] = 7;
    av[1] = ahava_bq_scripts[script].sha;
    al[1] = 40;
    av[2] = "0";
    al[2] = 1;

    for (i = 0; i < argc; i++) {
        av[i + 3] = argv[i];
        al[i + 3] = lens ? lens[i] : strlen(argv[i]);
    }

    r = redisCommandArgv(c, argc + 3, av, al);

    if (r && r->type == REDIS_REPLY_ERROR
        && strncmp(r->str, "NOSCRIPT", 8) == 0)
    {
        freeReplyObject(r);
        av[0] = "EVAL";
        al[0] = 4;
        av[1] = ahava_bq_scripts[script].text;
        al[1] = strlen(av[1]);
        r = redisCommandArgv(c, argc + 3, av, al);
    }

    free(av);
    free(al);

    return r;
}


static int
ahava_bq_reply_error(redisContext *c, redisReply *r, char *err, size_t len)
{
    if (r == NULL) {
        snprintf(err, len, "redis: %s", c->errstr[0] ? c->errstr : "no reply");
        return -1;
    }

    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, len, "redis: %s", r->str);
        return -1;
    }

    return 0;
}


int
ahava_bq_step(redisContext *c, ahava_bq_queue_t *q, int64_t now,
    ahava_bq_finish_t *fin, int nfin, ahava_bq_fetch_t *fetch,
    ahava_bq_fetched_t *out, char *err, size_t errlen)
{
    char          nums[16 + AHAVA_BQ_MAX_BATCH * 6][24];
    const char  **argv;
    size_t       *lens;
    redisReply   *r, *codes, *jobs, *e;
    int           argc, i, k, nn;

    argc = 3 + nfin * AHAVA_BQ_FINISH_ARGS + 7;
    argv = malloc(argc * sizeof(char *));
    lens = malloc(argc * sizeof(size_t));
    if (argv == NULL || lens == NULL) {
        free(argv);
        free(lens);
        snprintf(err, errlen, "out of memory");
        return -1;
    }

    nn = 0;
    k = 0;

#define AHAVA_BQ_ARG(s)  do { argv[k] = (s); lens[k] = strlen(argv[k]); k++; \
                         } while (0)
#define AHAVA_BQ_NUM(v)  do { snprintf(nums[nn], 24, "%lld",                 \
                                       (long long) (v));                     \
                              AHAVA_BQ_ARG(nums[nn]); nn++; } while (0)

    AHAVA_BQ_ARG(q->prefix);
    AHAVA_BQ_NUM(now);
    AHAVA_BQ_NUM(nfin);

    for (i = 0; i < nfin; i++) {
        AHAVA_BQ_ARG(fin[i].id);
        AHAVA_BQ_ARG(fin[i].token);
        AHAVA_BQ_ARG(fin[i].kind);
        AHAVA_BQ_ARG(fin[i].value ? fin[i].value : "null");
        AHAVA_BQ_ARG(fin[i].stacktrace ? fin[i].stacktrace : "[]");
        AHAVA_BQ_NUM(fin[i].keep.count);
        AHAVA_BQ_NUM(fin[i].keep.age);
        AHAVA_BQ_NUM(fin[i].keep.limit);
        AHAVA_BQ_NUM(fin[i].attempts);
        AHAVA_BQ_NUM(fin[i].delay);
    }

    if (fetch) {
        AHAVA_BQ_NUM(fetch->n);
        AHAVA_BQ_ARG(fetch->token_base);
        AHAVA_BQ_NUM(fetch->token_seq);
        AHAVA_BQ_NUM(q->lock_ms);
        AHAVA_BQ_NUM(q->rate_max);
        AHAVA_BQ_NUM(q->rate_duration);
        AHAVA_BQ_ARG(fetch->worker_name);

    } else {
        AHAVA_BQ_ARG("0");
        AHAVA_BQ_ARG("");
        AHAVA_BQ_ARG("0");
        AHAVA_BQ_ARG("0");
        AHAVA_BQ_ARG("0");
        AHAVA_BQ_ARG("0");
        AHAVA_BQ_ARG("");
    }

#undef AHAVA_BQ_ARG
#undef AHAVA_BQ_NUM

    r = ahava_bq_eval(c, AHAVA_BQ_STEP, k, argv, lens);
    free(argv);
    free(lens);

    if (ahava_bq_reply_error(c, r, err, errlen) != 0) {
        if (r) {
            freeReplyObject(r);
        }
        return -1;
    }

    if (r->type != REDIS_REPLY_ARRAY || r->elements != 4
        || r->element[0]->type != REDIS_REPLY_ARRAY
        || r->element[1]->type != REDIS_REPLY_ARRAY
        || r->element[1]->elements % 8 != 0)
    {
        snprintf(err, errlen, "redis: unexpected reply to the step script");
        freeReplyObject(r);
        return -1;
    }

    codes = r->element[0];

    for (i = 0; i < nfin; i++) {
        fin[i].code = (i < (int) codes->elements
                       && codes->element[i]->type == REDIS_REPLY_INTEGER)
                      ? codes->element[i]->integer : -1;
    }

    out->reply = r;
    out->njobs = 0;
    jobs = r->element[1];

    for (i = 0; i + 7 < (int) jobs->elements; i += 8) {
        for (k = 0; k < 8; k++) {
            e = jobs->element[i + k];
            if (e->type != REDIS_REPLY_STRING) {
                snprintf(err, errlen, "redis: a fetched job is malformed");
                freeReplyObject(r);
                out->reply = NULL;
                return -1;
            }
        }

        out->jobs[out->njobs].id = jobs->element[i]->str;
        out->jobs[out->njobs].token = jobs->element[i + 1]->str;
        out->jobs[out->njobs].name = jobs->element[i + 2]->str;
        out->jobs[out->njobs].data = jobs->element[i + 3]->str;
        out->jobs[out->njobs].opts = jobs->element[i + 4]->str;
        out->jobs[out->njobs].atm = atol(jobs->element[i + 5]->str);
        out->jobs[out->njobs].defa = jobs->element[i + 6]->str;
        out->jobs[out->njobs].stacktrace = jobs->element[i + 7]->str;
        out->njobs++;
    }

    e = r->element[2];
    out->limited_ms = (e->type == REDIS_REPLY_INTEGER) ? e->integer : 0;

    e = r->element[3];
    out->next_delayed = (e->type == REDIS_REPLY_STRING && e->len)
                        ? atoll(e->str) : 0;

    return 0;
}


int
ahava_bq_extend(redisContext *c, ahava_bq_queue_t *q, int64_t now,
    const char **ids, const char **tokens, int n, char **lost, int *nlost,
    char *err, size_t errlen)
{
    const char  **argv;
    char          snow[24], sms[24];
    redisReply   *r;
    int           i, k;

    *nlost = 0;

    argv = malloc((3 + 2 * n) * sizeof(char *));
    if (argv == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }

    snprintf(snow, sizeof(snow), "%lld", (long long) now);
    snprintf(sms, sizeof(sms), "%d", q->lock_ms);

    argv[0] = q->prefix;
    argv[1] = snow;
    argv[2] = sms;
    k = 3;

    for (i = 0; i < n; i++) {
        argv[k++] = ids[i];
        argv[k++] = tokens[i];
    }

    r = ahava_bq_eval(c, AHAVA_BQ_EXTEND, k, argv, NULL);
    free(argv);

    if (ahava_bq_reply_error(c, r, err, errlen) != 0) {
        if (r) {
            freeReplyObject(r);
        }
        return -1;
    }

    if (r->type == REDIS_REPLY_ARRAY) {
        for (i = 0; i < (int) r->elements && i < n; i++) {
            if (r->element[i]->type == REDIS_REPLY_STRING) {
                lost[(*nlost)++] = strdup(r->element[i]->str);
            }
        }
    }

    freeReplyObject(r);

    return 0;
}


int
ahava_bq_stalled(redisContext *c, ahava_bq_queue_t *q, int64_t now,
    int interval_ms, int *moved, char *err, size_t errlen)
{
    const char  *argv[4];
    char         snow[24], sint[24];
    redisReply  *r;

    snprintf(snow, sizeof(snow), "%lld", (long long) now);
    snprintf(sint, sizeof(sint), "%d", interval_ms);

    argv[0] = q->prefix;
    argv[1] = snow;
    argv[2] = sint;
    argv[3] = "1";              /* maxStalledCount, BullMQ's default */

    r = ahava_bq_eval(c, AHAVA_BQ_STALLED, 4, argv, NULL);

    if (ahava_bq_reply_error(c, r, err, errlen) != 0) {
        if (r) {
            freeReplyObject(r);
        }
        return -1;
    }

    *moved = (r->type == REDIS_REPLY_ARRAY) ? (int) r->elements : 0;

    if (*moved) {
        size_t  i;

        for (i = 0; i < r->elements; i++) {
            if (r->element[i]->type == REDIS_REPLY_STRING) {
                ahava_log("warn", "job stalled: back to wait", "{s:s,s:s}",
                          "queue", q->name, "jobId", r->element[i]->str);
            }
        }
    }

    freeReplyObject(r);

    return 0;
}


/*
 * removeOnComplete / removeOnFail (§6 getKeepJobs): true, false, N or
 * {count, age, limit}; absent means the worker's default.
 */
void
ahava_bq_keep(json_t *opts, const char *field, ahava_bq_keep_t *dflt,
    ahava_bq_keep_t *keep)
{
    json_t  *v, *f;

    *keep = *dflt;

    v = json_object_get(opts, field);

    if (v == NULL || json_is_null(v)) {
        return;
    }

    keep->count = -1;
    keep->age = 0;
    keep->limit = 1000;

    if (json_is_true(v)) {
        keep->count = 0;

    } else if (json_is_integer(v)) {
        keep->count = json_integer_value(v);

    } else if (json_is_object(v)) {
        f = json_object_get(v, "count");
        if (json_is_integer(f)) {
            keep->count = json_integer_value(f);
        }

        f = json_object_get(v, "age");
        if (json_is_number(f)) {
            keep->age = (int64_t) json_number_value(f);
        }

        f = json_object_get(v, "limit");
        if (json_is_integer(f) && json_integer_value(f) > 0) {
            keep->limit = json_integer_value(f);
        }
    }

    if (keep->count < -1) {
        keep->count = -1;
    }
}


/*
 * §7: the delay before attempt n + 1 (n = attempts made including this
 * one), or -1 when the job has no backoff (retry at once).
 */
int64_t
ahava_bq_backoff(json_t *opts, long made)
{
    json_t      *b, *f;
    const char  *type;
    double       delay, jitter, max;

    b = json_object_get(opts, "backoff");

    if (b == NULL || json_is_null(b)) {
        return -1;
    }

    if (json_is_number(b)) {
        type = "fixed";
        delay = json_number_value(b);
        jitter = 0;

    } else if (json_is_object(b)) {
        f = json_object_get(b, "type");
        type = json_is_string(f) ? json_string_value(f) : "fixed";

        f = json_object_get(b, "delay");
        delay = json_is_number(f) ? json_number_value(f) : 0;

        f = json_object_get(b, "jitter");
        jitter = json_is_number(f) ? json_number_value(f) : 0;

    } else {
        return -1;
    }

    if (delay < 0) {
        delay = 0;
    }

    if (jitter < 0 || jitter > 1) {
        jitter = 0;
    }

    if (strcmp(type, "exponential") == 0) {
        max = round(pow(2, made - 1) * delay);

    } else {
        /* "fixed", and custom strategies we cannot run: their delay */
        max = delay;
    }

    if (jitter > 0) {
        max = floor(ahava_bq_random() * max * jitter + max * (1 - jitter));
    }

    if (delay == 0 || isnan(max)) {
        return 0;
    }

    /* 2^made overflows at last: no delay past 2^40 ms (34 years), where
     * the delayed set's score (due ms * 4096) still orders by the ms */
    if (!(max <= 1099511627776.0)) {
        max = 1099511627776.0;
    }

    return (int64_t) max;
}


/* [0, 1), seeded apart in each thread of each process: jitter spreads the
 * retries of several daemons only if their sequences differ */

static double
ahava_bq_random(void)
{
    static __thread int             seeded;
    static __thread unsigned short  state[3];

    if (!seeded) {
        if (RAND_bytes((unsigned char *) state, sizeof(state)) != 1) {
            state[0] = (unsigned short) getpid();
            state[1] = (unsigned short) (uintptr_t) &seeded;
            state[2] = (unsigned short) time(NULL);
        }

        seeded = 1;
    }

    return erand48(state);
}
