
/*
 * The hub of a worker: its own Redis subscriber connection and the sockets
 * of each user it holds.  The worker is subscribed to ahava:user:<id>
 * while it holds at least one socket of that user, so Redis sends an event
 * only to the workers (and hosts) that need it.  An event is made into a
 * frame once and queued on each of the user's sockets here.
 *
 * Subscriptions change from a posted event, never from inside a hiredis
 * callback, and a channel is subscribed again only once its UNSUBSCRIBE
 * is answered (hiredis drops a channel's callback on that answer).  After
 * a reconnect every channel is subscribed again: delivery resumes without
 * the clients reconnecting, and the messages published meanwhile are
 * replayed from PostgreSQL (Redis keeps nothing for a subscriber away).
 */


#include "ngx_ahava_ws.h"


#define NGX_AHAVA_WS_BUCKETS       4096         /* a power of 2 */
#define NGX_AHAVA_WS_CHANNEL       "ahava:user:"


struct ngx_ahava_ws_hub_s {
    ngx_ahava_redis_t         *redis;
    ngx_log_t                 *log;
    ngx_event_t                flush;           /* subscription changes */
    ngx_queue_t                dirty;

    /* replays after a lost subscription: a few at a time, so that a
     * worker with many sockets does not fill the pool with them */
    ngx_uint_t                 resumes;
    ngx_uint_t                 resumes_max;
    ngx_queue_t                resume_wait;
    ngx_event_t                resume_next;

    ngx_ahava_ws_channel_t   **buckets;
    ngx_uint_t                 nchannels;
    ngx_ahava_log_limit_t      error_log;
};


static ngx_ahava_ws_channel_t *ngx_ahava_ws_hub_find(ngx_ahava_ws_hub_t *hub,
    u_char *id, size_t len, ngx_uint_t *bucket);
static void ngx_ahava_ws_hub_dirty(ngx_ahava_ws_hub_t *hub,
    ngx_ahava_ws_channel_t *ch);
static void ngx_ahava_ws_hub_flush(ngx_event_t *ev);
static void ngx_ahava_ws_hub_ready(ngx_ahava_redis_t *redis, void *data);
static void ngx_ahava_ws_hub_reply(redisAsyncContext *ac, void *r,
    void *data);
static void ngx_ahava_ws_hub_free(ngx_ahava_ws_hub_t *hub,
    ngx_ahava_ws_channel_t *ch);
static void ngx_ahava_ws_hub_resume_next(ngx_event_t *ev);


ngx_ahava_ws_hub_t *
ngx_ahava_ws_hub_create(ngx_cycle_t *cycle, ngx_ahava_main_conf_t *amcf)
{
    ngx_ahava_ws_hub_t  *hub;

    hub = ngx_pcalloc(cycle->pool, sizeof(ngx_ahava_ws_hub_t));
    if (hub == NULL) {
        return NULL;
    }

    hub->buckets = ngx_pcalloc(cycle->pool, NGX_AHAVA_WS_BUCKETS
                                            * sizeof(ngx_ahava_ws_channel_t *));
    if (hub->buckets == NULL) {
        return NULL;
    }

    hub->log = cycle->log;
    ngx_queue_init(&hub->dirty);

    hub->flush.handler = ngx_ahava_ws_hub_flush;
    hub->flush.data = hub;
    hub->flush.log = cycle->log;

    ngx_queue_init(&hub->resume_wait);
    hub->resumes_max = ngx_max(amcf->pg_pool_size / 2, 1);
    hub->resume_next.handler = ngx_ahava_ws_hub_resume_next;
    hub->resume_next.data = hub;
    hub->resume_next.log = cycle->log;

    if (amcf->redis_host.len == 0) {
        /* no Redis: sockets work, nothing is delivered to them */
        return hub;
    }

    hub->redis = ngx_ahava_redis_create(cycle, amcf, ngx_ahava_ws_hub_ready,
                                        hub);
    if (hub->redis == NULL) {
        return NULL;
    }

    ngx_ahava_redis_set_subscriber(hub->redis);

    return hub;
}


void
ngx_ahava_ws_hub_destroy(ngx_ahava_ws_hub_t *hub)
{
    if (hub->flush.posted) {
        ngx_delete_posted_event(&hub->flush);
    }

    if (hub->resume_next.posted) {
        ngx_delete_posted_event(&hub->resume_next);
    }

    if (hub->redis) {
        ngx_ahava_redis_destroy(hub->redis);
        hub->redis = NULL;
    }
}


