
/*
 * Copyright (C) Ahava
 */


/*
 * The push tokens cache: what "users" said a user's pushTokens were, kept
 * so that a push to a user seen recently costs no statement.
 *
 * Entries are dropped when they change, not when a lifetime runs out.  The
 * trigger of migration 008 notifies channel ahava_push_tokens with the
 * user's id at the commit of every change that could make an entry wrong
 * (tokens, isActive, a user added or deleted).  A thread of its own keeps
 * a connection that LISTENs and reads it as notifications arrive; a runner
 * reads it too before it consults the cache, so a push that starts after a
 * change's notification arrived (a millisecond or so after the commit)
 * never uses what the change replaced.  A fill is kept only if nothing was
 * evicted since its statement was sent: a change that committed after the
 * statement's snapshot either was heard by then or evicts the entry when
 * it is heard.
 *
 * The cache is used only while it is sure to hear: the listening
 * connection sends itself a heartbeat every 5 s (a NOTIFY whose payload is
 * a marker of its session, with a look at the trigger) and the cache is
 * unused unless it came back within 12 s and the trigger was there and
 * enabled.  A lost, silent or failed connection, or a missing trigger,
 * empties the cache; the thread connects again (after 1 s, doubled per
 * failure up to 60 s; 60 s when the trigger is missing).
 * No entry is older than 60 s, for writers that fire no trigger (TRUNCATE,
 * session_replication_role = replica, ALTER TABLE ... TYPE).
 *
 * Entries: a bounded table of twice the users asked for, four slots per
 * hash bucket, the oldest replaced.
 */


#include "ahava_worker.h"
#include "ahava_worker_run.h"

#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#define AHAVA_TOKENS_TTL_MS       60000
#define AHAVA_TOKENS_BEAT_MS      5000
#define AHAVA_TOKENS_DEAD_MS      12000   /* no heartbeat back: not heard */
#define AHAVA_TOKENS_RETRY_MS     1000    /* doubled per failure, to 60 s */
#define AHAVA_TOKENS_RECHECK_MS   60000   /* no trigger */
#define AHAVA_TOKENS_ID_LEN       64      /* ahava_valid_id's bound */
#define AHAVA_TOKENS_WAYS         4


#define AHAVA_TOKENS_LISTEN_SQL                                               \
    "LISTEN ahava_push_tokens"

/*
 * the heartbeat (a payload no user id can be: ":hb:" and this session's
 * random marker), and whether the trigger would notify ordinary writers
 */
#define AHAVA_TOKENS_BEAT_SQL                                                 \
    "SELECT pg_notify('ahava_push_tokens', $1), EXISTS (SELECT 1"             \
    " FROM pg_trigger WHERE tgrelid = to_regclass('users')"                   \
    " AND tgname = 'users_push_tokens_notify' AND tgenabled IN ('O', 'A'))"


typedef struct {
    char             id[AHAVA_TOKENS_ID_LEN + 1];
    char            *tokens;            /* JSON array text, as PostgreSQL */
    int64_t          filled;            /* ahava_mono_ms() */
} ahava_tokens_entry_t;


static struct {
    pthread_mutex_t        lock;        /* everything but the counters */
    ahava_tokens_entry_t  *entries;
    size_t                 nbuckets;    /* AHAVA_TOKENS_WAYS entries each */
    int                    capacity;
    uint64_t               epoch;       /* +1 per eviction by notice */

    PGconn                *listener;
    int                    failed;      /* an error came on it */
    int                    beating;     /* a heartbeat's result is due */
    int64_t                beat_sent;
    int64_t                beat_heard;  /* 0: none yet on this session */
    int                    trigger_ok;
    int                    heard;       /* what was last logged */
    int                    no_trigger;  /* said so */
    int                    failing;     /* failures since last heard */
    char                   marker[24];  /* this session's heartbeat */
    char                   last_words[AHAVA_ERR_LEN];

