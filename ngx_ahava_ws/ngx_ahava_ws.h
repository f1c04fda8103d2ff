
/*
 * Shared by the WebSocket module (ngx_ahava_ws_module.c: the handshake,
 * the sessions) and its hub (ngx_ahava_ws_hub.c: the worker's Redis
 * subscriber and the sockets of each user on this worker).
 */


#ifndef _NGX_AHAVA_WS_H_INCLUDED_
#define _NGX_AHAVA_WS_H_INCLUDED_


#include "ngx_ahava_core.h"
#include "ngx_ahava_ws_frame.h"


typedef struct ngx_ahava_ws_session_s  ngx_ahava_ws_session_t;
typedef struct ngx_ahava_ws_deferred_s ngx_ahava_ws_deferred_t;

struct ngx_ahava_ws_deferred_s {
    ngx_ahava_ws_deferred_t   *next;
    size_t                     len;
    u_char                     data[1];
};

typedef struct ngx_ahava_ws_channel_s  ngx_ahava_ws_channel_t;
typedef struct ngx_ahava_ws_hub_s      ngx_ahava_ws_hub_t;


/* a message's createdAt as text: "2026-12-02 01:26:00.123" or ISO 8601 */
#define NGX_AHAVA_WS_AT_LEN        63


/*
 * A frame as it goes on the wire (header and payload), built once and
 * shared by every socket it is queued on; freed with its last reference.
 */
typedef struct {
    ngx_uint_t                 refs;
    size_t                     len;
    u_char                    *id;              /* NEW_MESSAGE: its id */
    u_char                    *at;              /* ... and its createdAt */
    u_char                     data[1];
} ngx_ahava_ws_frame_t;


/* the place of a frame in a socket's send queue */
typedef struct ngx_ahava_ws_out_s  ngx_ahava_ws_out_t;

struct ngx_ahava_ws_out_s {
    ngx_ahava_ws_out_t        *next;
    ngx_ahava_ws_frame_t      *frame;
    ngx_uint_t                 duplicate;       /* held, then replayed */
};


typedef struct {
    ngx_msec_t                 ping_interval;
    ngx_msec_t                 pong_timeout;
    size_t                     send_queue;
    size_t                     max_message;
} ngx_ahava_ws_loc_conf_t;


/* the sockets of one user on this worker, and their subscription */
struct ngx_ahava_ws_channel_s {
    ngx_ahava_ws_channel_t    *next;            /* in its bucket */
    ngx_queue_t                sessions;
    ngx_queue_t                dirty;           /* in hub->dirty */
    ngx_uint_t                 nsessions;
    unsigned                   state:2;         /* NGX_AHAVA_WS_CH_* */
    unsigned                   in_dirty:1;
    size_t                     id_len;
    u_char                     id[NGX_AHAVA_ID_MAX_LEN + 1];
};


struct ngx_ahava_ws_session_s {
    ngx_connection_t          *connection;
    ngx_http_request_t        *request;         /* until the takeover */
    ngx_pool_cleanup_t        *cleanup;         /* frees it until then */
    ngx_ahava_ws_loc_conf_t   *conf;
    ngx_ahava_ws_channel_t    *channel;
    ngx_queue_t                queue;           /* in channel->sessions */
    ngx_ahava_role_e           role;

    ngx_ahava_ws_parser_t      parser;

    /* the send queue */
    ngx_ahava_ws_out_t        *out;
    ngx_ahava_ws_out_t       **out_last;
    size_t                     out_sent;        /* of the first frame */
    size_t                     out_bytes;

    /* live events held while the replay of ?since= runs (their bytes are
     * in out_bytes too: the bound covers both) */
    ngx_ahava_ws_out_t        *held;
    ngx_ahava_ws_out_t       **held_last;
    size_t                     held_bytes;

    ngx_event_t                timer;           /* the takeover, then pings */
    ngx_msec_t                 alive_at;        /* the client's last frame */

