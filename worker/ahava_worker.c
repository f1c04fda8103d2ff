
/*
 * Copyright (C) Ahava
 */


/*
 * ahava-worker: configuration, the queue runners, lock renewal and the
 * stalled-job check, signals.
 *
 * Each queue runs ceil(concurrency / batch) runner threads.  A runner
 * finishes what it did and fetches its next jobs in one script call
 * (ahava_worker_bullmq.c), runs them, and when there is nothing to fetch
 * blocks on the queue's marker like a BullMQ worker.  So a process never
 * holds more than the queue's concurrency of jobs, and the rate limit lives
 * in Redis, shared by every process (ours and Node's) on the queue.
 *
 * SIGTERM/SIGINT: runners finish the jobs in hand, report them, take no
 * more, and the process exits 0.
 */


#include "ahava_worker.h"
#include "ahava_worker_bullmq.h"
#include "ahava_worker_run.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>



#define AHAVA_ITEM_LEN        64
#define AHAVA_LOG_LEN         4096
#define AHAVA_STACK_LIMIT     10


static void ahava_usage(void);
static int ahava_conf_set(ahava_main_t *m, const char *key,
    const char *value, const char *where);
static int ahava_conf_file(ahava_main_t *m, const char *path);
static int ahava_conf_env(ahava_main_t *m);
static int ahava_conf_finish(ahava_main_t *m);
static void *ahava_runner(void *arg);
static void ahava_runner_jobs(ahava_runner_t *r, ahava_bq_fetched_t *out);
static void ahava_runner_finish(ahava_runner_t *r, ahava_job_t *job,
    ahava_bq_job_t *bj, json_t *opts, ahava_job_rc_e rc, char *result,
    const char *err, double ms);
static void ahava_runner_sent(ahava_runner_t *r);
static void ahava_runner_backoff(ahava_runner_t *r, long *backoff);
static void *ahava_keeper(void *arg);
static void ahava_wait(ahava_main_t *m, long ms, int *flag);
static void ahava_log_completed(const char *queue, const char *id,
    const char *name, long attempt, double ms);


ahava_main_t  ahava_main;


static ahava_queue_t  ahava_queues[] = {

    /*
     * SPEC §9: concurrency, rate (per minute), batch (jobs a runner takes
     * at once); what a job's own removeOnComplete/removeOnFail does not
     * say is kept, as by a BullMQ worker without those options
     */
#define AHAVA_KEEP_ALL  { .count = -1, .age = 0, .limit = 1000 }

    /* generate-pdf: its export row must say FAILED even when it never ran */
    { .name = "pdf-export", .concurrency = 2,
      .rate_max = 10, .rate_duration = 60000, .batch = 1,
      .process = ahava_pdf_process, .give_up = ahava_pdf_give_up,
      .keep_completed = AHAVA_KEEP_ALL, .keep_failed = AHAVA_KEEP_ALL },

    /* send-email */
    { .name = "email", .concurrency = 5,
      .rate_max = 100, .rate_duration = 60000, .batch = 1,
      .process = ahava_email_process,
      .keep_completed = AHAVA_KEEP_ALL, .keep_failed = AHAVA_KEEP_ALL },

    /* send-push; Expo takes 100 messages a request: a runner sends its
     * jobs together */
    { .name = "push-notification", .concurrency = 10,
      .rate_max = 100, .rate_duration = 60000, .batch = 5,
      .process = ahava_push_process,
      .process_batch = ahava_push_process_batch,
      .keep_completed = AHAVA_KEEP_ALL, .keep_failed = AHAVA_KEEP_ALL },

#undef AHAVA_KEEP_ALL
};