/* a socket of user id opens on this worker */

ngx_int_t
ngx_ahava_ws_hub_join(ngx_ahava_ws_hub_t *hub, ngx_ahava_ws_session_t *s,
    u_char *id, size_t len)
{
    ngx_uint_t               b;
    ngx_ahava_ws_channel_t  *ch;

    ch = ngx_ahava_ws_hub_find(hub, id, len, &b);

    if (ch == NULL) {
        ch = ngx_calloc(sizeof(ngx_ahava_ws_channel_t), hub->log);
        if (ch == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(ch->id, id, len);
        ch->id[len] = '\0';
        ch->id_len = len;
        ngx_queue_init(&ch->sessions);

        ch->next = hub->buckets[b];
        hub->buckets[b] = ch;
        hub->nchannels++;
    }

    ngx_queue_insert_tail(&ch->sessions, &s->queue);
    s->channel = ch;

    ngx_ahava_metrics_gauge(NGX_AHAVA_G_WS_SOCKETS, 1);

    if (ch->nsessions++ == 0) {
        ngx_ahava_metrics_gauge(NGX_AHAVA_G_WS_USERS, 1);
        ngx_ahava_ws_hub_dirty(hub, ch);
    }

    return NGX_OK;
}


void
ngx_ahava_ws_hub_leave(ngx_ahava_ws_hub_t *hub, ngx_ahava_ws_session_t *s)
{
    ngx_ahava_ws_channel_t  *ch;

    ngx_ahava_ws_hub_resume_done(hub, s);

    ch = s->channel;

    if (ch == NULL) {
        return;
    }

    ngx_queue_remove(&s->queue);
    s->channel = NULL;

    ngx_ahava_metrics_gauge(NGX_AHAVA_G_WS_SOCKETS, -1);

    if (--ch->nsessions == 0) {
        ngx_ahava_metrics_gauge(NGX_AHAVA_G_WS_USERS, -1);
        ngx_ahava_ws_hub_dirty(hub, ch);
    }
}


/*
 * Events of the session's user reach this worker: its subscription is
 * confirmed, or there is no Redis to wait for (nothing live then).  A
 * replay starts only then, so no message falls between it and the live
 * stream.
 */

ngx_uint_t
ngx_ahava_ws_hub_listening(ngx_ahava_ws_hub_t *hub, ngx_ahava_ws_session_t *s)
{
    return s->channel->state == NGX_AHAVA_WS_CH_SUBSCRIBED
           || ngx_ahava_redis_healthy(hub->redis) != NGX_OK;
}


/*
 * A replay after a lost subscription may start: yes while fewer than half
 * the pool's connections run one, else the socket waits its turn (its live
 * events held meanwhile) and is called back through ngx_ahava_ws_listening.
 */

ngx_uint_t
ngx_ahava_ws_hub_resume_slot(ngx_ahava_ws_hub_t *hub,
    ngx_ahava_ws_session_t *s)
{
    if (s->resuming) {
        return 1;
    }

    if (hub->resumes < hub->resumes_max) {
        hub->resumes++;
        s->resuming = 1;
        return 1;
    }

    if (!s->resume_waiting) {
        ngx_queue_insert_tail(&hub->resume_wait, &s->resume_queue);
        s->resume_waiting = 1;
    }

    return 0;
}


/* its replay ended, or the socket went: the slot goes to the next one */

void
ngx_ahava_ws_hub_resume_done(ngx_ahava_ws_hub_t *hub,
    ngx_ahava_ws_session_t *s)
{
    if (s->resume_waiting) {
        ngx_queue_remove(&s->resume_queue);
        s->resume_waiting = 0;
    }

    if (!s->resuming) {
        return;
    }

    s->resuming = 0;
    hub->resumes--;

    if (!ngx_queue_empty(&hub->resume_wait) && !hub->resume_next.posted) {
        ngx_post_event(&hub->resume_next, &ngx_posted_events);
    }
}


static void
ngx_ahava_ws_hub_resume_next(ngx_event_t *ev)
{
    ngx_queue_t             *q;
    ngx_ahava_ws_hub_t      *hub;
    ngx_ahava_ws_session_t  *s;

    hub = ev->data;

    while (hub->resumes < hub->resumes_max
           && !ngx_queue_empty(&hub->resume_wait))
    {
        q = ngx_queue_head(&hub->resume_wait);
        ngx_queue_remove(q);

        s = ngx_queue_data(q, ngx_ahava_ws_session_t, resume_queue);
        s->resume_waiting = 0;

        ngx_ahava_ws_listening(s);
    }
}


static ngx_ahava_ws_channel_t *
ngx_ahava_ws_hub_find(ngx_ahava_ws_hub_t *hub, u_char *id, size_t len,
    ngx_uint_t *bucket)
{
    ngx_ahava_ws_channel_t  *ch;

    *bucket = ngx_crc32_short(id, len) & (NGX_AHAVA_WS_BUCKETS - 1);

    for (ch = hub->buckets[*bucket]; ch; ch = ch->next) {
        if (ch->id_len == len && ngx_memcmp(ch->id, id, len) == 0) {
            return ch;
        }
    }

    return NULL;
}


static void
ngx_ahava_ws_hub_dirty(ngx_ahava_ws_hub_t *hub, ngx_ahava_ws_channel_t *ch)
{
    if (!ch->in_dirty) {
        ngx_queue_insert_tail(&hub->dirty, &ch->dirty);
        ch->in_dirty = 1;
    }

    if (!hub->flush.posted) {
        ngx_post_event(&hub->flush, &ngx_posted_events);
    }
}


/*
 * Brings each changed channel towards what its sockets want: subscribed
 * while it has one, unsubscribed and freed once it has none.
 */

static void
ngx_ahava_ws_hub_flush(ngx_event_t *ev)
{
    ngx_int_t                rc;
    ngx_queue_t             *q;
    ngx_ahava_ws_hub_t      *hub;
    ngx_ahava_ws_channel_t  *ch;

    hub = ev->data;

    while (!ngx_queue_empty(&hub->dirty)) {
        q = ngx_queue_head(&hub->dirty);
        ch = ngx_queue_data(q, ngx_ahava_ws_channel_t, dirty);

        if (ch->nsessions && ch->state == NGX_AHAVA_WS_CH_NONE) {
            rc = ngx_ahava_redis_command(hub->redis, ngx_ahava_ws_hub_reply,
                                         hub, "SUBSCRIBE "
                                         NGX_AHAVA_WS_CHANNEL "%b",
                                         ch->id, ch->id_len);
            if (rc == NGX_OK) {
                ch->state = NGX_AHAVA_WS_CH_SUBSCRIBING;

            } else {
                /* Redis is away: the ready callback marks every channel
                 * again; the others are still brought along (freed) */
                ngx_ahava_log_limited(&hub->error_log, NGX_LOG_WARN, hub->log,
                                      "ahava: websocket events wait for "
                                      "redis");
            }

        } else if (ch->nsessions == 0
                   && (ch->state == NGX_AHAVA_WS_CH_SUBSCRIBING
                       || ch->state == NGX_AHAVA_WS_CH_SUBSCRIBED))
        {
            rc = ngx_ahava_redis_command(hub->redis, ngx_ahava_ws_hub_reply,
                                         hub, "UNSUBSCRIBE "
                                         NGX_AHAVA_WS_CHANNEL "%b",
                                         ch->id, ch->id_len);
            if (rc == NGX_OK) {
                ch->state = NGX_AHAVA_WS_CH_UNSUBSCRIBING;

            } else {
                /* the connection is gone, and its subscriptions with it */
                ch->state = NGX_AHAVA_WS_CH_NONE;
            }
        }

        ngx_queue_remove(q);
        ch->in_dirty = 0;

        if (ch->nsessions == 0 && ch->state == NGX_AHAVA_WS_CH_NONE) {
            ngx_ahava_ws_hub_free(hub, ch);
        }
    }
}


static void
ngx_ahava_ws_hub_free(ngx_ahava_ws_hub_t *hub, ngx_ahava_ws_channel_t *ch)
{
    ngx_uint_t                b;
    ngx_ahava_ws_channel_t  **pp;

    b = ngx_crc32_short(ch->id, ch->id_len) & (NGX_AHAVA_WS_BUCKETS - 1);

    for (pp = &hub->buckets[b]; *pp; pp = &(*pp)->next) {
        if (*pp == ch) {
            *pp = ch->next;
            break;
        }
    }

    hub->nchannels--;
    ngx_free(ch);
}


/*
 * (Re)connected: the new connection has no subscription, every channel
 * with sockets subscribes again, from the posted flush, and each socket
 * replays the messages it missed meanwhile once its channel is subscribed.
 */

static void
ngx_ahava_ws_hub_ready(ngx_ahava_redis_t *redis, void *data)
{
    ngx_ahava_ws_hub_t  *hub = data;

    ngx_uint_t               i;
    ngx_queue_t             *q;
    ngx_ahava_ws_channel_t  *ch, *next;

    ngx_log_error(NGX_LOG_INFO, hub->log, 0,
                  "ahava: websocket hub subscribing %ui users",
                  hub->nchannels);

    for (i = 0; i < NGX_AHAVA_WS_BUCKETS; i++) {
        for (ch = hub->buckets[i]; ch; ch = next) {
            next = ch->next;
            ch->state = NGX_AHAVA_WS_CH_NONE;
            ngx_ahava_ws_hub_dirty(hub, ch);

            /* what was published while unsubscribed: replayed once the
             * channel is subscribed again */
            for (q = ngx_queue_head(&ch->sessions);
                 q != ngx_queue_sentinel(&ch->sessions);
                 q = ngx_queue_next(q))
            {
                ngx_ahava_ws_resume(ngx_queue_data(q, ngx_ahava_ws_session_t,
                                                   queue));
            }
        }
    }
}


/* every pub/sub reply of the subscriber: confirmations and events */

static void
ngx_ahava_ws_hub_reply(redisAsyncContext *ac, void *r, void *data)
{
    redisReply  *reply = r;
    ngx_ahava_ws_hub_t  *hub = data;

    u_char                  *id;
    size_t                   len;
    ngx_uint_t               b;
    ngx_queue_t             *q, *next;
    redisReply              *kind, *name, *payload;
    ngx_ahava_ws_frame_t    *f;
    ngx_ahava_ws_session_t  *s;
    ngx_ahava_ws_channel_t  *ch;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 3)
    {
        /* the connection is going away, or an error reply */
        if (reply && reply->type == REDIS_REPLY_ERROR) {
            ngx_ahava_log_limited(&hub->error_log, NGX_LOG_ERR, hub->log,
                                  "ahava: redis subscription failed: %s",
                                  reply->str);
        }

        return;
    }

    kind = reply->element[0];
    name = reply->element[1];
    payload = reply->element[2];

    if (kind->type != REDIS_REPLY_STRING || name->type != REDIS_REPLY_STRING
        || (size_t) name->len <= sizeof(NGX_AHAVA_WS_CHANNEL) - 1)
    {
        return;
    }

    id = (u_char *) name->str + sizeof(NGX_AHAVA_WS_CHANNEL) - 1;
    len = name->len - (sizeof(NGX_AHAVA_WS_CHANNEL) - 1);

    ch = ngx_ahava_ws_hub_find(hub, id, len, &b);

    if (ch == NULL) {
        return;
    }

    if (ngx_strcmp(kind->str, "subscribe") == 0) {
        if (ch->state == NGX_AHAVA_WS_CH_SUBSCRIBING) {
            ch->state = NGX_AHAVA_WS_CH_SUBSCRIBED;

            for (q = ngx_queue_head(&ch->sessions);
                 q != ngx_queue_sentinel(&ch->sessions);
                 q = next)
            {
                next = ngx_queue_next(q);
                s = ngx_queue_data(q, ngx_ahava_ws_session_t, queue);
                ngx_ahava_ws_listening(s);
            }
        }

        return;
    }

    if (ngx_strcmp(kind->str, "unsubscribe") == 0) {
        if (ch->state == NGX_AHAVA_WS_CH_UNSUBSCRIBING) {
            ch->state = NGX_AHAVA_WS_CH_NONE;
            /* freed, or subscribed again if a socket came meanwhile */
            ngx_ahava_ws_hub_dirty(hub, ch);
        }

        return;
    }

    if (ngx_strcmp(kind->str, "message") != 0
        || payload->type != REDIS_REPLY_STRING)
    {
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, hub->log, 0,
                   "ahava: websocket event for \"%s\", %ui sockets",
                   ch->id, ch->nsessions);

    if (ch->nsessions == 0) {
        return;
    }

    f = ngx_ahava_ws_frame_create(NGX_AHAVA_WS_OP_TEXT,
                                  (u_char *) payload->str, payload->len,
                                  hub->log);
    if (f == NULL) {
        return;
    }

    /* a socket that cannot take it closes later, from its own event */
    f->refs++;

    for (q = ngx_queue_head(&ch->sessions);
         q != ngx_queue_sentinel(&ch->sessions);
         q = next)
    {
        next = ngx_queue_next(q);
        s = ngx_queue_data(q, ngx_ahava_ws_session_t, queue);
        ngx_ahava_ws_deliver(s, f);
    }

    ngx_ahava_ws_frame_release(f);
}
