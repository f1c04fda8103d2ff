
/*
 * Copyright (C) Ahava
 */


/*
 * push-notification (SPEC §9): Expo's push API.  A runner's jobs go out
 * together: the recipients' pushTokens come from the tokens cache
 * (ahava_worker_tokens.c), one statement reads those it lacks, and the
 * messages (one per token) are POSTed as JSON arrays of at most 100, as
 * Expo asks.  A ticket saying DeviceNotRegistered removes that token from
 * its user; 429 and 5xx answers are retried with the job's backoff.
 */


#include "ahava_worker.h"
#include "ahava_worker_run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#define AHAVA_PUSH_CHUNK      100       /* Expo's limit per request */
#define AHAVA_PUSH_TOKENS     100       /* per user, more are ignored */
#define AHAVA_PUSH_BODY_MAX   (1024 * 1024)


/* the statements, prepared once per connection */
#define AHAVA_PUSH_TOKENS_SQL                                                 \
    "SELECT id, coalesce(array_to_json(\"pushTokens\"), '[]')::text"          \
    " FROM users WHERE id = ANY($1::text[]) AND \"isActive\""

#define AHAVA_PUSH_PRUNE_SQL                                                  \
    "UPDATE users SET \"pushTokens\" = array_remove(\"pushTokens\", $2),"     \
    " \"updatedAt\" = LOCALTIMESTAMP(3) WHERE id = $1"


typedef struct {
    int          job;                   /* index in the batch */
    const char  *user;
    const char  *token;
} ahava_push_msg_t;


typedef struct {
    char        *data;
    size_t       len;
} ahava_push_body_t;


typedef struct {
    long         sent;
    long         pruned;
    long         errors;
    long         tokens;
    int          retry;                 /* a 429/5xx/transport failure */
    int          fatal;
    char         reason[AHAVA_ERR_LEN];
} ahava_push_tally_t;


static int ahava_push_prepare(ahava_thread_t *t, PGconn *pg, char *err,
    size_t errlen);
static int ahava_push_send(ahava_thread_t *t, ahava_job_t **jobs,
    ahava_push_msg_t *msgs, int n, ahava_push_tally_t *tally, PGconn *pg);
static size_t ahava_push_write(char *p, size_t size, size_t n, void *arg);


static __thread unsigned long  ahava_push_prepared;  /* pg_epoch */


ahava_job_rc_e
ahava_push_process(ahava_thread_t *t, ahava_job_t *job, char **result,
    char *err, size_t errlen)
{
    ahava_job_t     *jobs[1];
    ahava_job_rc_e   rc;
    char             errs[1][AHAVA_ERR_LEN];

    jobs[0] = job;
    ahava_push_process_batch(t, jobs, 1, &rc, result, errs);
    snprintf(err, errlen, "%s", errs[0]);

    return rc;
}