int
main(int argc, char **argv)
{
    ahava_main_t        *m = &ahava_main;
    pthread_condattr_t   cattr;
    sigset_t             set;
    int            c, sig, i, k;
    const char    *file;

    m->conf = &m->conf_storage;
    m->queues = ahava_queues;
    m->nqueues = sizeof(ahava_queues) / sizeof(ahava_queues[0]);
    m->lock_ms = 30000;
    m->stalled_ms = 30000;
    m->prefix = strdup("bull");
    m->metrics_listen = strdup("127.0.0.1:9465");
    m->conf->push_token_cache = 10000;

    /* waits are timed on the monotonic clock: a clock step must not
     * stall the lock renewal */
    pthread_mutex_init(&m->stop_lock, NULL);
    pthread_condattr_init(&cattr);
    pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
    pthread_cond_init(&m->stop_cond, &cattr);
    pthread_condattr_destroy(&cattr);

    file = getenv("AHAVA_WORKER_CONFIG");

    while ((c = getopt(argc, argv, "c:o:h")) != -1) {
        switch (c) {
        case 'c':
            file = optarg;
            break;
        case 'o':
            break;              /* applied after the file and the env */
        default:
            ahava_usage();
            return c == 'h' ? 0 : 2;
        }
    }

    if (file && ahava_conf_file(m, file) != 0) {
        return 2;
    }

    if (ahava_conf_env(m) != 0) {
        return 2;
    }

    optind = 1;

    while ((c = getopt(argc, argv, "c:o:h")) != -1) {
        char  *eq;

        if (c != 'o') {
            continue;
        }

        eq = strchr(optarg, '=');
        if (eq == NULL) {
            fprintf(stderr, "ahava-worker: -o wants key=value, not \"%s\"\n",
                    optarg);
            return 2;
        }

        *eq = '\0';
        if (ahava_conf_set(m, optarg, eq + 1, "-o") != 0) {
            return 2;
        }
    }

    if (ahava_conf_finish(m) != 0) {
        return 2;
    }

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
        fprintf(stderr, "ahava-worker: curl_global_init failed\n");
        return 1;
    }

    ahava_bq_init();

    /* signals are taken by this thread only, with sigwait() */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    /* a bad metrics_listen is a configuration error: before any job */
    if (ahava_http_start(m) != 0) {
        return 2;
    }

    /* the push tokens cache, for a process that sends pushes */
    for (i = 0; i < m->nqueues; i++) {
        if (m->queues[i].enabled
            && m->queues[i].process_batch == ahava_push_process_batch)
        {
            break;
        }
    }

    if (i < m->nqueues && m->conf->database_url) {
        if (ahava_tokens_init(m->conf->push_token_cache) != 0) {
            fprintf(stderr, "ahava-worker: out of memory for"
                    " push_token_cache\n");
            return 1;
        }

        if (ahava_tokens_start(m->conf) != 0) {
            fprintf(stderr, "ahava-worker: pthread_create failed\n");
            return 1;
        }
    }

    for (i = 0; i < m->nqueues; i++) {
        ahava_queue_t  *q = &m->queues[i];

        if (!q->enabled) {
            continue;
        }

        q->nrunners = (q->concurrency + q->batch - 1) / q->batch;
        q->runners = calloc(q->nrunners, sizeof(ahava_runner_t));
        if (q->runners == NULL) {
            return 1;
        }

        for (k = 0; k < q->nrunners; k++) {
            ahava_runner_t  *r = &q->runners[k];

            r->main = m;
            r->q = q;
            r->index = k;
            r->batch = (k == q->nrunners - 1)
                       ? q->concurrency - k * q->batch : q->batch;
            r->t.conf = m->conf;
            r->t.queue = q->name;
            pthread_mutex_init(&r->lock, NULL);

            if (pthread_create(&r->tid, NULL, ahava_runner, r) != 0) {
                fprintf(stderr, "ahava-worker: pthread_create failed\n");
                return 1;
            }
        }
    }

    if (pthread_create(&m->keeper, NULL, ahava_keeper, m) != 0) {
        fprintf(stderr, "ahava-worker: cannot start\n");
        return 1;
    }

    ahava_log("info", "ahava-worker started", "{s:s,s:s,s:i}",
              "worker", m->worker_name, "metrics", m->metrics_listen,
              "pid", (int) getpid());

    for ( ;; ) {
        if (sigwait(&set, &sig) != 0) {
            continue;
        }

        if (sig == SIGTERM || sig == SIGINT) {
            break;
        }
    }

    ahava_log("info", "stopping: finishing the jobs in hand", "{s:s}",
              "signal", sig == SIGTERM ? "SIGTERM" : "SIGINT");

    pthread_mutex_lock(&m->stop_lock);
    __atomic_store_n(&m->stopping, 1, __ATOMIC_SEQ_CST);
    pthread_cond_broadcast(&m->stop_cond);
    pthread_mutex_unlock(&m->stop_lock);

    for (i = 0; i < m->nqueues; i++) {
        for (k = 0; k < m->queues[i].nrunners; k++) {
            pthread_join(m->queues[i].runners[k].tid, NULL);
        }
    }

    /* the keeper renewed the locks of the jobs finishing until now */
    pthread_mutex_lock(&m->stop_lock);
    m->keeper_stop = 1;
    pthread_cond_broadcast(&m->stop_cond);
    pthread_mutex_unlock(&m->stop_lock);

    pthread_join(m->keeper, NULL);

    /* /health answered "stopping" during the drain; now it goes */
    ahava_http_stop(m);

    ahava_log("info", "ahava-worker stopped", NULL);

    for (i = 0; i < m->nqueues; i++) {
        for (k = 0; k < m->queues[i].nrunners; k++) {
            ahava_thread_close(&m->queues[i].runners[k].t);
            pthread_mutex_destroy(&m->queues[i].runners[k].lock);
        }
        free(m->queues[i].runners);
    }

    ahava_tokens_free();
    ahava_conf_free(m);
    curl_global_cleanup();

    return 0;
}


static void
ahava_usage(void)
{
    fprintf(stderr,
        "usage: ahava-worker [-c file] [-o key=value]...\n"
        "  drains the queues of SPEC §9 (pdf-export, email,"
        " push-notification)\n"
        "  settings: the file, then the environment (REDIS_URL,"
        " DATABASE_URL,\n"
        "  ENCRYPTION_KEY, SMTP_URL, SMTP_FROM, EXPO_PUSH_URL,"
        " AHAVA_DATA_DIR, ...),\n"
        "  then -o; see README \"ahava-worker\" for every key\n");
}


/* Settings ------------------------------------------------------------- */


static int
ahava_conf_str(char **dst, const char *value)
{
    free(*dst);
    *dst = (value && *value) ? strdup(value) : NULL;
    return 0;
}


static int
ahava_conf_int(int *dst, const char *key, const char *value, int min,
    int max, const char *where)
{
    char  *end;
    long   v;

    errno = 0;
    v = strtol(value, &end, 10);

    if (errno || end == value || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "ahava-worker: %s: \"%s\" wants an integer"
                " from %d to %d, not \"%s\"\n", where, key, min, max, value);
        return -1;
    }

    *dst = (int) v;
    return 0;
}


