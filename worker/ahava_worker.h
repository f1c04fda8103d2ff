
/*
 * Copyright (C) Ahava
 */


#ifndef _AHAVA_WORKER_H_INCLUDED_
#define _AHAVA_WORKER_H_INCLUDED_


/*
 * ahava-worker: drains the BullMQ queues of SPEC §9 (pdf-export, email,
 * push-notification) on BullMQ 6.7's own Redis layout.
 *
 * It is a daemon, not an nginx worker: each queue runs a few threads, and
 * each thread owns its blocking connections (Redis, PostgreSQL, curl) for
 * its whole life.  The number of jobs a process holds at once is the
 * queue's concurrency, so the blocking is bounded by design.
 *
 * A processor gets one job (ahava_job_t) and its thread (ahava_thread_t),
 * and answers AHAVA_JOB_DONE with a JSON return value, AHAVA_JOB_RETRY
 * (failed; BullMQ's attempts and backoff decide) or AHAVA_JOB_FATAL (failed
 * for good: retrying cannot help), with a reason in err.
 */


#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <hiredis/hiredis.h>
#include <curl/curl.h>

#include "ngx_ahava_crypto.h"


#define AHAVA_MAX_KEYS        8
#define AHAVA_ERR_LEN         512


typedef enum {
    AHAVA_JOB_DONE = 0,
    AHAVA_JOB_RETRY,
    AHAVA_JOB_FATAL
} ahava_job_rc_e;


typedef struct {
    char              *redis_url;       /* REDIS_URL */
    char              *database_url;    /* DATABASE_URL */
    char              *smtp_url;        /* SMTP_URL; NULL: the mail sink */
    char              *smtp_from;       /* SMTP_FROM */
    char              *smtp_ca_file;    /* CA bundle for SMTP TLS (tests) */
    char              *expo_push_url;   /* EXPO_PUSH_URL; NULL: log only */
    char              *expo_access_token;
    char              *data_dir;        /* AHAVA_DATA_DIR */
    char              *uploads_dir;     /* <data_dir>/uploads by default */
    char              *font;            /* pango font family for the PDF */
    int                push_token_cache; /* users; 0: every push reads */

    u_char             keys[AHAVA_MAX_KEYS][NGX_AHAVA_KEY_LEN];
    const u_char      *key_list[AHAVA_MAX_KEYS];
    size_t             nkeys;           /* keys[0] current, the rest older */
} ahava_conf_t;


typedef struct {
    const char        *queue;           /* "email" ... */
    char              *id;              /* the BullMQ job id */
    char              *name;            /* "send-email" ... */
    json_t            *data;            /* the job's data, parsed */
    long               attempts_made;   /* "atm" before this attempt */
    long               attempts;        /* opts.attempts (0 or more) */
    int                last_attempt;    /* a failure now is final */
} ahava_job_t;


/*
 * One processing thread's connections: opened on first use, kept, and
 * reopened after an error.  Never shared between threads.
 */
typedef struct {
    ahava_conf_t      *conf;
    const char        *queue;
    PGconn            *pg;
    redisContext      *redis;           /* PUBLISH and other small calls */
    CURL              *curl;
    unsigned long      pg_epoch;        /* +1 per new PostgreSQL session */
} ahava_thread_t;


typedef ahava_job_rc_e (*ahava_process_pt)(ahava_thread_t *t,
    ahava_job_t *job, char **result, char *err, size_t errlen);


/* the processors (ahava_worker_email.c, _pdf.c, _push.c) */
ahava_job_rc_e ahava_email_process(ahava_thread_t *t, ahava_job_t *job,
    char **result, char *err, size_t errlen);
ahava_job_rc_e ahava_pdf_process(ahava_thread_t *t, ahava_job_t *job,
    char **result, char *err, size_t errlen);
ahava_job_rc_e ahava_push_process(ahava_thread_t *t, ahava_job_t *job,
    char **result, char *err, size_t errlen);

/*
 * A pdf-export job failed for good without its processor having run (it
 * stalled too often): the export row must still say FAILED.
 */
void ahava_pdf_give_up(ahava_thread_t *t, ahava_job_t *job,
    const char *reason);


/* the push tokens cache (ahava_worker_tokens.c) */
int ahava_tokens_init(int capacity);
int ahava_tokens_start(ahava_conf_t *conf);
void ahava_tokens_free(void);
int ahava_tokens_sync(uint64_t *epoch);
char *ahava_tokens_get(const char *user);
void ahava_tokens_put(const char *user, const char *tokens, uint64_t epoch);
void ahava_tokens_evict(const char *user);
void ahava_tokens_stats(uint64_t *hits, uint64_t *misses, int *capacity,
    int *listening);

/* the thread's PostgreSQL, connected (reconnecting if needed), or NULL */
PGconn *ahava_thread_pg(ahava_thread_t *t, char *err, size_t errlen);

/* PUBLISH a §8 frame {"type","data","timestamp"} to one user: 0 or -1 */
int ahava_thread_publish(ahava_thread_t *t, const char *user,
    const char *type, json_t *data, char *err, size_t errlen);

/*
 * Structured logs: one JSON object per line on stderr, e.g.
 *   ahava_log("info", "smtp sent", "{s:s,s:i}", "to", to, "code", 250);
 * fmt and what follows are jansson's json_pack(); fmt may be NULL.
 */
void ahava_log(const char *level, const char *msg, const char *fmt, ...);

/* ISO 8601 UTC with milliseconds, as the API shows times: buf >= 32 */
char *ahava_iso_now(char *buf, size_t len);

/* ahava_worker_util.c */
int ahava_valid_id(const char *s);              /* SPEC §4: 1 or 0 */
int ahava_random_hex(char *out, size_t nbytes); /* 0 or -1 */
int ahava_mkdirs(const char *dir);              /* mkdir -p: 0 or -1 */


#endif /* _AHAVA_WORKER_H_INCLUDED_ */