    /* a client frame being served: its pool and statement */
    ngx_pool_t                *op;
    ngx_ahava_pg_query_t      *query;

    /* client bytes read but not parsed yet (while messages wait) */
    u_char                    *pending;
    size_t                     pending_len;

    /* client messages that came while an op ran: served in order after
     * it, while control frames are answered at once */
    ngx_ahava_ws_deferred_t   *deferred;
    ngx_ahava_ws_deferred_t  **deferred_last;
    size_t                     deferred_bytes;

    void                      *replay;          /* while ?since= replays */
    void                      *replayed;        /* the last ids it sent */

    /* the last message queued (at first: the socket's opening), where a
     * replay starts after the worker lost its subscription (Redis keeps
     * nothing for a subscriber that is away) */
    u_char                     last_at[NGX_AHAVA_WS_AT_LEN + 1];
    u_char                     last_id[NGX_AHAVA_ID_MAX_LEN + 1];

    ngx_uint_t                 close_code;      /* to close with */
    ngx_msec_t                 linger;          /* lingering_timeout */

    unsigned                   closing:1;       /* close once flushed */
    unsigned                   close_sent:1;
    unsigned                   close_received:1;
    unsigned                   replay_started:1; /* once subscribed */
    unsigned                   replay_due:1;    /* after the current op */
    unsigned                   replay_wait:1;   /* for the queue to drain */

    /* a replay owed after a lost subscription: live events are held from
     * then; it starts once subscribed again, in one of the hub's few
     * resume slots (ngx_ahava_ws_hub_resume_slot) */
    unsigned                   resume_pending:1;
    unsigned                   resume_after:1;  /* once the running one ends */
    unsigned                   resuming:1;      /* holds a slot */
    unsigned                   resume_waiting:1; /* in hub->resume_wait */
    ngx_queue_t                resume_queue;
};


#define NGX_AHAVA_WS_CH_NONE          0
#define NGX_AHAVA_WS_CH_SUBSCRIBING   1
#define NGX_AHAVA_WS_CH_SUBSCRIBED    2
#define NGX_AHAVA_WS_CH_UNSUBSCRIBING 3


extern ngx_module_t  ngx_ahava_ws_module;


/* the hub (ngx_ahava_ws_hub.c) */
ngx_ahava_ws_hub_t *ngx_ahava_ws_hub_create(ngx_cycle_t *cycle,
    ngx_ahava_main_conf_t *amcf);
void ngx_ahava_ws_hub_destroy(ngx_ahava_ws_hub_t *hub);
ngx_int_t ngx_ahava_ws_hub_join(ngx_ahava_ws_hub_t *hub,
    ngx_ahava_ws_session_t *s, u_char *id, size_t len);
void ngx_ahava_ws_hub_leave(ngx_ahava_ws_hub_t *hub,
    ngx_ahava_ws_session_t *s);
ngx_uint_t ngx_ahava_ws_hub_listening(ngx_ahava_ws_hub_t *hub,
    ngx_ahava_ws_session_t *s);
ngx_uint_t ngx_ahava_ws_hub_resume_slot(ngx_ahava_ws_hub_t *hub,
    ngx_ahava_ws_session_t *s);
void ngx_ahava_ws_hub_resume_done(ngx_ahava_ws_hub_t *hub,
    ngx_ahava_ws_session_t *s);

/* the sessions (ngx_ahava_ws_module.c) */
ngx_ahava_ws_frame_t *ngx_ahava_ws_frame_create(int opcode, u_char *payload,
    size_t len, ngx_log_t *log);
void ngx_ahava_ws_frame_release(ngx_ahava_ws_frame_t *f);
void ngx_ahava_ws_deliver(ngx_ahava_ws_session_t *s, ngx_ahava_ws_frame_t *f);
void ngx_ahava_ws_listening(ngx_ahava_ws_session_t *s);
void ngx_ahava_ws_resume(ngx_ahava_ws_session_t *s);


#endif /* _NGX_AHAVA_WS_H_INCLUDED_ */