static int
ahava_conf_keys(ahava_main_t *m, const char *value, int older,
    const char *where)
{
    ahava_conf_t  *conf = m->conf;
    const char    *p, *e;
    size_t         n;

    if (!older) {
        if (value == NULL || *value == '\0') {
            return 0;
        }

        if (ngx_ahava_crypto_key_decode((const u_char *) value,
                                        strlen(value), conf->keys[0]) != 0)
        {
            fprintf(stderr, "ahava-worker: %s: the encryption key is not"
                    " base64 of 32 bytes\n", where);
            return -1;
        }

        m->have_key = 1;
        return 0;
    }

    m->nold = 0;

    for (p = value; p && *p; p = e ? e + 1 : NULL) {
        e = strchr(p, ',');
        n = e ? (size_t) (e - p) : strlen(p);

        if (n == 0) {
            continue;
        }

        if (m->nold + 1 >= AHAVA_MAX_KEYS
            || ngx_ahava_crypto_key_decode((const u_char *) p, n,
                                           conf->keys[1 + m->nold]) != 0)
        {
            fprintf(stderr, "ahava-worker: %s: an older encryption key is"
                    " not base64 of 32 bytes (or more than %d)\n", where,
                    AHAVA_MAX_KEYS - 1);
            return -1;
        }

        m->nold++;
    }

    return 0;
}


static int
ahava_conf_set(ahava_main_t *m, const char *key, const char *value,
    const char *where)
{
    ahava_conf_t   *conf = m->conf;
    ahava_queue_t  *q;
    const char     *dot, *field;
    size_t          n;
    int             i, v;

    static const struct {
        const char  *key;
        size_t       off;
    } strs[] = {
        { "redis_url", offsetof(ahava_conf_t, redis_url) },
        { "database_url", offsetof(ahava_conf_t, database_url) },
        { "smtp_url", offsetof(ahava_conf_t, smtp_url) },
        { "smtp_from", offsetof(ahava_conf_t, smtp_from) },
        { "smtp_ca_file", offsetof(ahava_conf_t, smtp_ca_file) },
        { "expo_push_url", offsetof(ahava_conf_t, expo_push_url) },
        { "expo_access_token", offsetof(ahava_conf_t, expo_access_token) },
        { "data_dir", offsetof(ahava_conf_t, data_dir) },
        { "uploads_dir", offsetof(ahava_conf_t, uploads_dir) },
        { "pdf_font", offsetof(ahava_conf_t, font) },
    };

    for (i = 0; i < (int) (sizeof(strs) / sizeof(strs[0])); i++) {
        if (strcmp(key, strs[i].key) == 0) {
            return ahava_conf_str((char **) ((char *) conf + strs[i].off),
                                  value);
        }
    }

    if (strcmp(key, "encryption_key") == 0) {
        return ahava_conf_keys(m, value, 0, where);
    }

    if (strcmp(key, "encryption_keys_old") == 0) {
        return ahava_conf_keys(m, value, 1, where);
    }

    if (strcmp(key, "metrics_listen") == 0) {
        return ahava_conf_str(&m->metrics_listen, value);
    }

    if (strcmp(key, "prefix") == 0) {
        return ahava_conf_str(&m->prefix, value);
    }

    if (strcmp(key, "worker_name") == 0) {
        return ahava_conf_str(&m->worker_name, value);
    }

    if (strcmp(key, "lock_duration_ms") == 0) {
        return ahava_conf_int(&m->lock_ms, key, value, 1000, 3600000, where);
    }

    if (strcmp(key, "push_token_cache") == 0) {
        return ahava_conf_int(&conf->push_token_cache, key, value, 0,
                              1000000, where);
    }

    if (strcmp(key, "stalled_interval_ms") == 0) {
        return ahava_conf_int(&m->stalled_ms, key, value, 500, 3600000,
                              where);
    }

    if (strcmp(key, "queues") == 0) {
        for (i = 0; i < m->nqueues; i++) {
            m->queues[i].enabled = 0;
        }

        for (field = value; field && *field; field = dot ? dot + 1 : NULL) {
            dot = strchr(field, ',');
            n = dot ? (size_t) (dot - field) : strlen(field);

            for (i = 0; i < m->nqueues; i++) {
                if (strlen(m->queues[i].name) == n
                    && strncmp(m->queues[i].name, field, n) == 0)
                {
                    m->queues[i].enabled = 1;
                    break;
                }
            }

            if (i == m->nqueues && n) {
                fprintf(stderr, "ahava-worker: %s: unknown queue \"%.*s\"\n",
                        where, (int) n, field);
                return -1;
            }
        }

        for (i = 0; i < m->nqueues && !m->queues[i].enabled; i++) {
            /* void */
        }

        if (i == m->nqueues) {
            fprintf(stderr, "ahava-worker: %s: \"queues\" names no queue\n",
                    where);
            return -1;
        }

        m->queues_set = 1;
        return 0;
    }

    /* <queue>.<field> */
    dot = strrchr(key, '.');

    if (dot) {
        for (i = 0; i < m->nqueues; i++) {
            q = &m->queues[i];
            n = strlen(q->name);

            if ((size_t) (dot - key) != n || strncmp(key, q->name, n) != 0) {
                continue;
            }

            field = dot + 1;

            if (strcmp(field, "concurrency") == 0) {
                return ahava_conf_int(&q->concurrency, key, value, 1,
                                      AHAVA_BQ_MAX_BATCH * 10, where);
            }

            if (strcmp(field, "batch") == 0) {
                return ahava_conf_int(&q->batch, key, value, 1,
                                      AHAVA_BQ_MAX_BATCH, where);
            }

            if (strcmp(field, "rate_max") == 0) {
                return ahava_conf_int(&q->rate_max, key, value, 0,
                                      1000000000, where);
            }

            if (strcmp(field, "rate_duration_ms") == 0) {
                return ahava_conf_int(&q->rate_duration, key, value, 1,
                                      86400000, where);
            }

            if (strcmp(field, "keep_completed") == 0
                || strcmp(field, "keep_failed") == 0)
            {
                if (ahava_conf_int(&v, key, value, -1, 1000000000, where)
                    != 0)
                {
                    return -1;
                }

                if (field[5] == 'c') {
                    q->keep_completed.count = v;
                } else {
                    q->keep_failed.count = v;
                }

                return 0;
            }
        }
    }

    fprintf(stderr, "ahava-worker: %s: unknown setting \"%s\"\n", where, key);
    return -1;
}


