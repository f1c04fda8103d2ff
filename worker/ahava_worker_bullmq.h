
/*
 * Copyright (C) Ahava
 */


#ifndef _AHAVA_WORKER_BULLMQ_H_INCLUDED_
#define _AHAVA_WORKER_BULLMQ_H_INCLUDED_


#include <stdint.h>

#include <jansson.h>
#include <hiredis/hiredis.h>


#define AHAVA_BQ_MAX_BATCH    100
#define AHAVA_BQ_PREFIX_LEN   160

enum {
    AHAVA_BQ_STEP = 0,
    AHAVA_BQ_EXTEND,
    AHAVA_BQ_STALLED
};


typedef struct {
    const char      *name;              /* "email" */
    char             prefix[AHAVA_BQ_PREFIX_LEN];   /* "bull:email:" */
    int              lock_ms;           /* lockDuration, 30000 */
    int              rate_max;          /* 0: no limiter of our own */
    int              rate_duration;     /* ms */
} ahava_bq_queue_t;


/* removeOnComplete / removeOnFail: count -1 keeps all, 0 keeps none */
typedef struct {
    int64_t          count;
    int64_t          age;               /* seconds, 0: no age limit */
    int64_t          limit;
} ahava_bq_keep_t;


typedef struct {
    const char      *id;
    const char      *token;
    const char      *kind;              /* "c", "f", "d" (delayed), "r" */
    const char      *value;             /* returnvalue JSON / failedReason */
    const char      *stacktrace;        /* JSON array */
    ahava_bq_keep_t  keep;
    long             attempts;
    int64_t          delay;             /* ms, for "d" */
    long long        code;              /* out: 0, or BullMQ's -1..-6 */
} ahava_bq_finish_t;


typedef struct {
    int              n;                 /* jobs wanted */
    const char      *token_base;        /* "<uuid>" */
    int64_t          token_seq;
    const char      *worker_name;
} ahava_bq_fetch_t;


/* strings point into reply, valid until it is freed */
typedef struct {
    const char      *id;
    const char      *token;
    const char      *name;
    const char      *data;
    const char      *opts;
    long             atm;
    const char      *defa;              /* "" or the deferred failure */
    const char      *stacktrace;
} ahava_bq_job_t;


typedef struct {
    redisReply      *reply;
    ahava_bq_job_t   jobs[AHAVA_BQ_MAX_BATCH];
    int              njobs;
    long long        limited_ms;        /* > 0: rate limited for so long */
    long long        next_delayed;      /* ms of the next delayed job, 0 */
} ahava_bq_fetched_t;


void ahava_bq_init(void);

/* finish nfin jobs and fetch up to fetch->n more in one script: 0 or -1 */
int ahava_bq_step(redisContext *c, ahava_bq_queue_t *q, int64_t now,
    ahava_bq_finish_t *fin, int nfin, ahava_bq_fetch_t *fetch,
    ahava_bq_fetched_t *out, char *err, size_t errlen);

/* renew the locks; the ids whose lock is gone are strdup'ed into lost */
int ahava_bq_extend(redisContext *c, ahava_bq_queue_t *q, int64_t now,
    const char **ids, const char **tokens, int n, char **lost, int *nlost,
    char *err, size_t errlen);

int ahava_bq_stalled(redisContext *c, ahava_bq_queue_t *q, int64_t now,
    int interval_ms, int *moved, char *err, size_t errlen);

void ahava_bq_keep(json_t *opts, const char *field, ahava_bq_keep_t *dflt,
    ahava_bq_keep_t *keep);

int64_t ahava_bq_backoff(json_t *opts, long made);


#endif /* _AHAVA_WORKER_BULLMQ_H_INCLUDED_ */