    pthread_t              thread;
    int                    running;
    int                    stop;
    ahava_conf_t          *conf;

    uint64_t               hits;        /* atomics */
    uint64_t               misses;
} ahava_tokens = { .lock = PTHREAD_MUTEX_INITIALIZER };


static void *ahava_tokens_thread(void *arg);
static PGconn *ahava_tokens_connect(ahava_conf_t *conf);
static void ahava_tokens_failure(PGconn *pg);
static int64_t ahava_tokens_backoff(void);
static void ahava_tokens_beat_locked(int64_t now);
static int ahava_tokens_usable_locked(int64_t now);
static void ahava_tokens_read_locked(int64_t now);
static void ahava_tokens_heard_locked(PGconn *pg, int64_t now);
static void ahava_tokens_drop_locked(const char *why, const char *error);
static void ahava_tokens_receiver(void *arg, const PGresult *res);
static void ahava_tokens_evict_locked(const char *user);
static void ahava_tokens_clear_locked(void);


int
ahava_tokens_init(int capacity)
{
    if (capacity <= 0) {
        return 0;
    }

    /* twice as many slots as users: few buckets overflow */
    ahava_tokens.capacity = capacity;
    ahava_tokens.nbuckets = (capacity + 1) / 2;
    ahava_tokens.entries = calloc(ahava_tokens.nbuckets * AHAVA_TOKENS_WAYS,
                                  sizeof(ahava_tokens_entry_t));

    return ahava_tokens.entries ? 0 : -1;
}


/* the listening thread; nothing to do without a cache or a database */
int
ahava_tokens_start(ahava_conf_t *conf)
{
    if (ahava_tokens.entries == NULL || conf->database_url == NULL) {
        return 0;
    }

    ahava_tokens.conf = conf;

    if (pthread_create(&ahava_tokens.thread, NULL, ahava_tokens_thread, NULL)
        != 0)
    {
        return -1;
    }

    ahava_tokens.running = 1;

    return 0;
}


void
ahava_tokens_free(void)
{
    if (ahava_tokens.running) {
        __atomic_store_n(&ahava_tokens.stop, 1, __ATOMIC_SEQ_CST);
        pthread_join(ahava_tokens.thread, NULL);
        ahava_tokens.running = 0;
    }

    pthread_mutex_lock(&ahava_tokens.lock);

    if (ahava_tokens.entries) {
        ahava_tokens_clear_locked();
    }

    if (ahava_tokens.listener) {
        PQfinish(ahava_tokens.listener);
        ahava_tokens.listener = NULL;
    }

    free(ahava_tokens.entries);
    ahava_tokens.entries = NULL;
    ahava_tokens.nbuckets = 0;

    pthread_mutex_unlock(&ahava_tokens.lock);
}


/*
 * Connects and listens; then reads what arrives as it arrives (so that the
 * server never has to hold notifications for us) and sends the heartbeat.
 */