/* "key = value" lines; # starts a comment */
static int
ahava_conf_file(ahava_main_t *m, const char *path)
{
    FILE   *f;
    char    line[4096], where[512], *k, *v, *e;
    int     n, rc;

    f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "ahava-worker: %s: %s\n", path, strerror(errno));
        return -1;
    }

    rc = 0;
    n = 0;

    while (fgets(line, sizeof(line), f)) {
        n++;
        snprintf(where, sizeof(where), "%s:%d", path, n);

        k = line;
        while (isspace((unsigned char) *k)) {
            k++;
        }

        if (*k == '#' || *k == '\0') {
            continue;
        }

        /* "key = value   # a comment" */
        for (e = k; *e; e++) {
            if (*e == '#' && e > k && isspace((unsigned char) e[-1])) {
                *e = '\0';
                break;
            }
        }

        e = k + strlen(k);
        while (e > k && isspace((unsigned char) e[-1])) {
            *--e = '\0';
        }

        v = strchr(k, '=');
        if (v == NULL) {
            fprintf(stderr, "ahava-worker: %s: expected \"key = value\"\n",
                    where);
            rc = -1;
            break;
        }

        e = v;
        *v++ = '\0';

        while (e > k && isspace((unsigned char) e[-1])) {
            *--e = '\0';
        }

        while (isspace((unsigned char) *v)) {
            v++;
        }

        if (ahava_conf_set(m, k, v, where) != 0) {
            rc = -1;
            break;
        }
    }

    fclose(f);
    return rc;
}


/* SPEC §1's environment */
static int
ahava_conf_env(ahava_main_t *m)
{
    size_t       i;
    const char  *v;

    static const char  *env[][2] = {
        { "REDIS_URL", "redis_url" },
        { "DATABASE_URL", "database_url" },
        { "ENCRYPTION_KEY", "encryption_key" },
        { "ENCRYPTION_KEYS_OLD", "encryption_keys_old" },
        { "SMTP_URL", "smtp_url" },
        { "SMTP_FROM", "smtp_from" },
        { "SMTP_CA_FILE", "smtp_ca_file" },
        { "EXPO_PUSH_URL", "expo_push_url" },
        { "EXPO_ACCESS_TOKEN", "expo_access_token" },
        { "AHAVA_DATA_DIR", "data_dir" },
        { "AHAVA_WORKER_METRICS", "metrics_listen" },
        { "AHAVA_WORKER_QUEUES", "queues" },
    };

    for (i = 0; i < sizeof(env) / sizeof(env[0]); i++) {
        v = getenv(env[i][0]);

        /* set but empty is unset, as for the nginx side's variables */
        if (v && *v && ahava_conf_set(m, env[i][1], v, env[i][0]) != 0) {
            return -1;
        }
    }

    return 0;
}


static int
ahava_conf_finish(ahava_main_t *m)
{
    ahava_conf_t   *conf = m->conf;
    ahava_queue_t  *q;
    char            rnd[17];
    char            host[256], buf[1024];
    int             i, k;

    if (conf->redis_url == NULL) {
        conf->redis_url = strdup("redis://127.0.0.1:6379");
    }

    if (conf->data_dir == NULL) {
        conf->data_dir = strdup("./.run");
    }

    if (conf->uploads_dir == NULL) {
        snprintf(buf, sizeof(buf), "%s/uploads", conf->data_dir);
        conf->uploads_dir = strdup(buf);
    }

    if (m->have_key) {
        conf->nkeys = 1 + m->nold;
        for (k = 0; k < (int) conf->nkeys; k++) {
            conf->key_list[k] = conf->keys[k];
        }
    }

    if (ahava_redis_url_parse(conf->redis_url, &m->redis) != 0) {
        fprintf(stderr, "ahava-worker: REDIS_URL: expected"
                " redis://[[user]:password@]host[:port][/db], not \"%s\"\n",
                conf->redis_url);
        return -1;
    }

    /* lock tokens: <random>-<pid>:<n>, opaque to BullMQ */
    if (ahava_random_hex(rnd, 8) != 0) {
        return -1;
    }

    snprintf(m->token_base, sizeof(m->token_base), "%s-%d", rnd,
             (int) getpid());

    if (m->worker_name == NULL) {
        if (gethostname(host, sizeof(host)) != 0) {
            strcpy(host, "localhost");
        }
        host[sizeof(host) - 1] = '\0';
        snprintf(buf, sizeof(buf), "ahava-worker@%s:%d", host,
                 (int) getpid());
        m->worker_name = strdup(buf);
    }

    for (i = 0; i < m->nqueues; i++) {
        q = &m->queues[i];

        if (!m->queues_set) {
            q->enabled = 1;
        }

        if (q->batch > q->concurrency) {
            q->batch = q->concurrency;
        }

        q->bq.name = q->name;
        q->bq.lock_ms = m->lock_ms;
        q->bq.rate_max = q->rate_max;
        q->bq.rate_duration = q->rate_duration;

        if ((size_t) snprintf(q->bq.prefix, sizeof(q->bq.prefix), "%s:%s:",
                              m->prefix, q->name)
            >= sizeof(q->bq.prefix))
        {
            fprintf(stderr, "ahava-worker: prefix too long\n");
            return -1;
        }

    }

    return 0;
}


void
ahava_conf_free(ahava_main_t *m)
{
    ahava_conf_t  *conf = m->conf;

    free(conf->redis_url);
    free(conf->database_url);
    free(conf->smtp_url);
    free(conf->smtp_from);
    free(conf->smtp_ca_file);
    free(conf->expo_push_url);
    free(conf->expo_access_token);
    free(conf->data_dir);
    free(conf->uploads_dir);
    free(conf->font);
    free(m->metrics_listen);
    free(m->prefix);
    free(m->worker_name);
    free(m->redis.host);
    free(m->redis.user);
    free(m->redis.password);
}


