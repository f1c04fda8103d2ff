
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
 * (tokens, isActive, a user added or deleted), and the cache LISTENs on a
 * connection of its own.  Before a runner consults the cache it reads what
 * that connection heard, so a push that starts after a change's
 * notification arrived (a millisecond or so after the commit) never uses
 * what the change replaced.  A fill is kept only if nothing was evicted
 * since its statement was sent: a change that committed after the
 * statement's snapshot either was heard by then or evicts the entry when
 * it is heard.  When the listening connection is lost, notifications may
 * have been missed: the cache is emptied and unused until it listens
 * again.  No entry is older than 60 s, for writers that fire no trigger
 * (TRUNCATE, session_replication_role = replica).
 *
 * Without the trigger (migration 008 not applied, or the trigger disabled)
 * the cache is not used; that is checked again every minute.  Entries: a
 * bounded table of twice the users asked for, four slots per hash bucket,
 * the oldest replaced.
 */


#include "ahava_worker.h"
#include "ahava_worker_run.h"

#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#define AHAVA_TOKENS_TTL_MS     60000
#define AHAVA_TOKENS_RETRY_MS   1000    /* listening connection lost */
#define AHAVA_TOKENS_RECHECK_MS 60000   /* no trigger */
#define AHAVA_TOKENS_ID_LEN     64      /* ahava_valid_id's bound */
#define AHAVA_TOKENS_WAYS       4


#define AHAVA_TOKENS_LISTEN_SQL                                               \
    "LISTEN ahava_push_tokens"

#define AHAVA_TOKENS_TRIGGER_SQL                                              \
    "SELECT 1 FROM pg_trigger WHERE tgrelid = 'users'::regclass"              \
    " AND tgname = 'users_push_tokens_notify' AND tgenabled <> 'D'"


typedef struct {
    char             id[AHAVA_TOKENS_ID_LEN + 1];
    char            *tokens;            /* JSON array text, as PostgreSQL */
    int64_t          filled;            /* ahava_mono_ms() */
} ahava_tokens_entry_t;


static struct {
    pthread_mutex_t        lock;        /* everything below */
    ahava_tokens_entry_t  *entries;
    size_t                 nbuckets;    /* AHAVA_TOKENS_WAYS entries each */
    uint64_t               epoch;       /* +1 per eviction by notice */

    PGconn                *listener;    /* LISTENing, trigger checked */
    int64_t                next_try;
    int                    warned;

    uint64_t               hits;
    uint64_t               misses;
} ahava_tokens = { .lock = PTHREAD_MUTEX_INITIALIZER };


static int ahava_tokens_read_locked(void);
static void ahava_tokens_listen_locked(ahava_conf_t *conf);
static void ahava_tokens_notice(void *arg, const char *message);
static void ahava_tokens_drop_locked(int64_t retry_ms);
static void ahava_tokens_evict_locked(const char *user);
static void ahava_tokens_clear_locked(void);


int
ahava_tokens_init(int capacity)
{
    if (capacity <= 0) {
        return 0;
    }

    /* twice as many slots as users: few buckets overflow */
    ahava_tokens.nbuckets = (capacity + 1) / 2;
    ahava_tokens.entries = calloc(ahava_tokens.nbuckets * AHAVA_TOKENS_WAYS,
                                  sizeof(ahava_tokens_entry_t));

    return ahava_tokens.entries ? 0 : -1;
}


