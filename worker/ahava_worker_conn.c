
/*
 * Copyright (C) Ahava
 */


/*
 * A thread's connections: Redis (REDIS_URL), PostgreSQL (DATABASE_URL),
 * opened on first use and again after an error; and the §8 frames the
 * processors publish to a user's channel, as the nginx relay does.
 */


#include "ahava_worker.h"
#include "ahava_worker_run.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static char *ahava_url_unescape(const char *p, size_t n);


/* redis://[[user]:password@]host[:port][/db] */
int
ahava_redis_url_parse(const char *url, ahava_redis_url_t *u)
{
    const char  *p, *at, *colon, *slash, *host_end;
    char        *end;
    long         v;

    memset(u, 0, sizeof(ahava_redis_url_t));
    u->port = 6379;

    if (strncmp(url, "redis://", 8) != 0) {
        return -1;
    }

    p = url + 8;
    slash = strchr(p, '/');
    at = strrchr(p, '@');

    if (at && slash && at > slash) {
        at = NULL;
    }

    if (at) {
        colon = memchr(p, ':', at - p);

        if (colon) {
            if (colon > p) {
                u->user = ahava_url_unescape(p, colon - p);
            }
            u->password = ahava_url_unescape(colon + 1, at - colon - 1);

        } else {
            u->password = ahava_url_unescape(p, at - p);
        }

        p = at + 1;
    }

    host_end = slash ? slash : p + strlen(p);
    colon = memchr(p, ':', host_end - p);

    if (colon) {
        v = strtol(colon + 1, &end, 10);
        if (end != host_end || v <= 0 || v > 65535) {
            return -1;
        }
        u->port = (int) v;
        host_end = colon;
    }

    if (host_end == p) {
        u->host = strdup("127.0.0.1");
    } else {
        u->host = strndup(p, host_end - p);
    }

    if (slash && slash[1]) {
        v = strtol(slash + 1, &end, 10);
        if (*end != '\0' || v < 0 || v > 1000) {
            return -1;
        }
        u->db = (int) v;
    }

    return 0;
}


static char *
ahava_url_unescape(const char *p, size_t n)
{
    char    *s, *d, hex[3];
    size_t   i;

    s = malloc(n + 1);
    if (s == NULL) {
        return NULL;
    }

    d = s;

    for (i = 0; i < n; i++) {
        if (p[i] == '%' && i + 2 < n && isxdigit((unsigned char) p[i + 1])
            && isxdigit((unsigned char) p[i + 2]))
        {
            hex[0] = p[i + 1];
            hex[1] = p[i + 2];
            hex[2] = '\0';
            *d++ = (char) strtol(hex, NULL, 16);
            i += 2;
            continue;
        }

        *d++ = p[i];
    }

    *d = '\0';

    return s;
}


redisContext *
ahava_redis_connect(ahava_redis_url_t *u, char *err, size_t errlen)
{
    redisContext    *c;
    redisReply      *r;
    struct timeval   tv = { 5, 0 };

    c = redisConnectWithTimeout(u->host, u->port, tv);

    if (c == NULL || c->err) {
        snprintf(err, errlen, "%s:%d: %s", u->host, u->port,
                 c ? c->errstr : "out of memory");
        if (c) {
            redisFree(c);
        }
        return NULL;
    }

    /* longer than any BZPOPMIN we send (1 s) */
    tv.tv_sec = 10;
    redisSetTimeout(c, tv);

    if (u->password) {
        r = u->user ? redisCommand(c, "AUTH %s %s", u->user, u->password)
                    : redisCommand(c, "AUTH %s", u->password);

        if (r == NULL || r->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "AUTH: %s", r ? r->str : c->errstr);
            goto failed;
        }
        freeReplyObject(r);
    }

    if (u->db) {
        r = redisCommand(c, "SELECT %d", u->db);

        if (r == NULL || r->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "SELECT: %s", r ? r->str : c->errstr);
            goto failed;
        }
        freeReplyObject(r);
    }

    return c;

failed:

    if (r) {
        freeReplyObject(r);
    }

    redisFree(c);

    return NULL;
}


PGconn *
ahava_thread_pg(ahava_thread_t *t, char *err, size_t errlen)
{
    /*
     * no statement may hold a job (and its renewed lock) for ever, and a
     * dead peer behind a silent network is noticed by the keepalives
     */
    const char  *keys[] = { "dbname", "connect_timeout", "application_name",
                            "options", "keepalives", "keepalives_idle",
                            "keepalives_interval", "keepalives_count",
                            "client_encoding", NULL };
    const char  *values[] = { NULL, "5", "ahava-worker",
                              "-c statement_timeout=60000", "1", "30", "10",
                              "3", "UTF8", NULL };

    if (t->pg && PQstatus(t->pg) == CONNECTION_OK) {
        return t->pg;
    }

    if (t->pg) {
        PQfinish(t->pg);
        t->pg = NULL;
    }

    if (t->conf->database_url == NULL) {
        snprintf(err, errlen, "DATABASE_URL is not set");
        return NULL;
    }

    values[0] = t->conf->database_url;
    t->pg = PQconnectdbParams(keys, values, 1);

    if (t->pg == NULL || PQstatus(t->pg) != CONNECTION_OK) {
        snprintf(err, errlen, "postgresql: %s",
                 t->pg ? PQerrorMessage(t->pg) : "out of memory");

        /* libpq's message ends with a newline */
        err[strcspn(err, "\n")] = '\0';

        if (t->pg) {
            PQfinish(t->pg);
            t->pg = NULL;
        }

        return NULL;
    }

    /* statements prepared on the old session are gone */
    t->pg_epoch++;

    return t->pg;
}


int
ahava_thread_publish(ahava_thread_t *t, const char *user, const char *type,
    json_t *data, char *err, size_t errlen)
{
    redisReply  *r;
    json_t      *frame;
    char        *text, ts[32];
    int          rc;

    if (t->redis == NULL) {
        t->redis = ahava_redis_connect(&ahava_main.redis, err, errlen);
        if (t->redis == NULL) {
            return -1;
        }
    }

    frame = json_pack("{s:s,s:O,s:s}", "type", type, "data", data,
                      "timestamp", ahava_iso_now(ts, sizeof(ts)));
    text = frame ? json_dumps(frame, JSON_COMPACT | JSON_PRESERVE_ORDER)
                 : NULL;
    json_decref(frame);

    if (text == NULL) {
        snprintf(err, errlen, "cannot build the %s frame", type);
        return -1;
    }

    r = redisCommand(t->redis, "PUBLISH ahava:user:%s %s", user, text);
    free(text);

    rc = 0;

    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "redis PUBLISH: %s",
                 r ? r->str : t->redis->errstr);
        rc = -1;
    }

    if (r) {
        freeReplyObject(r);

    } else {
        redisFree(t->redis);
        t->redis = NULL;
    }

    return rc;
}


void
ahava_thread_close(ahava_thread_t *t)
{
    if (t->pg) {
        PQfinish(t->pg);
        t->pg = NULL;
    }

    if (t->redis) {
        redisFree(t->redis);
        t->redis = NULL;
    }

    if (t->curl) {
        curl_easy_cleanup(t->curl);
        t->curl = NULL;
    }
}
