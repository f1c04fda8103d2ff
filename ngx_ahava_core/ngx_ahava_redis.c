
/*
 * Asynchronous Redis clients of a worker: hiredis's async context driven
 * by nginx events through an adapter shaped like hiredis's own (libev,
 * libevent) adapters, with reconnection and a liveness PING.  A client is
 * ready only once AUTH and SELECT succeeded; its owner's ready callback
 * runs then, after every reconnect (a subscriber subscribes again there).
 * Redis being down never blocks or fails the REST API: callers see
 * NGX_DECLINED.
 */


#include "ngx_ahava_core.h"

#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/sds.h>


#define NGX_AHAVA_REDIS_RETRY_MIN    250
#define NGX_AHAVA_REDIS_RETRY_MAX    5000
#define NGX_AHAVA_REDIS_PING         5000

/* a Redis that stops reading must not grow a worker's memory */
#define NGX_AHAVA_REDIS_MAX_OBUF     (1024 * 1024)


typedef struct {
    redisAsyncContext         *ac;
    ngx_connection_t          *c;
    ngx_ahava_redis_t         *redis;
    unsigned                   in_handler:1;
    unsigned                   dead:1;
} ngx_ahava_redis_adapter_t;


struct ngx_ahava_redis_s {
    ngx_ahava_main_conf_t     *amcf;
    ngx_log_t                 *log;
    ngx_ahava_redis_ready_pt   ready;
    void                      *data;
    ngx_ahava_log_limit_t      error_log;
    redisAsyncContext         *ac;
    ngx_event_t                retry;
    ngx_event_t                ping;
    ngx_msec_t                 backoff;
    unsigned                   connected:1;
    unsigned                   ping_pending:1;
    unsigned                   subscriber:1;
    unsigned                   exiting:1;
};


static ngx_int_t ngx_ahava_redis_writable(ngx_ahava_redis_t *redis);
static void ngx_ahava_redis_connect(ngx_ahava_redis_t *redis);
static ngx_int_t ngx_ahava_redis_attach(ngx_ahava_redis_t *redis,
    redisAsyncContext *ac);
static void ngx_ahava_redis_event_handler(ngx_event_t *ev);
static void ngx_ahava_redis_add_read(void *data);
static void ngx_ahava_redis_del_read(void *data);
static void ngx_ahava_redis_add_write(void *data);
static void ngx_ahava_redis_del_write(void *data);
static void ngx_ahava_redis_cleanup(void *data);
static void ngx_ahava_redis_connected(const redisAsyncContext *ac, int status);
static void ngx_ahava_redis_keepalive(ngx_ahava_redis_t *redis, int fd);
static void ngx_ahava_redis_disconnected(const redisAsyncContext *ac,
    int status);
static void ngx_ahava_redis_schedule(ngx_ahava_redis_t *redis);
static void ngx_ahava_redis_retry_handler(ngx_event_t *ev);
static void ngx_ahava_redis_ping_handler(ngx_event_t *ev);
static void ngx_ahava_redis_reply(redisAsyncContext *ac, void *r, void *data);


ngx_ahava_redis_t *
ngx_ahava_redis_create(ngx_cycle_t *cycle, ngx_ahava_main_conf_t *amcf,
    ngx_ahava_redis_ready_pt ready, void *data)
{
    ngx_ahava_redis_t  *redis;

    redis = ngx_pcalloc(cycle->pool, sizeof(ngx_ahava_redis_t));
    if (redis == NULL) {
        return NULL;
    }

    redis->amcf = amcf;
    redis->log = cycle->log;
    redis->ready = ready;
    redis->data = data;

    redis->retry.handler = ngx_ahava_redis_retry_handler;
    redis->retry.data = redis;
    redis->retry.log = cycle->log;
    redis->retry.cancelable = 1;

    redis->ping.handler = ngx_ahava_redis_ping_handler;
    redis->ping.data = redis;
    redis->ping.log = cycle->log;
    redis->ping.cancelable = 1;

    ngx_ahava_redis_connect(redis);

    return redis;
}