static void *
ahava_tokens_thread(void *arg)
{
    struct pollfd   pfd;
    PGconn         *pg;
    int64_t         now, next_try;
    int             fd;

    next_try = 0;

    while (!__atomic_load_n(&ahava_tokens.stop, __ATOMIC_SEQ_CST)) {

        now = ahava_mono_ms();

        pthread_mutex_lock(&ahava_tokens.lock);
        pg = ahava_tokens.listener;
        fd = pg ? PQsocket(pg) : -1;
        pthread_mutex_unlock(&ahava_tokens.lock);

        if (pg == NULL) {
            if (now < next_try) {
                poll(NULL, 0, 200);
                continue;
            }

            /* blocking, here only: the runners go on without the cache */
            pg = ahava_tokens_connect(ahava_tokens.conf);

            if (pg == NULL) {
                next_try = ahava_mono_ms() + ahava_tokens_backoff();
                continue;
            }

            pthread_mutex_lock(&ahava_tokens.lock);

            /* what changed while nobody listened is unknown: start empty */
            ahava_tokens_clear_locked();
            ahava_tokens.epoch++;
            ahava_tokens.listener = pg;
            ahava_tokens.beating = 0;
            ahava_tokens.beat_sent = 0;
            ahava_tokens.beat_heard = 0;
            ahava_tokens.trigger_ok = 0;

            strcpy(ahava_tokens.marker, ":hb:");
            if (ahava_random_hex(ahava_tokens.marker + 4, 8) != 0) {
                strcpy(ahava_tokens.marker + 4, "0");
            }

            /* the first heartbeat at once: the cache is unused until it
             * comes back */
            ahava_tokens_beat_locked(ahava_mono_ms());

            pthread_mutex_unlock(&ahava_tokens.lock);
            continue;
        }

        /* a runner may drop the listener meanwhile: then this polls a
         * closed (or reused) descriptor, for a second at most */
        pfd.fd = fd;
        pfd.events = POLLIN;
        pfd.revents = 0;

        (void) poll(&pfd, 1, 1000);

        now = ahava_mono_ms();

        pthread_mutex_lock(&ahava_tokens.lock);

        ahava_tokens_read_locked(now);

        if (ahava_tokens.listener && !ahava_tokens.beating
            && now - ahava_tokens.beat_sent >= AHAVA_TOKENS_BEAT_MS)
        {
            ahava_tokens_beat_locked(now);
        }

        if (ahava_tokens.listener
            && now - (ahava_tokens.beat_heard ? ahava_tokens.beat_heard
                                              : ahava_tokens.beat_sent)
               > AHAVA_TOKENS_DEAD_MS
            && ahava_tokens.beat_sent)
        {
            ahava_tokens_drop_locked("no heartbeat came back (a pooler in"
                                     " transaction mode? a silent network?)",
                                     "");
        }

        if (ahava_tokens.listener && ahava_tokens.trigger_ok < 0) {
            if (!ahava_tokens.no_trigger) {
                ahava_log("warn", "push tokens are read for every push: the"
                          " trigger users_push_tokens_notify is missing or"
                          " disabled (run ahava-migrate)", "{}");
                ahava_tokens.no_trigger = 1;
            }

            ahava_tokens_drop_locked("no trigger", "");
            next_try = now + AHAVA_TOKENS_RECHECK_MS;
            ahava_tokens.failing = 0;

        } else if (ahava_tokens.trigger_ok > 0) {
            ahava_tokens.no_trigger = 0;
        }

        /* dropped, here or by a runner */
        if (ahava_tokens.listener == NULL && next_try < now) {
            next_try = now + ahava_tokens_backoff();
        }

        pthread_mutex_unlock(&ahava_tokens.lock);
    }

    return NULL;
}


static PGconn *
ahava_tokens_connect(ahava_conf_t *conf)
{
    PGresult    *res;
    PGconn      *pg;
    int          ok;
    const char  *keys[] = { "dbname", "connect_timeout", "application_name",
                            "options", "keepalives", "keepalives_idle",
                            "keepalives_interval", "keepalives_count",
                            "tcp_user_timeout", "client_encoding", NULL };
    const char  *values[] = { NULL, "5", "ahava-worker-tokens",
                              "-c statement_timeout=10000",
                              "1", "30", "10", "3", "10000", "UTF8", NULL };

    values[0] = conf->database_url;
    pg = PQconnectdbParams(keys, values, 1);

    if (pg == NULL || PQstatus(pg) != CONNECTION_OK) {
        ahava_tokens_failure(pg);
        PQfinish(pg);
        return NULL;
    }

    /* the server's last words before it closes (FATAL ...) */
    PQsetNoticeReceiver(pg, ahava_tokens_receiver, NULL);

    res = PQexec(pg, AHAVA_TOKENS_LISTEN_SQL);
    ok = (PQresultStatus(res) == PGRES_COMMAND_OK);
    PQclear(res);

    if (!ok) {
        ahava_tokens_failure(pg);
        PQfinish(pg);
        return NULL;
    }

    return pg;
}