/* Runners -------------------------------------------------------------- */


int64_t
ahava_mono_ms(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


int64_t
ahava_now_ms(void)
{
    struct timeval  tv;

    gettimeofday(&tv, NULL);
    return (int64_t) tv.tv_sec * 1000 + tv.tv_usec / 1000;
}


/* sleeps ms, or less when *flag is set (stopping, or keeper_stop) */
static void
ahava_wait(ahava_main_t *m, long ms, int *flag)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000;

    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }

    pthread_mutex_lock(&m->stop_lock);

    if (!*flag) {
        pthread_cond_timedwait(&m->stop_cond, &m->stop_lock, &ts);
    }

    pthread_mutex_unlock(&m->stop_lock);
}


static int
ahava_stopping(ahava_main_t *m)
{
    return __atomic_load_n(&m->stopping, __ATOMIC_SEQ_CST);
}


static void *
ahava_runner(void *arg)
{
    ahava_runner_t      *r = arg;
    ahava_main_t        *m = r->main;
    ahava_queue_t       *q = r->q;
    ahava_bq_fetch_t     fetch;
    ahava_bq_fetched_t  *out;
    redisReply          *br;
    char                 err[AHAVA_ERR_LEN], tmo[32];
    long                 backoff, wait;
    int64_t              now;
    int                  rc, i;

    out = calloc(1, sizeof(ahava_bq_fetched_t));
    if (out == NULL) {
        return NULL;
    }

    backoff = 100;

    fetch.token_base = m->token_base;
    fetch.worker_name = m->worker_name;

    for ( ;; ) {

        if (r->t.redis == NULL) {
            if (ahava_stopping(m) && r->nfin == 0) {
                break;
            }

            r->t.redis = ahava_redis_connect(&m->redis, err, sizeof(err));

            if (r->t.redis == NULL) {
                ahava_log_limited(&q->log_gate, "error",
                                  "redis unreachable", "{s:s,s:s}",
                                  "queue", q->name, "error", err);
                ahava_runner_backoff(r, &backoff);
                continue;
            }
        }

        fetch.n = ahava_stopping(m) ? 0 : r->batch;
        fetch.token_seq = __atomic_fetch_add(&m->token_seq, r->batch,
                                             __ATOMIC_RELAXED);
        now = ahava_now_ms();

        rc = ahava_bq_step(r->t.redis, &q->bq, now, r->fin, r->nfin,
                           fetch.n ? &fetch : NULL, out, err, sizeof(err));

        if (rc != 0) {
            ahava_log_limited(&q->log_gate, "error", "queue step failed",
                              "{s:s,s:s}", "queue", q->name, "error", err);

            /*
             * an error reply (-MISCONF, -READONLY...) keeps the connection;
             * a lost one is replaced.  Jobs the lost reply carried stay
             * locked until their lock runs out; stalled recovery takes
             * them back.
             */
            if (r->t.redis->err) {
                redisFree(r->t.redis);
                r->t.redis = NULL;
            }

            ahava_runner_backoff(r, &backoff);
            continue;
        }

        backoff = 100;

        /* counted once Redis took them: a result refused for a lost lock
         * is another worker's attempt to count */
        for (i = 0; i < r->nfin; i++) {
            if (r->fin[i].code != 0) {
                __atomic_fetch_add(&q->m.lock_lost, 1, __ATOMIC_RELAXED);
                ahava_log("warn", "job result discarded: its lock was lost",
                          "{s:s,s:s,s:I}", "queue", q->name,
                          "jobId", r->fin[i].id,
                          "code", (json_int_t) r->fin[i].code);
                continue;
            }

            switch (r->fin[i].kind[0]) {
            case 'c':
                __atomic_fetch_add(&q->m.completed, 1, __ATOMIC_RELAXED);
                break;
            case 'f':
                __atomic_fetch_add(&q->m.failed, 1, __ATOMIC_RELAXED);
                break;
            default: /* "d", "r": attempted again */
                __atomic_fetch_add(&q->m.retried, 1, __ATOMIC_RELAXED);
            }
        }

        ahava_runner_sent(r);

        if (out->njobs) {
            ahava_runner_jobs(r, out);
            freeReplyObject(out->reply);
            continue;
        }

        freeReplyObject(out->reply);

        if (ahava_stopping(m)) {
            break;
        }

        if (out->limited_ms > 0) {
            ahava_wait(m, out->limited_ms > 1000 ? 1000 : out->limited_ms,
                       &m->stopping);
            continue;
        }

        /* idle: wait on the marker as BullMQ's workers do, 1 s at most so
         * that a SIGTERM is seen */
        wait = 1000;
        if (out->next_delayed) {
            wait = (long) (out->next_delayed - ahava_now_ms());
            wait = wait < 1 ? 1 : (wait > 1000 ? 1000 : wait);
        }

        snprintf(tmo, sizeof(tmo), "%.3f", wait / 1000.0);
        br = redisCommand(r->t.redis, "BZPOPMIN %smarker %s", q->bq.prefix,
                          tmo);

        if (br == NULL) {
            redisFree(r->t.redis);
            r->t.redis = NULL;
            continue;
        }

        if (br->type == REDIS_REPLY_ERROR) {
            ahava_log_limited(&q->log_gate, "error", "queue wait failed",
                              "{s:s,s:s}", "queue", q->name, "error", br->str);
            ahava_runner_backoff(r, &backoff);
        }

        freeReplyObject(br);
    }

    free(out);
    ngx_ahava_crypto_thread_done();

    return NULL;
}


