
/*
 * Events that are not stored (SPEC §8): TYPING_INDICATOR, published to
 * Redis at once, one PUBLISH per recipient on the channel
 * "ahava:user:<userId>", the payload being the WebSocket frame itself:
 * {"type":T,"data":{...},"timestamp":ISO}; lost if Redis is down, as a
 * typing hint may be.  The events of a committed change go through the
 * outbox instead (ngx_ahava_outbox.c), and are never lost.
 */


#include "ngx_ahava_core.h"


/*
 * Publishes one event to each recipient, each once, the actor excepted
 * unless NGX_AHAVA_PUBLISH_TO_ACTOR (their other sessions).  data is the
 * JSON text of the event's data.  NGX_DECLINED when Redis is down.
 */

ngx_int_t
ngx_ahava_publish_in(ngx_ahava_main_conf_t *amcf, ngx_pool_t *pool,
    ngx_log_t *log, u_char *actor, const char *type, u_char *data,
    size_t len, char **recipients, ngx_uint_t n, ngx_uint_t flags)
{
    u_char      *payload, *p;
    ngx_int_t    rc;
    ngx_uint_t   i, j, sent;

    static ngx_ahava_log_limit_t  down_log;

    payload = ngx_pnalloc(pool, len + ngx_strlen(type)
                                + NGX_AHAVA_ISO_TIME_LEN + 64);
    if (payload == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(payload, "{\"type\":\"%s\",\"data\":", type);
    p = ngx_cpymem(p, data, len);
    p = ngx_cpymem(p, ",\"timestamp\":\"", sizeof(",\"timestamp\":\"") - 1);
    p = ngx_ahava_iso_time(p);
    *p++ = '"';
    *p++ = '}';

    rc = NGX_OK;
    sent = 0;

    for (i = 0; i < n; i++) {
        if (recipients[i] == NULL
            || (!(flags & NGX_AHAVA_PUBLISH_TO_ACTOR)
                && ngx_strcmp(recipients[i], actor) == 0))
        {
            continue;
        }

        for (j = 0; j < i; j++) {
            if (recipients[j] && ngx_strcmp(recipients[j], recipients[i]) == 0)
            {
                break;
            }
        }

        if (j < i) {
            continue;
        }

        rc = ngx_ahava_redis_command(amcf->redis, NULL, NULL,
                                     "PUBLISH ahava:user:%s %b",
                                     recipients[i], payload,
                                     (size_t) (p - payload));
        if (rc != NGX_OK) {
            break;
        }

        sent++;
    }

    if (rc != NGX_OK) {
        ngx_ahava_log_limited(&down_log, NGX_LOG_WARN, log,
                              "ahava: event %s not published: redis "
                              "unavailable", type);
        return NGX_DECLINED;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, log, 0,
                   "ahava: event %s published to %ui users", type, sent);

    if (sent) {
        ngx_ahava_metrics_count(NGX_AHAVA_M_EVENTS_PUBLISHED, 1);
    }

    return NGX_OK;
}