static void
ahava_tokens_beat_locked(int64_t now)
{
    const char  *param = ahava_tokens.marker;

    if (PQsendQueryParams(ahava_tokens.listener, AHAVA_TOKENS_BEAT_SQL, 1,
                          NULL, &param, NULL, NULL, 0))
    {
        ahava_tokens.beating = 1;
        ahava_tokens.beat_sent = now;
        return;
    }

    ahava_tokens_drop_locked("its connection failed",
                             PQerrorMessage(ahava_tokens.listener));
}


/* 1 s, doubled for every failure since the cache last heard, to 60 s */
static int64_t
ahava_tokens_backoff(void)
{
    int  k;

    k = ahava_tokens.failing++;

    return k >= 6 ? 60000 : (int64_t) AHAVA_TOKENS_RETRY_MS << k;
}


/* the first failure of a streak is logged; the runners go on uncached */
static void
ahava_tokens_failure(PGconn *pg)
{
    char  err[AHAVA_ERR_LEN];

    if (ahava_tokens.failing) {
        return;
    }

    snprintf(err, sizeof(err), "%s", pg ? PQerrorMessage(pg) : "no memory");
    err[strcspn(err, "\n")] = '\0';

    ahava_log("warn", "push tokens cache cannot listen: every push reads the"
              " tokens meanwhile (tried again, 1 s to 60 s apart)", "{s:s}",
              "error", err);
}


/* an ERROR or FATAL while no statement of ours runs: the session is over */
static void
ahava_tokens_receiver(void *arg, const PGresult *res)
{
    const char  *sev;

    sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);

    if (sev == NULL) {
        sev = PQresultErrorField(res, PG_DIAG_SEVERITY);
    }

    if (sev && (strcmp(sev, "ERROR") == 0 || strcmp(sev, "FATAL") == 0
                || strcmp(sev, "PANIC") == 0))
    {
        /* called with the cache's lock held: inside a read */
        ahava_tokens.failed = 1;
        snprintf(ahava_tokens.last_words, AHAVA_ERR_LEN, "%s",
                 PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) ?: sev);
    }
}


/*
 * What the listener's socket holds, without blocking, up to its end: the
 * notifications (evictions, or a heartbeat come back), the heartbeat's
 * result, an error, or the close.
 */
static void
ahava_tokens_read_locked(int64_t now)
{
    struct pollfd   pfd;
    PGresult       *res;
    PGconn         *pg;
    int             i;

    pg = ahava_tokens.listener;

    if (pg == NULL) {
        return;
    }

    pfd.fd = PQsocket(pg);
    pfd.events = POLLIN;

    for (i = 0; ; i++) {
        if (!PQconsumeInput(pg) || PQstatus(pg) != CONNECTION_OK) {
            ahava_tokens_drop_locked("its connection was lost",
                                     PQerrorMessage(pg));
            return;
        }

        ahava_tokens_heard_locked(pg, now);

        while (ahava_tokens.beating && !PQisBusy(pg)) {
            res = PQgetResult(pg);

            if (res == NULL) {
                ahava_tokens.beating = 0;
                break;
            }

            if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
                ahava_tokens.trigger_ok =
                    (PQgetvalue(res, 0, 1)[0] == 't') ? 1 : -1;

            } else {
                ahava_tokens.failed = 1;
            }

            PQclear(res);
        }

        /* what the result loop parsed after the heartbeat's result */
        ahava_tokens_heard_locked(pg, now);

        if (ahava_tokens.failed) {
            ahava_tokens_drop_locked("an error came on its connection",
                                     ahava_tokens.last_words[0]
                                     ? ahava_tokens.last_words
                                     : PQerrorMessage(pg));
            return;
        }

        pfd.revents = 0;

        if (poll(&pfd, 1, 0) <= 0) {
            return;
        }

        /* more than a heartbeat's worth of reads: we cannot keep up */
        if (i == 10000) {
            ahava_tokens_drop_locked("too many notifications to keep up",
                                     "");
            return;
        }
    }
}