/*
 * After a failure: wait, longer each time (100 ms to 2 s).  While stopping
 * with finishes not sent, give up after 20 failures or 20 s: their locks
 * run out and stalled recovery hands the jobs to another worker.
 */
#define AHAVA_STOP_GIVE_UP  20000
static void
ahava_runner_backoff(ahava_runner_t *r, long *backoff)
{
    ahava_main_t  *m = r->main;

    /* a stopping runner still waits: on the flag that is set after it */
    ahava_wait(m, *backoff, ahava_stopping(m) ? &m->keeper_stop
                                              : &m->stopping);
    *backoff = *backoff * 2 > 2000 ? 2000 : *backoff * 2;

    if (ahava_stopping(m) && r->nfin && r->stop_since == 0) {
        r->stop_since = ahava_now_ms();
    }

    /* a bound in time too: each try may wait out a connect timeout, and
     * a stop has seconds, not minutes, before a SIGKILL */
    if (ahava_stopping(m) && r->nfin
        && (++r->stop_tries > 20
            || ahava_now_ms() - r->stop_since > AHAVA_STOP_GIVE_UP))
    {
        ahava_log("error", "stopping without reporting finished jobs",
                  "{s:s,s:i}", "queue", r->q->name, "jobs", r->nfin);
        ahava_runner_sent(r);
    }
}


/* the finishes were sent (or given up): free what they held */
static void
ahava_runner_sent(ahava_runner_t *r)
{
    int  i;

    for (i = 0; i < r->nfin; i++) {
        free((char *) r->fin[i].id);
        free((char *) r->fin[i].token);
        free((char *) r->fin[i].value);
        free((char *) r->fin[i].stacktrace);
    }

    r->nfin = 0;
    r->stop_tries = 0;
    r->stop_since = 0;
}


static void
ahava_runner_jobs(ahava_runner_t *r, ahava_bq_fetched_t *out)
{
    ahava_queue_t   *q = r->q;
    ahava_job_t      jobs[AHAVA_BQ_MAX_BATCH], *run[AHAVA_BQ_MAX_BATCH];
    json_t          *opts[AHAVA_BQ_MAX_BATCH];
    ahava_job_rc_e   rcs[AHAVA_BQ_MAX_BATCH];
    char            *results[AHAVA_BQ_MAX_BATCH];
    char             errs[AHAVA_BQ_MAX_BATCH][AHAVA_ERR_LEN];
    int              idx[AHAVA_BQ_MAX_BATCH];
    struct timespec  t0, t1;
    double           ms;
    json_t          *a;
    int              i, n, nrun;

    n = out->njobs;

    /* the keeper renews these locks while we work */
    pthread_mutex_lock(&r->lock);
    for (i = 0; i < n; i++) {
        r->held_id[i] = out->jobs[i].id;
        r->held_token[i] = out->jobs[i].token;
    }
    r->nheld = n;
    pthread_mutex_unlock(&r->lock);

    __atomic_fetch_add(&q->m.inflight, n, __ATOMIC_RELAXED);

    nrun = 0;

    for (i = 0; i < n; i++) {
        ahava_bq_job_t  *bj = &out->jobs[i];

        memset(&jobs[i], 0, sizeof(ahava_job_t));
        jobs[i].queue = q->name;
        jobs[i].id = (char *) bj->id;
        jobs[i].name = (char *) bj->name;
        jobs[i].attempts_made = bj->atm;
        results[i] = NULL;
        errs[i][0] = '\0';

        opts[i] = json_loads(bj->opts, 0, NULL);
        if (!json_is_object(opts[i])) {
            json_decref(opts[i]);
            opts[i] = json_object();
        }

        a = json_object_get(opts[i], "attempts");
        jobs[i].attempts = json_is_integer(a) ? json_integer_value(a) : 0;
        jobs[i].last_attempt = (bj->atm + 1 >= jobs[i].attempts);

        jobs[i].data = json_loads(bj->data, 0, NULL);

        if (bj->defa[0]) {
            /* stalled too often (§8): failed at once, never run again */
            rcs[i] = AHAVA_JOB_FATAL;
            snprintf(errs[i], AHAVA_ERR_LEN, "%s", bj->defa);
            jobs[i].last_attempt = 1;

            if (q->give_up) {
                q->give_up(&r->t, &jobs[i], bj->defa);
            }

            continue;
        }

        if (jobs[i].data == NULL) {
            rcs[i] = AHAVA_JOB_FATAL;
            snprintf(errs[i], AHAVA_ERR_LEN, "the job's data is not JSON");
            continue;
        }

        idx[nrun] = i;
        run[nrun++] = &jobs[i];
    }

    clock_gettime(CLOCK_MONOTONIC, &t0);

    if (nrun > 1 && q->process_batch) {
        ahava_job_rc_e  brc[AHAVA_BQ_MAX_BATCH];
        char           *bres[AHAVA_BQ_MAX_BATCH];
        char            berr[AHAVA_BQ_MAX_BATCH][AHAVA_ERR_LEN];

        q->process_batch(&r->t, run, nrun, brc, bres, berr);

        for (i = 0; i < nrun; i++) {
            rcs[idx[i]] = brc[i];
            results[idx[i]] = bres[i];
            memcpy(errs[idx[i]], berr[i], AHAVA_ERR_LEN);
        }

        clock_gettime(CLOCK_MONOTONIC, &t1);
        ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;

        for (i = 0; i < n; i++) {
            ahava_runner_finish(r, &jobs[i], &out->jobs[i], opts[i], rcs[i],
                                results[i], errs[i], ms);
        }

    } else {
        int  k = 0;

        for (i = 0; i < n; i++) {
            if (k < nrun && idx[k] == i) {
                k++;
                rcs[i] = q->process(&r->t, &jobs[i], &results[i], errs[i],
                                    AHAVA_ERR_LEN);
            }

            clock_gettime(CLOCK_MONOTONIC, &t1);
            ms = (t1.tv_sec - t0.tv_sec) * 1e3
                 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
            t0 = t1;

            ahava_runner_finish(r, &jobs[i], &out->jobs[i], opts[i], rcs[i],
                                results[i], errs[i], ms);
        }
    }

    for (i = 0; i < n; i++) {
        json_decref(jobs[i].data);
        json_decref(opts[i]);
    }

    __atomic_fetch_sub(&q->m.inflight, n, __ATOMIC_RELAXED);

    pthread_mutex_lock(&r->lock);
    r->nheld = 0;
    pthread_mutex_unlock(&r->lock);
}