void
ngx_ahava_redis_destroy(ngx_ahava_redis_t *redis)
{
    redis->exiting = 1;

    if (redis->retry.timer_set) {
        ngx_del_timer(&redis->retry);
    }

    if (redis->ping.timer_set) {
        ngx_del_timer(&redis->ping);
    }

    if (redis->ac) {
        redisAsyncFree(redis->ac);
        redis->ac = NULL;
    }
}


/*
 * A subscriber's connection: once subscribed, Redis answers a PING with a
 * pub/sub reply hiredis 0.14 gives to no callback, so the liveness PING is
 * not sent; TCP keepalive watches the connection instead.
 */

void
ngx_ahava_redis_set_subscriber(ngx_ahava_redis_t *redis)
{
    redis->subscriber = 1;

    if (redis->ping.timer_set) {
        ngx_del_timer(&redis->ping);
    }
}


ngx_int_t
ngx_ahava_redis_healthy(ngx_ahava_redis_t *redis)
{
    return (redis != NULL && redis->connected) ? NGX_OK : NGX_ERROR;
}


/*
 * Sends a command if Redis is connected.  NGX_DECLINED when it is not: the
 * caller decides whether that matters (events are best effort, jobs are
 * kept in the outbox).
 */

ngx_int_t
ngx_ahava_redis_command(ngx_ahava_redis_t *redis, redisCallbackFn *fn,
    void *data, const char *fmt, ...)
{
    int      rc;
    va_list  args;

    if (ngx_ahava_redis_writable(redis) != NGX_OK) {
        return NGX_DECLINED;
    }

    va_start(args, fmt);
    rc = redisvAsyncCommand(redis->ac, fn, data, fmt, args);
    va_end(args);

    return (rc == REDIS_OK) ? NGX_OK : NGX_ERROR;
}


/* the same with arguments as given (binary safe, any number of them) */

ngx_int_t
ngx_ahava_redis_command_argv(ngx_ahava_redis_t *redis, redisCallbackFn *fn,
    void *data, int argc, const char **argv, const size_t *lens)
{
    if (ngx_ahava_redis_writable(redis) != NGX_OK) {
        return NGX_DECLINED;
    }

    return (redisAsyncCommandArgv(redis->ac, fn, data, argc, argv, lens)
            == REDIS_OK) ? NGX_OK : NGX_ERROR;
}


/* connected, and not holding back more than NGX_AHAVA_REDIS_MAX_OBUF */