/*
 * The notifications libpq parsed: evictions, or our own heartbeat back
 * (another worker's heartbeat, another marker, says nothing about ours)
 */
static void
ahava_tokens_heard_locked(PGconn *pg, int64_t now)
{
    PGnotify  *n;

    while ((n = PQnotifies(pg)) != NULL) {
        if (n->extra[0] != ':') {
            ahava_tokens_evict_locked(n->extra);
            ahava_tokens.epoch++;

        } else if (strcmp(n->extra, ahava_tokens.marker) == 0) {
            ahava_tokens.beat_heard = now;
            ahava_tokens.failing = 0;
        }

        PQfreemem(n);
    }
}


static int
ahava_tokens_usable_locked(int64_t now)
{
    return ahava_tokens.listener != NULL
           && ahava_tokens.trigger_ok > 0
           && ahava_tokens.beat_heard != 0
           && now - ahava_tokens.beat_heard <= AHAVA_TOKENS_DEAD_MS;
}


static void
ahava_tokens_drop_locked(const char *why, const char *error)
{
    char  err[AHAVA_ERR_LEN];

    snprintf(err, sizeof(err), "%s", error);
    err[strcspn(err, "\n")] = '\0';

    if (ahava_tokens.heard) {
        ahava_log("warn", "push tokens cache emptied and unused", "{s:s,s:s}",
                  "why", why, "error", err);
        ahava_tokens.heard = 0;
    }

    PQfinish(ahava_tokens.listener);
    ahava_tokens.listener = NULL;
    ahava_tokens.beating = 0;
    ahava_tokens.failed = 0;
    ahava_tokens.last_words[0] = '\0';

    ahava_tokens_clear_locked();
    ahava_tokens.epoch++;
}


/*
 * Before a batch: what was heard evicts.  Returns whether the cache may be
 * used now, and the epoch a fill must be sent at.
 */
int
ahava_tokens_sync(uint64_t *epoch)
{
    int64_t  now;
    int      ok;

    if (epoch) {
        *epoch = 0;
    }

    if (ahava_tokens.entries == NULL) {
        return 0;
    }

    pthread_mutex_lock(&ahava_tokens.lock);

    now = ahava_mono_ms();

    ahava_tokens_read_locked(now);

    ok = ahava_tokens_usable_locked(now);

    if (ok && !ahava_tokens.heard) {
        ahava_log("info", "push tokens cache in use: listening for changes",
                  "{s:i}", "capacity", ahava_tokens.capacity);
        ahava_tokens.heard = 1;
    }

    if (epoch) {
        *epoch = ahava_tokens.epoch;
    }

    pthread_mutex_unlock(&ahava_tokens.lock);

    return ok;
}


static ahava_tokens_entry_t *
ahava_tokens_bucket(const char *user)
{
    uint32_t  h;

    /* FNV-1a */
    for (h = 2166136261u; *user; user++) {
        h = (h ^ (u_char) *user) * 16777619u;
    }

    return &ahava_tokens.entries[(h % ahava_tokens.nbuckets)
                                 * AHAVA_TOKENS_WAYS];
}


/* a copy of the user's tokens (JSON text, to free), or NULL: not known */
char *
ahava_tokens_get(const char *user)
{
    ahava_tokens_entry_t  *e;
    char                  *copy;
    int64_t                now;
    int                    i;

    if (ahava_tokens.entries == NULL) {
        return NULL;
    }

    copy = NULL;

    pthread_mutex_lock(&ahava_tokens.lock);

    now = ahava_mono_ms();

    if (!ahava_tokens_usable_locked(now)) {
        pthread_mutex_unlock(&ahava_tokens.lock);
        return NULL;
    }

    e = ahava_tokens_bucket(user);

    for (i = 0; i < AHAVA_TOKENS_WAYS; i++) {
        if (e[i].tokens && strcmp(e[i].id, user) == 0
            && now - e[i].filled < AHAVA_TOKENS_TTL_MS)
        {
            copy = strdup(e[i].tokens);
            break;
        }
    }

    pthread_mutex_unlock(&ahava_tokens.lock);

    __atomic_fetch_add(copy ? &ahava_tokens.hits : &ahava_tokens.misses, 1,
                       __ATOMIC_RELAXED);

    return copy;
}