ahava_job_rc_e
ahava_push_process_batch(ahava_thread_t *t, ahava_job_t **jobs, int n,
    ahava_job_rc_e *rcs, char **results, char (*errs)[AHAVA_ERR_LEN])
{
    ahava_push_tally_t  *tally;
    ahava_push_msg_t    *msgs;
    PGresult            *res;
    PGconn              *pg;
    json_t              *tok;
    json_t             **tokens;
    const char          *user, *param;
    uint64_t             epoch;
    char                 err[AHAVA_ERR_LEN], *ids, *p, **known;
    size_t               len, k;
    int                  i, j, row, nmsgs, nvalid, nmissing, first, cached;

    tally = calloc(n, sizeof(ahava_push_tally_t));
    msgs = malloc((size_t) n * AHAVA_PUSH_TOKENS * sizeof(ahava_push_msg_t));
    ids = malloc((size_t) n * 66 + 3);
    tokens = calloc(n, sizeof(json_t *));
    known = calloc(n, sizeof(char *));
    res = NULL;

    if (tally == NULL || msgs == NULL || ids == NULL || tokens == NULL
        || known == NULL)
    {
        for (i = 0; i < n; i++) {
            rcs[i] = AHAVA_JOB_RETRY;
            results[i] = NULL;
            snprintf(errs[i], AHAVA_ERR_LEN, "out of memory");
        }
        goto done;
    }

    nvalid = 0;

    for (i = 0; i < n; i++) {
        json_t  *d = jobs[i]->data;

        results[i] = NULL;
        errs[i][0] = '\0';

        user = json_string_value(json_object_get(d, "userId"));

        if (!json_is_object(d) || user == NULL || !ahava_valid_id(user)
            || !json_is_string(json_object_get(d, "title"))
            || !json_is_string(json_object_get(d, "body"))
            || (json_object_get(d, "data")
                && !json_is_object(json_object_get(d, "data"))))
        {
            tally[i].fatal = 1;
            snprintf(tally[i].reason, AHAVA_ERR_LEN, "push job data must be"
                     " {userId, title, body, data?} with a valid userId");
            continue;
        }

        nvalid++;
    }

    nmsgs = 0;

    if (nvalid == 0) {
        goto answer;
    }

    pg = ahava_thread_pg(t, err, sizeof(err));

    if (pg == NULL || ahava_push_prepare(t, pg, err, sizeof(err)) != 0) {
        for (i = 0; i < n; i++) {
            if (!tally[i].fatal) {
                tally[i].retry = 1;
                snprintf(tally[i].reason, AHAVA_ERR_LEN, "%s", err);
            }
        }
        goto answer;
    }

    /* the users the cache knows, after the changes it heard of */
    cached = ahava_tokens_sync(&epoch);

    /* {id,...} of the others: ids are safe in an array literal */
    p = ids;
    *p++ = '{';
    nmissing = 0;

    for (i = 0; i < n; i++) {
        if (tally[i].fatal) {
            continue;
        }

        user = json_string_value(json_object_get(jobs[i]->data, "userId"));
        known[i] = cached ? ahava_tokens_get(user) : NULL;

        if (known[i]) {
            continue;
        }

        if (nmissing++) {
            *p++ = ',';
        }

        len = strlen(user);
        memcpy(p, user, len);
        p += len;
    }

    *p++ = '}';
    *p = '\0';

    if (nmissing) {
        param = ids;
        res = PQexecPrepared(pg, "push tokens", 1, &param, NULL, NULL, 0);

        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            snprintf(err, sizeof(err), "postgresql: %s",
                     PQresultErrorMessage(res));
            err[strcspn(err, "\n")] = '\0';

            for (i = 0; i < n; i++) {
                if (!tally[i].fatal) {
                    tally[i].retry = 1;
                    snprintf(tally[i].reason, AHAVA_ERR_LEN, "%s", err);
                }
            }
            goto answer;
        }

        /* what was heard meanwhile evicts, and voids fills sent at epoch */
        if (cached) {
            (void) ahava_tokens_sync(NULL);
        }

        /* a user with no row (gone, or not active) has no tokens */
        for (i = 0; i < n; i++) {
            if (tally[i].fatal || known[i]) {
                continue;
            }

            user = json_string_value(json_object_get(jobs[i]->data,
                                                     "userId"));

            for (row = 0; row < PQntuples(res); row++) {
                if (strcmp(PQgetvalue(res, row, 0), user) == 0) {
                    break;
                }
            }

            known[i] = strdup(row < PQntuples(res) ? PQgetvalue(res, row, 1)
                                                   : "[]");
            if (known[i] == NULL) {
                tally[i].retry = 1;
                snprintf(tally[i].reason, AHAVA_ERR_LEN, "out of memory");

            } else if (cached) {
                ahava_tokens_put(user, known[i], epoch);
            }
        }
    }

    /* one message per token of each job's user */
    for (i = 0; i < n; i++) {
        if (tally[i].fatal) {
            continue;
        }

        tokens[i] = known[i] ? json_loads(known[i], 0, NULL) : NULL;

        if (!json_is_array(tokens[i])) {
            continue;
        }

        user = json_string_value(json_object_get(jobs[i]->data, "userId"));

        json_array_foreach(tokens[i], k, tok) {
            if (!json_is_string(tok) || k >= AHAVA_PUSH_TOKENS) {
                continue;
            }

            msgs[nmsgs].job = i;
            msgs[nmsgs].user = user;
            msgs[nmsgs].token = json_string_value(tok);
            nmsgs++;
            tally[i].tokens++;
        }
    }

    for (first = 0; first < nmsgs; first += AHAVA_PUSH_CHUNK) {
        j = nmsgs - first < AHAVA_PUSH_CHUNK ? nmsgs - first
                                             : AHAVA_PUSH_CHUNK;
        ahava_push_send(t, jobs, &msgs[first], j, tally, pg);
    }