static ngx_int_t
ngx_ahava_redis_writable(ngx_ahava_redis_t *redis)
{
    if (redis == NULL || !redis->connected || redis->ac == NULL) {
        return NGX_DECLINED;
    }

    if (redis->ac->c.obuf
        && sdslen(redis->ac->c.obuf) > NGX_AHAVA_REDIS_MAX_OBUF)
    {
        ngx_ahava_log_limited(&redis->error_log, NGX_LOG_WARN, redis->log,
                              "ahava: redis is not reading, command "
                              "dropped");
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static void
ngx_ahava_redis_connect(ngx_ahava_redis_t *redis)
{
    char                    host[NGX_SOCKADDR_STRLEN + 1];
    redisAsyncContext      *ac;
    ngx_ahava_main_conf_t  *amcf;

    amcf = redis->amcf;

    ngx_cpystrn((u_char *) host, amcf->redis_host.data,
                ngx_min(amcf->redis_host.len + 1, sizeof(host)));

    /* the host is an address resolved at configuration time: no DNS here */
    ac = redisAsyncConnect(host, amcf->redis_port);

    if (ac == NULL) {
        ngx_log_error(NGX_LOG_ERR, redis->log, 0,
                      "ahava: redisAsyncConnect() failed: out of memory");
        ngx_ahava_redis_schedule(redis);
        return;
    }

    if (ac->err) {
        ngx_ahava_log_limited(&redis->error_log, NGX_LOG_ERR, redis->log,
                              "ahava: redis connect to %s:%d failed: %s",
                              host, (int) amcf->redis_port, ac->errstr);
        ngx_ahava_metrics_count(NGX_AHAVA_M_REDIS_RECONNECTS, 1);
        redisAsyncFree(ac);
        ngx_ahava_redis_schedule(redis);
        return;
    }

    if (ngx_ahava_redis_attach(redis, ac) != NGX_OK) {
        redisAsyncFree(ac);
        ngx_ahava_redis_schedule(redis);
        return;
    }

    redis->ac = ac;
    ac->data = redis;

    /* after attach: in 0.14 this arms the write event that signals connect */
    redisAsyncSetConnectCallback(ac, ngx_ahava_redis_connected);
    redisAsyncSetDisconnectCallback(ac, ngx_ahava_redis_disconnected);
}


static ngx_int_t
ngx_ahava_redis_attach(ngx_ahava_redis_t *redis, redisAsyncContext *ac)
{
    ngx_connection_t           *c;
    ngx_ahava_redis_adapter_t  *w;

    w = ngx_calloc(sizeof(ngx_ahava_redis_adapter_t), redis->log);
    if (w == NULL) {
        return NGX_ERROR;
    }

    c = ngx_get_connection(ac->c.fd, redis->log);
    if (c == NULL) {
        ngx_free(w);
        return NGX_ERROR;
    }

    w->ac = ac;
    w->c = c;
    w->redis = redis;

    c->data = w;
    c->read->handler = ngx_ahava_redis_event_handler;
    c->write->handler = ngx_ahava_redis_event_handler;
    c->read->log = redis->log;
    c->write->log = redis->log;

    ac->ev.data = w;
    ac->ev.addRead = ngx_ahava_redis_add_read;
    ac->ev.delRead = ngx_ahava_redis_del_read;
    ac->ev.addWrite = ngx_ahava_redis_add_write;
    ac->ev.delWrite = ngx_ahava_redis_del_write;
    ac->ev.cleanup = ngx_ahava_redis_cleanup;

    return NGX_OK;
}


static void
ngx_ahava_redis_event_handler(ngx_event_t *ev)
{
    ngx_connection_t           *c;
    ngx_ahava_redis_adapter_t  *w;

    c = ev->data;
    w = c->data;

    w->in_handler = 1;

    if (ev->write) {
        redisAsyncHandleWrite(w->ac);

    } else {
        redisAsyncHandleRead(w->ac);
    }

    w->in_handler = 0;

    /* the context (and our connection) went away inside the call */
    if (w->dead) {
        ngx_free(w);
    }
}


/* level-triggered: hiredis reads 16 KiB at a time and counts on a re-poll */

static void
ngx_ahava_redis_add_read(void *data)
{
    ngx_ahava_redis_adapter_t  *w = data;

    if (!w->c->read->active) {
        ngx_add_event(w->c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT);
    }
}


static void
ngx_ahava_redis_del_read(void *data)
{
    ngx_ahava_redis_adapter_t  *w = data;

    if (w->c->read->active) {
        ngx_del_event(w->c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT);
    }
}


static void
ngx_ahava_redis_add_write(void *data)
{
    ngx_ahava_redis_adapter_t  *w = data;

    if (!w->c->write->active) {
        ngx_add_event(w->c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT);
    }
}


static void
ngx_ahava_redis_del_write(void *data)
{
    ngx_ahava_redis_adapter_t  *w = data;

    if (w->c->write->active) {
        ngx_del_event(w->c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT);
    }
}


/* hiredis frees the context next and closes the fd itself */

static void
ngx_ahava_redis_cleanup(void *data)
{
    ngx_ahava_redis_adapter_t  *w = data;

    ngx_connection_t  *c;

    if (w == NULL) {
        return;
    }

    c = w->c;

    ngx_ahava_forget_connection(c);

    w->ac->ev.data = NULL;
    w->dead = 1;

    /*
     * hiredis 0.14 calls this before the disconnect callback, which finds
     * our client through ac->data
     */

    if (!w->in_handler) {
        ngx_free(w);
    }
}


/*
 * A subscriber only reads, and hiredis 0.14 cannot PING it (see above):
 * TCP keepalive finds a peer that vanished without a reset (a host gone,
 * a partition) in about 25 s; the read then fails and the client
 * reconnects and subscribes again.
 */

static void
ngx_ahava_redis_keepalive(ngx_ahava_redis_t *redis, int fd)
{
#if (NGX_HAVE_KEEPALIVE_TUNABLE)
    int  on, idle, intvl, cnt;

    on = 1;
    idle = 10;
    intvl = 5;
    cnt = 3;

    if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(int)) == -1
        || setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(int)) == -1
        || setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(int))
           == -1
        || setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(int)) == -1)
    {
        ngx_log_error(NGX_LOG_WARN, redis->log, ngx_socket_errno,
                      "ahava: redis subscriber keepalive not set");
    }
