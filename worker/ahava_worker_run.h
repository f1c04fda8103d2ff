
/*
 * Copyright (C) Ahava
 */


#ifndef _AHAVA_WORKER_RUN_H_INCLUDED_
#define _AHAVA_WORKER_RUN_H_INCLUDED_


/* The daemon's own machinery: queues, runners, metrics, Redis, HTTP */


#include <pthread.h>
#include <stdint.h>

#include "ahava_worker.h"
#include "ahava_worker_bullmq.h"


#define AHAVA_BUCKETS  13


typedef struct ahava_main_s    ahava_main_t;
typedef struct ahava_queue_s   ahava_queue_t;


typedef ahava_job_rc_e (*ahava_batch_pt)(ahava_thread_t *t,
    ahava_job_t **jobs, int n, ahava_job_rc_e *rcs, char **results,
    char (*errs)[AHAVA_ERR_LEN]);


typedef void (*ahava_give_up_pt)(ahava_thread_t *t, ahava_job_t *job,
    const char *reason);


typedef struct {
    int64_t          last;
    long             held;
} ahava_log_gate_t;


/* per queue, updated with atomics by the runners, read by /metrics */
typedef struct {
    uint64_t         completed;
    uint64_t         failed;
    uint64_t         retried;
    uint64_t         stalled;
    uint64_t         lock_lost;
    int64_t          inflight;
    uint64_t         buckets[AHAVA_BUCKETS];    /* cumulative at read */
    uint64_t         count;
    uint64_t         sum_us;
} ahava_metrics_t;


typedef struct {
    char            *host;
    int              port;
    int              db;
    char            *user;
    char            *password;
} ahava_redis_url_t;


typedef struct {
    ahava_thread_t      t;
    ahava_main_t       *main;
    ahava_queue_t      *q;
    int                 index;
    int                 batch;
    pthread_t           tid;

    /* the finishes to send with the next step */
    ahava_bq_finish_t   fin[AHAVA_BQ_MAX_BATCH];
    int                 nfin;
    int                 stop_tries;
    int64_t             stop_since;     /* ms: the first try while stopping */

    /* the jobs in hand, for the keeper's lock renewal */
    pthread_mutex_t     lock;
    const char         *held_id[AHAVA_BQ_MAX_BATCH];
    const char         *held_token[AHAVA_BQ_MAX_BATCH];
    int                 nheld;
} ahava_runner_t;


struct ahava_queue_s {
    const char         *name;
    int                 concurrency;
    int                 rate_max;
    int                 rate_duration;
    int                 batch;
    ahava_process_pt    process;
    ahava_batch_pt      process_batch;
    ahava_give_up_pt    give_up;        /* a job failed without running */
    ahava_bq_keep_t     keep_completed;
    ahava_bq_keep_t     keep_failed;

    int                 enabled;
    ahava_bq_queue_t    bq;
    ahava_runner_t     *runners;
    int                 nrunners;
    ahava_metrics_t     m;
    ahava_log_gate_t    log_gate;
};


struct ahava_main_s {
    ahava_conf_t       *conf;
    ahava_conf_t        conf_storage;
    int                 have_key;
    int                 nold;

    ahava_queue_t      *queues;
    int                 nqueues;
    int                 queues_set;

    char               *prefix;
    char               *worker_name;
    char               *metrics_listen;
    int                 lock_ms;
    int                 stalled_ms;
    ahava_redis_url_t   redis;
    char                token_base[64];
    int64_t             token_seq;

    pthread_t           keeper;
    pthread_t           http;
    int                 http_fd;
    int64_t             started;

    int                 stopping;       /* runners: take no more jobs */
    int                 keeper_stop;    /* the runners are done */
    pthread_mutex_t     stop_lock;
    pthread_cond_t      stop_cond;
};


extern ahava_main_t  ahava_main;


int64_t ahava_now_ms(void);      /* epoch ms, for Redis */
int64_t ahava_mono_ms(void);     /* for our own schedules */
void ahava_conf_free(ahava_main_t *m);
void ahava_log_limited(ahava_log_gate_t *g, const char *level,
    const char *msg, const char *fmt, ...);

int ahava_redis_url_parse(const char *url, ahava_redis_url_t *u);
redisContext *ahava_redis_connect(ahava_redis_url_t *u, char *err,
    size_t errlen);
void ahava_thread_close(ahava_thread_t *t);

void ahava_metrics_observe(ahava_metrics_t *m, double ms);
int ahava_http_start(ahava_main_t *m);
void ahava_http_stop(ahava_main_t *m);

ahava_job_rc_e ahava_push_process_batch(ahava_thread_t *t,
    ahava_job_t **jobs, int n, ahava_job_rc_e *rcs, char **results,
    char (*errs)[AHAVA_ERR_LEN]);


#endif /* _AHAVA_WORKER_RUN_H_INCLUDED_ */