answer:

    for (i = 0; i < n; i++) {
        if (tally[i].fatal) {
            rcs[i] = AHAVA_JOB_FATAL;
            snprintf(errs[i], AHAVA_ERR_LEN, "%s", tally[i].reason);

        } else if (tally[i].retry && tally[i].sent == 0) {
            /* a retry sends to every token again: only when none got it */
            rcs[i] = AHAVA_JOB_RETRY;
            snprintf(errs[i], AHAVA_ERR_LEN, "%s", tally[i].reason);

        } else {
            if (tally[i].retry) {
                /* some devices have it: the others are counted, not retried */
                tally[i].errors = tally[i].tokens - tally[i].sent
                                  - tally[i].pruned;
            }

            json_t  *o;

            rcs[i] = AHAVA_JOB_DONE;
            o = json_pack("{s:I,s:I,s:I,s:I}",
                          "tokens", (json_int_t) tally[i].tokens,
                          "sent", (json_int_t) tally[i].sent,
                          "pruned", (json_int_t) tally[i].pruned,
                          "errors", (json_int_t) tally[i].errors);

            if (t->conf->expo_push_url == NULL) {
                json_object_set_new(o, "logOnly", json_true());
            }

            results[i] = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
            json_decref(o);
        }
    }

done:

    for (i = 0; i < n; i++) {
        if (tokens) {
            json_decref(tokens[i]);
        }
        if (known) {
            free(known[i]);
        }
    }

    PQclear(res);
    free(tally);
    free(msgs);
    free(ids);
    free(tokens);
    free(known);

    return n ? rcs[0] : AHAVA_JOB_DONE;
}


static int
ahava_push_prepare(ahava_thread_t *t, PGconn *pg, char *err, size_t errlen)
{
    PGresult  *res;
    int        i;

    static const char  *stmts[][2] = {
        { "push tokens", AHAVA_PUSH_TOKENS_SQL },
        { "push prune", AHAVA_PUSH_PRUNE_SQL },
    };

    if (ahava_push_prepared == t->pg_epoch) {
        return 0;
    }

    for (i = 0; i < 2; i++) {
        res = PQprepare(pg, stmts[i][0], stmts[i][1], 0, NULL);

        /* 42P05: prepared by an earlier, half-done attempt on this session */
        if (PQresultStatus(res) != PGRES_COMMAND_OK
            && strcmp(PQresultErrorField(res, PG_DIAG_SQLSTATE) ?: "", "42P05")
               != 0)
        {
            snprintf(err, errlen, "postgresql: %s",
                     PQresultErrorMessage(res));
            err[strcspn(err, "\n")] = '\0';
            PQclear(res);
            return -1;
        }

        PQclear(res);
    }

    ahava_push_prepared = t->pg_epoch;

    return 0;
}