/* what BullMQ's worker decides after an attempt (§6, §7) */
static void
ahava_runner_finish(ahava_runner_t *r, ahava_job_t *job, ahava_bq_job_t *bj,
    json_t *opts, ahava_job_rc_e rc, char *result, const char *err,
    double ms)
{
    ahava_queue_t      *q = r->q;
    ahava_bq_finish_t  *f;
    json_t             *st;
    int64_t             delay;
    size_t              n;

    f = &r->fin[r->nfin++];
    memset(f, 0, sizeof(ahava_bq_finish_t));

    f->id = strdup(bj->id);
    f->token = strdup(bj->token);
    f->attempts = job->attempts;

    ahava_metrics_observe(&q->m, ms);

    if (rc == AHAVA_JOB_DONE) {
        f->kind = "c";
        f->value = result ? result : strdup("null");
        ahava_bq_keep(opts, "removeOnComplete", &q->keep_completed, &f->keep);

        ahava_log_completed(q->name, bj->id, bj->name, bj->atm + 1, ms);
        return;
    }

    free(result);

    f->value = strdup(err[0] ? err : "failed");

    /* stacktrace: the job's, with this failure, the last 10 kept */
    st = json_loads(bj->stacktrace, 0, NULL);
    if (!json_is_array(st)) {
        json_decref(st);
        st = json_array();
    }

    json_array_append_new(st, json_string(f->value));

    while ((n = json_array_size(st)) > AHAVA_STACK_LIMIT) {
        json_array_remove(st, 0);
    }

    f->stacktrace = json_dumps(st, JSON_COMPACT);
    json_decref(st);

    if (rc == AHAVA_JOB_RETRY && !job->last_attempt) {
        delay = ahava_bq_backoff(opts, bj->atm + 1);

        if (delay > 0) {
            f->kind = "d";
            f->delay = delay;
        } else {
            f->kind = "r";
        }

        ahava_log("warn", "job failed, will retry", "{s:s,s:s,s:s,s:I,s:I,"
                  "s:s,s:f}", "queue", q->name, "jobId", bj->id,
                  "name", bj->name, "attempt", (json_int_t) (bj->atm + 1),
                  "delayMs", (json_int_t) (delay > 0 ? delay : 0),
                  "error", f->value, "ms", ms);
        return;
    }

    f->kind = "f";
    ahava_bq_keep(opts, "removeOnFail", &q->keep_failed, &f->keep);

    ahava_log("error", "job failed", "{s:s,s:s,s:s,s:I,s:s,s:b,s:f}",
              "queue", q->name, "jobId", bj->id, "name", bj->name,
              "attempt", (json_int_t) (bj->atm + 1), "error", f->value,
              "final", 1, "ms", ms);
}


/* Locks and stalled jobs ----------------------------------------------- */


static void *
ahava_keeper(void *arg)
{
    ahava_main_t    *m = arg;
    ahava_queue_t   *q;
    ahava_runner_t  *r;
    redisContext    *c;
    const char      *ids[AHAVA_BQ_MAX_BATCH * 10];
    const char      *tokens[AHAVA_BQ_MAX_BATCH * 10];
    char            *lost[AHAVA_BQ_MAX_BATCH * 10];
    char             err[AHAVA_ERR_LEN];
    int64_t          now, mono, next_extend, next_stalled;
    int              i, k, j, n, nlost, moved;

    c = NULL;
    next_extend = ahava_mono_ms() + m->lock_ms / 2;
    next_stalled = 0;

    while (!__atomic_load_n(&m->keeper_stop, __ATOMIC_SEQ_CST)) {

        if (c == NULL) {
            c = ahava_redis_connect(&m->redis, err, sizeof(err));
            if (c == NULL) {
                ahava_wait(m, 500, &m->keeper_stop);
                continue;
            }
        }

        now = ahava_now_ms();
        mono = ahava_mono_ms();

        if (mono >= next_extend) {
            next_extend = mono + m->lock_ms / 2;

            for (i = 0; i < m->nqueues; i++) {
                q = &m->queues[i];
                n = 0;

                for (k = 0; k < q->nrunners; k++) {
                    r = &q->runners[k];
                    pthread_mutex_lock(&r->lock);
                    for (j = 0; j < r->nheld; j++) {
                        ids[n] = strdup(r->held_id[j]);
                        tokens[n] = strdup(r->held_token[j]);
                        n++;
                    }
                    pthread_mutex_unlock(&r->lock);
                }

                if (n == 0) {
                    continue;
                }

                if (ahava_bq_extend(c, &q->bq, now, ids, tokens, n, lost,
                                    &nlost, err, sizeof(err))
                    != 0)
                {
                    ahava_log("error", "lock renewal failed", "{s:s,s:s}",
                              "queue", q->name, "error", err);
                    redisFree(c);
                    c = NULL;
                    nlost = 0;
                    next_extend = mono + 1000;
                }

                for (j = 0; j < nlost; j++) {
                    ahava_log("warn", "job lock lost while running",
                              "{s:s,s:s}", "queue", q->name,
                              "jobId", lost[j]);
                    free(lost[j]);
                }

                for (j = 0; j < n; j++) {
                    free((char *) ids[j]);
                    free((char *) tokens[j]);
                }

                if (c == NULL) {
                    break;
                }
            }
        }

        /* a stopping process takes no job back: the others do */
        if (c && mono >= next_stalled && !ahava_stopping(m)) {
            next_stalled = mono + m->stalled_ms;

            for (i = 0; i < m->nqueues; i++) {
                q = &m->queues[i];

                if (!q->enabled) {
                    continue;
                }

                if (ahava_bq_stalled(c, &q->bq, now, m->stalled_ms, &moved,
                                     err, sizeof(err))
                    != 0)
                {
                    ahava_log("error", "stalled check failed", "{s:s,s:s}",
                              "queue", q->name, "error", err);
                    redisFree(c);
                    c = NULL;
                    next_stalled = mono + 1000;
                    break;
                }

                __atomic_fetch_add(&q->m.stalled, moved, __ATOMIC_RELAXED);
            }
        }

        /* while stopping only the locks matter: no stalled check is due */
        mono = ahava_mono_ms();
        n = (int) ((next_extend < next_stalled || ahava_stopping(m)
                    ? next_extend : next_stalled) - mono);
        ahava_wait(m, n < 10 ? 10 : n, &m->keeper_stop);
    }

    if (c) {
        redisFree(c);
    }

    return NULL;
}