#endif
}


/*
 * Connected: AUTH and SELECT first, then a PING whose answer, coming after
 * theirs, says the client is ready.  A refused AUTH or SELECT disconnects
 * and retries with back-off.
 */

static void
ngx_ahava_redis_connected(const redisAsyncContext *ac, int status)
{
    ngx_ahava_redis_t          *redis;
    ngx_ahava_main_conf_t      *amcf;
    redisAsyncContext          *c;

    redis = ac->data;
    amcf = redis->amcf;
    c = (redisAsyncContext *) ac;

    if (status != REDIS_OK) {
        ngx_ahava_log_limited(&redis->error_log, NGX_LOG_ERR, redis->log,
                              "ahava: redis connect failed: %s", ac->errstr);
        ngx_ahava_metrics_count(NGX_AHAVA_M_REDIS_RECONNECTS, 1);
        /* hiredis frees the context after this callback */
        redis->ac = NULL;
        redis->connected = 0;
        ngx_ahava_redis_schedule(redis);
        return;
    }

    if (redis->subscriber) {
        ngx_ahava_redis_keepalive(redis, ac->c.fd);
    }

    if (amcf->redis_password.len) {
        redisAsyncCommand(c, ngx_ahava_redis_reply, (void *) "AUTH",
                          "AUTH %b", amcf->redis_password.data,
                          amcf->redis_password.len);
    }

    if (amcf->redis_db > 0) {
        redisAsyncCommand(c, ngx_ahava_redis_reply, (void *) "SELECT",
                          "SELECT %d", (int) amcf->redis_db);
    }

    redisAsyncCommand(c, ngx_ahava_redis_reply, (void *) "READY", "PING");
}


static void
ngx_ahava_redis_disconnected(const redisAsyncContext *ac, int status)
{
    ngx_ahava_redis_t  *redis;

    redis = ac->data;

    if (redis->ac == ac) {
        redis->ac = NULL;
    }

    redis->connected = 0;

    if (redis->exiting) {
        return;
    }

    ngx_ahava_metrics_count(NGX_AHAVA_M_REDIS_RECONNECTS, 1);

    ngx_ahava_log_limited(&redis->error_log, NGX_LOG_ERR, redis->log,
                          "ahava: redis disconnected: %s",
                          status == REDIS_OK ? "by us" : ac->errstr);

    /* the context is freed right after this returns: only schedule */
    ngx_ahava_redis_schedule(redis);
}


static void
ngx_ahava_redis_schedule(ngx_ahava_redis_t *redis)
{
    if (redis->exiting || redis->retry.timer_set) {
        return;
    }

    if (redis->backoff == 0) {
        redis->backoff = NGX_AHAVA_REDIS_RETRY_MIN;

    } else {
        redis->backoff = ngx_min(redis->backoff * 2,
                                 NGX_AHAVA_REDIS_RETRY_MAX);
    }

    ngx_add_timer(&redis->retry, redis->backoff);
}


static void
ngx_ahava_redis_retry_handler(ngx_event_t *ev)
{
    ngx_ahava_redis_t  *redis = ev->data;

    if (redis->exiting || ngx_exiting || ngx_terminate || redis->ac) {
        return;
    }

    ngx_ahava_redis_connect(redis);
}


/* A PING unanswered for a whole period means a hung server or network */