/* one POST of at most 100 messages; tallies each message's job */
static int
ahava_push_send(ahava_thread_t *t, ahava_job_t **jobs, ahava_push_msg_t *msgs,
    int n, ahava_push_tally_t *tally, PGconn *pg)
{
    struct curl_slist  *headers;
    ahava_push_body_t   body;
    PGresult           *res;
    CURLcode            cc;
    json_t             *arr, *m, *d, *answer, *tickets, *tk;
    const char         *status, *detail, *params[2];
    char               *text, cerr[CURL_ERROR_SIZE], auth[600];
    long                code;
    int                 i, k, noticket;

    arr = json_array();

    for (i = 0; i < n; i++) {
        d = jobs[msgs[i].job]->data;
        m = json_pack("{s:s,s:O,s:O,s:s}", "to", msgs[i].token,
                      "title", json_object_get(d, "title"),
                      "body", json_object_get(d, "body"),
                      "sound", "default");

        if (json_object_get(d, "data")) {
            json_object_set(m, "data", json_object_get(d, "data"));
        }

        json_array_append_new(arr, m);
    }

    if (t->conf->expo_push_url == NULL) {
        /* the embedded default: say what would have been sent */
        for (i = 0; i < n; i++) {
            ahava_log("info", "push (log only: EXPO_PUSH_URL is not set)",
                      "{s:s,s:s,s:s}", "queue", t->queue,
                      "jobId", jobs[msgs[i].job]->id, "userId", msgs[i].user);
            tally[msgs[i].job].sent++;
        }

        json_decref(arr);
        return 0;
    }

    text = json_dumps(arr, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(arr);

    if (t->curl == NULL) {
        t->curl = curl_easy_init();
    }

    if (text == NULL || t->curl == NULL) {
        free(text);
        for (i = 0; i < n; i++) {
            tally[msgs[i].job].retry = 1;
            snprintf(tally[msgs[i].job].reason, AHAVA_ERR_LEN,
                     "out of memory");
        }
        return -1;
    }

    body.data = NULL;
    body.len = 0;
    cerr[0] = '\0';

    headers = curl_slist_append(NULL, "Content-Type: application/json");
    headers = curl_slist_append(headers, "Accept: application/json");

    if (t->conf->expo_access_token) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s",
                 t->conf->expo_access_token);
        headers = curl_slist_append(headers, auth);
    }

    /* the same handle each time: curl keeps the connection alive */
    curl_easy_setopt(t->curl, CURLOPT_URL, t->conf->expo_push_url);
    curl_easy_setopt(t->curl, CURLOPT_POST, 1L);
    curl_easy_setopt(t->curl, CURLOPT_POSTFIELDS, text);
    curl_easy_setopt(t->curl, CURLOPT_POSTFIELDSIZE, (long) strlen(text));
    curl_easy_setopt(t->curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(t->curl, CURLOPT_WRITEFUNCTION, ahava_push_write);
    curl_easy_setopt(t->curl, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(t->curl, CURLOPT_ERRORBUFFER, cerr);
    curl_easy_setopt(t->curl, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(t->curl, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(t->curl, CURLOPT_NOSIGNAL, 1L);

    cc = curl_easy_perform(t->curl);
    code = 0;
    curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &code);

    curl_easy_setopt(t->curl, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(t->curl, CURLOPT_ERRORBUFFER, NULL);
    curl_slist_free_all(headers);
    free(text);

    if (cc == CURLE_OK && code >= 400 && code < 500 && code != 429
        && code != 401 && code != 403 && msgs[0].job != msgs[n - 1].job)
    {
        /* Expo refuses a whole request for one bad message (or for tokens
         * of two projects): each job's messages alone then, so that one
         * job's fault fails no other (a job's messages are contiguous) */
        free(body.data);

        for (i = 0; i < n; i = k) {
            for (k = i + 1; k < n && msgs[k].job == msgs[i].job; k++) {
                /* void */
            }

            (void) ahava_push_send(t, jobs, &msgs[i], k - i, tally, pg);
        }

        return 0;
    }

    if (cc != CURLE_OK || code == 429 || code >= 500 || code < 200
        || code >= 300)
    {
        for (i = 0; i < n; i++) {
            ahava_push_tally_t  *y = &tally[msgs[i].job];

            if (cc != CURLE_OK) {
                y->retry = 1;
                snprintf(y->reason, AHAVA_ERR_LEN, "push endpoint: %s",
                         cerr[0] ? cerr : curl_easy_strerror(cc));

            } else if (code == 429 || code >= 500 || code == 401
                       || code == 403)
            {
                /* busy, or the access token being rotated: again later */
                y->retry = 1;
                snprintf(y->reason, AHAVA_ERR_LEN,
                         "push endpoint answered %ld", code);

            } else {
                y->fatal = 1;
                snprintf(y->reason, AHAVA_ERR_LEN,
                         "push endpoint answered %ld: %.200s", code,
                         body.data ? body.data : "");
            }
        }

        free(body.data);
        return -1;
    }

    answer = body.data ? json_loads(body.data, 0, NULL) : NULL;
    free(body.data);

    tickets = json_object_get(answer, "data");
    noticket = 0;

    for (i = 0; i < n; i++) {
        ahava_push_tally_t  *y = &tally[msgs[i].job];

        tk = json_array_get(tickets, i);
        status = json_string_value(json_object_get(tk, "status"));

        if (status && strcmp(status, "ok") == 0) {
            y->sent++;
            continue;
        }

        detail = json_string_value(json_object_get(
                     json_object_get(tk, "details"), "error"));

        if (detail && strcmp(detail, "DeviceNotRegistered") == 0) {
            params[0] = msgs[i].user;
            params[1] = msgs[i].token;
            res = PQexecPrepared(pg, "push prune", 2, params, NULL, NULL, 0);

            if (PQresultStatus(res) == PGRES_COMMAND_OK) {
                ahava_tokens_evict(msgs[i].user);
                y->pruned++;
                ahava_log("info", "push token removed: DeviceNotRegistered",
                          "{s:s,s:s}", "jobId", jobs[msgs[i].job]->id,
                          "userId", msgs[i].user);
            } else {
                y->errors++;
                ahava_log("error", "push token removal failed", "{s:s,s:s}",
                          "userId", msgs[i].user,
                          "error", PQresultErrorMessage(res));
            }

            PQclear(res);
            continue;
        }

        if (detail && strcmp(detail, "MessageRateExceeded") == 0) {
            y->retry = 1;
            snprintf(y->reason, AHAVA_ERR_LEN, "push: MessageRateExceeded");
            continue;
        }

        y->errors++;

        if (tk == NULL) {
            /* a short answer is one event, not one per message */
            noticket++;
            continue;
        }

        ahava_log("warn", "push ticket error", "{s:s,s:s,s:s}",
                  "jobId", jobs[msgs[i].job]->id, "userId", msgs[i].user,
                  "error", detail ? detail : "error");
    }

    if (noticket) {
        ahava_log("warn", "push answer without a ticket for some messages",
                  "{s:i,s:i,s:s}", "messages", n, "withoutTicket", noticket,
                  "firstJobId", jobs[msgs[n - noticket].job]->id);
    }

    json_decref(answer);

    return 0;
}


static size_t
ahava_push_write(char *p, size_t size, size_t n, void *arg)
{
    ahava_push_body_t  *b = arg;
    char               *d;

    n *= size;

    if (b->len + n > AHAVA_PUSH_BODY_MAX) {
        return 0;               /* curl fails the transfer */
    }

    d = realloc(b->data, b->len + n + 1);
    if (d == NULL) {
        return 0;
    }

    memcpy(d + b->len, p, n);
    b->len += n;
    d[b->len] = '\0';
    b->data = d;

    return n;
}