/* Logs ----------------------------------------------------------------- */


char *
ahava_iso_now(char *buf, size_t len)
{
    struct timeval  tv;
    struct tm       tm;

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);

    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, (int) (tv.tv_usec / 1000));

    return buf;
}


static void
ahava_vlog(const char *level, const char *msg, const char *fmt, va_list ap)
{
    json_t  *o, *extra;
    char     ts[32], *line;
    size_t   n;

    o = NULL;

    if (fmt) {
        extra = json_vpack_ex(NULL, 0, fmt, ap);
        if (json_is_object(extra)) {
            o = extra;
        } else {
            json_decref(extra);
        }
    }

    if (o == NULL) {
        o = json_object();
    }

    json_object_set_new(o, "ts", json_string(ahava_iso_now(ts, sizeof(ts))));
    json_object_set_new(o, "level", json_string(level));
    json_object_set_new(o, "msg", json_string(msg));

    line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER
                         | JSON_REAL_PRECISION(6));
    json_decref(o);

    if (line == NULL) {
        return;
    }

    /* one write per line: lines of several threads never interleave */
    n = strlen(line);
    line[n] = '\n';
    (void) !write(STDERR_FILENO, line, n + 1);
    free(line);
}


/* printable ASCII that needs no escaping in a JSON string */
static int
ahava_json_plain(const char *s, size_t max)
{
    const u_char  *p = (const u_char *) s;
    size_t         i;

    for (i = 0; p[i]; i++) {
        if (i == max || p[i] < 0x20 || p[i] > 0x7e || p[i] == '"'
            || p[i] == '\\')
        {
            return 0;
        }
    }

    return 1;
}


/*
 * The line of every completed job, the same as ahava_log() writes, without
 * building a JSON object: it is a drain's hot path (jansson cost about 5 µs
 * a job, a twentieth of all the CPU a drained job costs).  Anything that
 * would need escaping goes the general way.
 */
static void
ahava_log_completed(const char *queue, const char *id, const char *name,
    long attempt, double ms)
{
    char  line[1024], ts[32];
    int   n;

    if (!ahava_json_plain(queue, 100) || !ahava_json_plain(id, 300)
        || !ahava_json_plain(name, 300))
    {
        ahava_log("info", "job completed", "{s:s,s:s,s:s,s:I,s:f}",
                  "queue", queue, "jobId", id, "name", name,
                  "attempt", (json_int_t) attempt, "ms", ms);
        return;
    }

    n = snprintf(line, sizeof(line), "{\"queue\":\"%s\",\"jobId\":\"%s\","
                 "\"name\":\"%s\",\"attempt\":%ld,\"ms\":%.6g,\"ts\":\"%s\","
                 "\"level\":\"info\",\"msg\":\"job completed\"}\n",
                 queue, id, name, attempt, ms,
                 ahava_iso_now(ts, sizeof(ts)));

    if (n > 0 && (size_t) n < sizeof(line)) {
        (void) !write(STDERR_FILENO, line, n);
    }
}


void
ahava_log(const char *level, const char *msg, const char *fmt, ...)
{
    va_list  ap;

    va_start(ap, fmt);
    ahava_vlog(level, msg, fmt, ap);
    va_end(ap);
}


/*
 * During an outage every runner fails every few hundred ms: one line per
 * gate per 5 s, with the number of lines it held back.
 */
void
ahava_log_limited(ahava_log_gate_t *g, const char *level, const char *msg,
    const char *fmt, ...)
{
    va_list  ap;
    int64_t  now, last;
    long     held;

    now = ahava_now_ms();
    last = __atomic_load_n(&g->last, __ATOMIC_RELAXED);

    if (now - last < 5000
        || !__atomic_compare_exchange_n(&g->last, &last, now, 0,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED))
    {
        __atomic_fetch_add(&g->held, 1, __ATOMIC_RELAXED);
        return;
    }

    held = __atomic_exchange_n(&g->held, 0, __ATOMIC_RELAXED);

    if (held) {
        ahava_log(level, "log lines held back", "{s:s,s:I}",
                  "about", msg, "count", (json_int_t) held);
    }

    va_start(ap, fmt);
    ahava_vlog(level, msg, fmt, ap);
    va_end(ap);
}