static void
ngx_ahava_redis_ping_handler(ngx_event_t *ev)
{
    ngx_ahava_redis_t  *redis = ev->data;

    if (redis->exiting || redis->ac == NULL) {
        return;
    }

    if (redis->ping_pending) {
        ngx_log_error(NGX_LOG_ERR, redis->log, 0,
                      "ahava: redis did not answer PING, reconnecting");
        redisAsyncFree(redis->ac);
        return;
    }

    if (redisAsyncCommand(redis->ac, ngx_ahava_redis_reply, (void *) "PING",
                          "PING")
        == REDIS_OK)
    {
        redis->ping_pending = 1;
    }

    ngx_add_timer(&redis->ping, NGX_AHAVA_REDIS_PING);
}


static void
ngx_ahava_redis_reply(redisAsyncContext *ac, void *r, void *data)
{
    redisReply         *reply = r;
    ngx_ahava_redis_t  *redis;

    redis = ac->data;

    if (reply == NULL) {
        /* the context is going away: its callbacks get no reply */
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_ahava_log_limited(&redis->error_log, NGX_LOG_ERR, redis->log,
                              "ahava: redis %s failed: %s", (char *) data,
                              reply->str);

        if (ngx_strcmp(data, "PING") != 0) {
            /* a bad AUTH or SELECT: never serve on this connection */
            redis->connected = 0;
            redisAsyncDisconnect(ac);
        }

        return;
    }

    if (ngx_strcmp(data, "READY") == 0) {
        if (redis->ac != ac) {
            return;
        }

        ngx_log_error(NGX_LOG_INFO, redis->log, 0, "ahava: redis connected");

        redis->connected = 1;
        redis->backoff = 0;
        redis->ping_pending = 0;

        if (!redis->ping.timer_set && !redis->subscriber) {
            ngx_add_timer(&redis->ping, NGX_AHAVA_REDIS_PING);
        }

        if (redis->ready) {
            redis->ready(redis, redis->data);
        }

        return;
    }

    if (ngx_strcmp(data, "PING") == 0) {
        redis->ping_pending = 0;
    }
}


/*
 * redis://[:password@]host[:port][/db] — the host is resolved here, in the
 * master at configuration time, because hiredis resolves names blocking.
 */

ngx_int_t
ngx_ahava_redis_parse_url(ngx_conf_t *cf, ngx_ahava_main_conf_t *amcf)
{
    u_char     *p, *last, *at, *slash;
    ngx_url_t   u;
    ngx_int_t   db;

    p = amcf->redis_url.data;
    last = p + amcf->redis_url.len;

    if (amcf->redis_url.len < 8 || ngx_strncmp(p, "redis://", 8) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "ahava_redis: the URL must start with \"redis://\"");
        return NGX_ERROR;
    }

    p += 8;

    at = ngx_strlchr(p, last, '@');
    if (at) {
        /* [user]:password@ — only the password is used (Redis < 6 AUTH) */
        u_char *colon = ngx_strlchr(p, at, ':');

        amcf->redis_password.data = colon ? colon + 1 : p;
        amcf->redis_password.len = at - amcf->redis_password.data;
        p = at + 1;
    }

    slash = ngx_strlchr(p, last, '/');
    amcf->redis_db = 0;

    if (slash) {
        if (slash + 1 < last) {
            db = ngx_atoi(slash + 1, last - slash - 1);
            if (db == NGX_ERROR || db > 1024) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "ahava_redis: invalid database number");
                return NGX_ERROR;
            }

            amcf->redis_db = db;
        }

        last = slash;
    }

    ngx_memzero(&u, sizeof(ngx_url_t));
    u.url.data = p;
    u.url.len = last - p;
    u.default_port = 6379;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "ahava_redis: %s in the redis URL",
                           u.err ? u.err : "no address");
        return NGX_ERROR;
    }

    amcf->redis_port = u.port ? u.port : 6379;

    amcf->redis_host.data = ngx_pnalloc(cf->pool, NGX_SOCKADDR_STRLEN);
    if (amcf->redis_host.data == NULL) {
        return NGX_ERROR;
    }

    amcf->redis_host.len = ngx_sock_ntop(u.addrs[0].sockaddr,
                                         u.addrs[0].socklen,
                                         amcf->redis_host.data,
                                         NGX_SOCKADDR_STRLEN, 0);
    return NGX_OK;
}