/* what a statement sent at epoch said; dropped if anything was evicted since */
void
ahava_tokens_put(const char *user, const char *tokens, uint64_t epoch)
{
    ahava_tokens_entry_t  *e, *slot;
    char                  *copy;
    size_t                 len;
    int                    i;

    len = strlen(user);

    if (ahava_tokens.entries == NULL || len > AHAVA_TOKENS_ID_LEN) {
        return;
    }

    copy = strdup(tokens);
    if (copy == NULL) {
        return;
    }

    pthread_mutex_lock(&ahava_tokens.lock);

    if (epoch != ahava_tokens.epoch
        || !ahava_tokens_usable_locked(ahava_mono_ms()))
    {
        pthread_mutex_unlock(&ahava_tokens.lock);
        free(copy);
        return;
    }

    /* the user's own slot, else a free one, else the oldest */
    e = ahava_tokens_bucket(user);
    slot = NULL;

    for (i = 0; i < AHAVA_TOKENS_WAYS; i++) {
        if (e[i].tokens && strcmp(e[i].id, user) == 0) {
            slot = &e[i];
            break;
        }

        if (slot == NULL || (slot->tokens && e[i].tokens == NULL)
            || (slot->tokens && e[i].tokens && e[i].filled < slot->filled))
        {
            slot = &e[i];
        }
    }

    free(slot->tokens);
    memcpy(slot->id, user, len + 1);
    slot->tokens = copy;
    slot->filled = ahava_mono_ms();

    pthread_mutex_unlock(&ahava_tokens.lock);
}


/* the worker changed a user's tokens itself (a pruned token) */
void
ahava_tokens_evict(const char *user)
{
    if (ahava_tokens.entries == NULL) {
        return;
    }

    pthread_mutex_lock(&ahava_tokens.lock);
    ahava_tokens_evict_locked(user);
    ahava_tokens.epoch++;
    pthread_mutex_unlock(&ahava_tokens.lock);
}


/* for /metrics; listening: whether the cache is in use now */
void
ahava_tokens_stats(uint64_t *hits, uint64_t *misses, int *capacity,
    int *listening)
{
    *hits = __atomic_load_n(&ahava_tokens.hits, __ATOMIC_RELAXED);
    *misses = __atomic_load_n(&ahava_tokens.misses, __ATOMIC_RELAXED);
    *capacity = ahava_tokens.capacity;

    if (ahava_tokens.entries == NULL) {
        *listening = 0;
        return;
    }

    pthread_mutex_lock(&ahava_tokens.lock);
    *listening = ahava_tokens_usable_locked(ahava_mono_ms());
    pthread_mutex_unlock(&ahava_tokens.lock);
}


static void
ahava_tokens_evict_locked(const char *user)
{
    ahava_tokens_entry_t  *e;
    int                    i;

    if (strlen(user) > AHAVA_TOKENS_ID_LEN) {
        return;
    }

    e = ahava_tokens_bucket(user);

    for (i = 0; i < AHAVA_TOKENS_WAYS; i++) {
        if (e[i].tokens && strcmp(e[i].id, user) == 0) {
            free(e[i].tokens);
            e[i].tokens = NULL;
        }
    }
}


static void
ahava_tokens_clear_locked(void)
{
    size_t  i;

    for (i = 0; i < ahava_tokens.nbuckets * AHAVA_TOKENS_WAYS; i++) {
        free(ahava_tokens.entries[i].tokens);
        ahava_tokens.entries[i].tokens = NULL;
    }
}