void
ahava_tokens_free(void)
{
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
 * Listen (connecting if needed) and evict what was heard.  Returns whether
 * the cache may be used now, and the epoch a fill must be sent at.
 */
int
ahava_tokens_sync(ahava_conf_t *conf, uint64_t *epoch)
{
    PGnotify  *n;
    int        ok;

    if (ahava_tokens.entries == NULL) {
        return 0;
    }

    pthread_mutex_lock(&ahava_tokens.lock);

    if (ahava_tokens.listener == NULL
        && ahava_mono_ms() >= ahava_tokens.next_try)
    {
        ahava_tokens_listen_locked(conf);
    }

    if (ahava_tokens.listener && ahava_tokens_read_locked() != 0) {
        ahava_log("warn", "push tokens cache emptied: its connection was"
                  " lost", "{s:s}", "error",
                  PQerrorMessage(ahava_tokens.listener));
        ahava_tokens_drop_locked(AHAVA_TOKENS_RETRY_MS);
    }

    if (ahava_tokens.listener) {
        while ((n = PQnotifies(ahava_tokens.listener)) != NULL) {
            ahava_tokens_evict_locked(n->extra);
            ahava_tokens.epoch++;
            PQfreemem(n);
        }
    }

    ok = (ahava_tokens.listener != NULL);
    *epoch = ahava_tokens.epoch;

    pthread_mutex_unlock(&ahava_tokens.lock);

    return ok;
}


/*
 * What the socket holds, without blocking, up to its end: a terminated
 * session sends its error and then closes, and the close must be seen now
 * (the notices it would have brought are lost), not at the next read.
 */
static int
ahava_tokens_read_locked(void)
{
    struct pollfd   pfd;
    PGconn         *pg = ahava_tokens.listener;
    int             i;

    pfd.fd = PQsocket(pg);
    pfd.events = POLLIN;

    for (i = 0; i < 16; i++) {
        if (!PQconsumeInput(pg) || PQstatus(pg) != CONNECTION_OK) {
            return -1;
        }

        pfd.revents = 0;

        if (poll(&pfd, 1, 0) <= 0) {
            return 0;
        }
    }

    return 0;
}


/* the server's message before it closes (FATAL ...): our own line says it */
static void
ahava_tokens_notice(void *arg, const char *message)
{
}


static void
ahava_tokens_listen_locked(ahava_conf_t *conf)
{
    PGresult    *res;
    PGconn      *pg;
    int          ok;
    const char  *keys[] = { "dbname", "connect_timeout", "application_name",
                            "keepalives", "keepalives_idle",
                            "keepalives_interval", "keepalives_count", NULL };
    const char  *values[] = { NULL, "5", "ahava-worker", "1", "30", "10", "3",
                              NULL };

    ahava_tokens.next_try = ahava_mono_ms() + AHAVA_TOKENS_RETRY_MS;

    if (conf->database_url == NULL) {
        return;
    }

    values[0] = conf->database_url;
    pg = PQconnectdbParams(keys, values, 1);

    if (pg == NULL || PQstatus(pg) != CONNECTION_OK) {
        PQfinish(pg);
        return;                 /* the runners' own statements say why */
    }

    PQsetNoticeProcessor(pg, ahava_tokens_notice, NULL);

    res = PQexec(pg, AHAVA_TOKENS_TRIGGER_SQL);
    ok = (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1);
    PQclear(res);

    if (!ok) {
        if (!ahava_tokens.warned) {
            ahava_tokens.warned = 1;
            ahava_log("warn", "push tokens are read for every push: the"
                      " trigger users_push_tokens_notify is missing or"
                      " disabled (run ahava-migrate)", "{}");
        }

        PQfinish(pg);
        ahava_tokens.next_try = ahava_mono_ms() + AHAVA_TOKENS_RECHECK_MS;
        return;
    }

    res = PQexec(pg, AHAVA_TOKENS_LISTEN_SQL);
    ok = (PQresultStatus(res) == PGRES_COMMAND_OK);
    PQclear(res);

    if (!ok) {
        PQfinish(pg);
        return;
    }

    /* what changed while nobody listened is unknown: start empty */
    ahava_tokens_clear_locked();
    ahava_tokens.epoch++;
    ahava_tokens.listener = pg;
}


static void
ahava_tokens_drop_locked(int64_t retry_ms)
{
    PQfinish(ahava_tokens.listener);
    ahava_tokens.listener = NULL;
    ahava_tokens.next_try = ahava_mono_ms() + retry_ms;

    ahava_tokens_clear_locked();
    ahava_tokens.epoch++;
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
    now = ahava_mono_ms();

    pthread_mutex_lock(&ahava_tokens.lock);

    if (ahava_tokens.listener == NULL) {
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

    if (copy) {
        ahava_tokens.hits++;
    } else {
        ahava_tokens.misses++;
    }

    pthread_mutex_unlock(&ahava_tokens.lock);

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

    if (ahava_tokens.listener == NULL || epoch != ahava_tokens.epoch) {
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


void
ahava_tokens_stats(uint64_t *hits, uint64_t *misses, size_t *capacity)
{
    pthread_mutex_lock(&ahava_tokens.lock);
    *hits = ahava_tokens.hits;
    *misses = ahava_tokens.misses;
    *capacity = ahava_tokens.nbuckets * 2;     /* the users asked for */
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
