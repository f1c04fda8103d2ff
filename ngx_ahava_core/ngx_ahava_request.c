
/*
 * The lifecycle of an API request (the contract is in ngx_ahava_core.h)
 * and the one router every module's route table goes through.
 *
 * The content handler takes a reference on the request (count++) that only
 * the final ngx_http_finalize_request(r, ctx->rc) gives back, and runs the
 * pipeline below; a step that goes asynchronous is resumed from an event by
 * its continuation, and the pipeline goes on from there.  An answer ends
 * it: nothing after an answer ever runs.
 */


#include "ngx_ahava_core.h"


static ngx_ahava_rc_e ngx_ahava_step_match(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_step_method(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_step_args(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_step_serve(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_run(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx, ngx_ahava_rc_e rc);
static void ngx_ahava_query_done(ngx_ahava_pg_query_t *q);
static void ngx_ahava_query_cleanup(void *data);
static ngx_uint_t ngx_ahava_path_segment(const char *path, ngx_uint_t k,
    ngx_str_t *seg);
static ngx_uint_t ngx_ahava_match(ngx_ahava_route_t *routes,
    ngx_ahava_route_t *rt, ngx_str_t *segs, ngx_uint_t nsegs, ngx_str_t *ids);
static ngx_int_t ngx_ahava_unescape(ngx_str_t *in, u_char *out, size_t *len);
static ngx_ahava_rc_e ngx_ahava_not_allowed(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx, ngx_uint_t methods);


#define NGX_AHAVA_MAX_SEGS  8


/*
 * path → authenticate → size and method → query arguments → body → the
 * route's own step
 */

static ngx_ahava_step_pt  ngx_ahava_pipeline[] = {
    ngx_ahava_step_match,
    ngx_ahava_step_auth,
    ngx_ahava_step_method,
    ngx_ahava_step_args,
    ngx_ahava_step_body,
    ngx_ahava_step_serve
};

#define NGX_AHAVA_PIPELINE_LEN                                               \
    (sizeof(ngx_ahava_pipeline) / sizeof(ngx_ahava_pipeline[0]))


/*
 * The access check of a location whose content nginx itself serves (the
 * downloads of /uploads/): path → authenticate → the route's check, whose
 * NGX_AHAVA_NEXT lets the request on to the content phase.
 */

static ngx_ahava_step_pt  ngx_ahava_access_pipeline[] = {
    ngx_ahava_step_match,
    ngx_ahava_step_auth,
    ngx_ahava_step_serve
};

#define NGX_AHAVA_ACCESS_LEN                                                 \
    (sizeof(ngx_ahava_access_pipeline) / sizeof(ngx_ahava_access_pipeline[0]))


ngx_int_t
ngx_ahava_api_handler(ngx_http_request_t *r)
{
    ngx_ahava_ctx_t  *ctx;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: api handler");

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_ahava_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_set_ctx(r, ctx, ngx_ahava_core_module);

    /* ours until ngx_ahava_run() finalizes with the answer's own result */
    r->main->count++;

    ctx->pipeline = ngx_ahava_pipeline;
    ctx->nsteps = NGX_AHAVA_PIPELINE_LEN;
    ctx->step = 0;
    (void) ngx_ahava_run(r, ctx, ngx_ahava_pipeline[0](r, ctx));

    return NGX_DONE;
}


/*
 * An access-phase handler: NGX_OK lets the request on, NGX_DECLINED when
 * the location has no routes, NGX_AGAIN while a step waits (the phase is
 * run again once the check is over), NGX_DONE when it answered.
 */

ngx_int_t
ngx_ahava_access_handler(ngx_http_request_t *r)
{
    ngx_ahava_rc_e         rc;
    ngx_ahava_ctx_t       *ctx;
    ngx_ahava_loc_conf_t  *alcf;

    alcf = ngx_http_get_module_loc_conf(r, ngx_ahava_core_module);

    if (alcf->access_routes == NULL || r != r->main) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_ahava_core_module);

    if (ctx) {
        /* the phase again, once the asynchronous check let it on */
        return ctx->allowed ? NGX_OK : NGX_AGAIN;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: access check");

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_ahava_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_set_ctx(r, ctx, ngx_ahava_core_module);

    /* ours while the check runs; given back before the phases go on */
    r->main->count++;

    ctx->access = 1;
    ctx->in_phase = 1;
    ctx->pipeline = ngx_ahava_access_pipeline;
    ctx->nsteps = NGX_AHAVA_ACCESS_LEN;
    ctx->step = 0;

    rc = ngx_ahava_run(r, ctx, ngx_ahava_access_pipeline[0](r, ctx));

    if (rc == NGX_AHAVA_NEXT) {
        return NGX_OK;
    }

    if (rc == NGX_AHAVA_ANSWERED) {
        return NGX_DONE;            /* finalized: r is not touched again */
    }

    ctx->in_phase = 0;

    return NGX_AGAIN;
}


/*
 * Runs the steps from rc on.  What it returns says how it ended: NGX_NEXT
 * (an access check let the request on), NGX_AHAVA_ANSWERED (the request is
 * finalized: r may be gone), NGX_AHAVA_ASYNC.
 */

static ngx_ahava_rc_e
ngx_ahava_run(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx, ngx_ahava_rc_e rc)
{
    ngx_time_t  *tp;

    while (rc == NGX_AHAVA_NEXT) {

        if (++ctx->step == ctx->nsteps) {

            if (ctx->access) {
                /* the check let the request on: to nginx's content phase */
                ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                               "ahava: access allowed");

                ctx->allowed = 1;
                r->main->count--;

                if (!ctx->in_phase) {
                    r->write_event_handler = ngx_http_core_run_phases;
                    ngx_http_core_run_phases(r);
                }

                return NGX_AHAVA_NEXT;
            }

            ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                          "ahava: the last step went on without answering");
            rc = ngx_ahava_fail(r, ctx);
            break;
        }

        rc = ctx->pipeline[ctx->step](r, ctx);
    }

    if (rc == NGX_AHAVA_ANSWERED) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "ahava: answered, finalizing with %i", ctx->rc);

        /* the latency the metrics show ends here, not after a lingering
         * close or a slow reader */
        tp = ngx_timeofday();
        ctx->answered_sec = tp->sec;
        ctx->answered_msec = tp->msec;

        if (ctx->access) {
            /* the reference the check took; the phase does not finalize */
            r->main->count--;
        }

        ngx_http_finalize_request(r, ctx->rc);
    }

    /* NGX_AHAVA_ASYNC: its completion resumes the request */

    return rc;
}


/* The continuation of an asynchronous step, from an event */

void
ngx_ahava_resume(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    ngx_connection_t   *c;
    ngx_ahava_step_pt   done;

    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    done = ctx->done;
    ctx->done = NULL;

    (void) ngx_ahava_run(r, ctx, done(r, ctx));

    ngx_http_run_posted_requests(c);
}


static ngx_ahava_rc_e
ngx_ahava_step_serve(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: serve %s", ctx->route->path);

    return ctx->route->step(r, ctx);
}


/* Statements for a request */

ngx_ahava_pg_query_t *
ngx_ahava_query_create(ngx_http_request_t *r, ngx_ahava_stmt_t *stmt)
{
    ngx_ahava_pg_query_t  *q;

    q = ngx_pcalloc(r->pool, sizeof(ngx_ahava_pg_query_t));
    if (q == NULL) {
        return NULL;
    }

    q->stmt = stmt;
    q->nparams = stmt->nparams;
    q->log = r->connection->log;
    q->data = r;

    return q;
}


/* A NUL-terminated copy as parameter i (NULL data: SQL NULL) */

ngx_int_t
ngx_ahava_param(ngx_http_request_t *r, ngx_ahava_pg_query_t *q, ngx_uint_t i,
    u_char *data, size_t len)
{
    u_char  *p;

    if (data == NULL) {
        q->values[i] = NULL;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(p, data, len);
    p[len] = '\0';
    q->values[i] = (char *) p;

    return NGX_OK;
}


ngx_int_t
ngx_ahava_param_uint(ngx_http_request_t *r, ngx_ahava_pg_query_t *q,
    ngx_uint_t i, ngx_uint_t n)
{
    u_char  *p;

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(p, "%ui%Z", n);
    q->values[i] = (char *) p;

    return NGX_OK;
}


/*
 * Runs q for the request: NGX_AHAVA_ASYNC, and done resumes the request
 * with ctx->query holding the result; or the refusal is answered now (503).
 */

ngx_ahava_rc_e
ngx_ahava_query(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    ngx_ahava_pg_query_t *q, ngx_ahava_step_pt done)
{
    ngx_int_t               rc;
    ngx_http_cleanup_t     *cln;
    ngx_ahava_main_conf_t  *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_ahava_core_module);

    cln = ngx_http_cleanup_add(r, 0);
    if (cln == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    q->done = ngx_ahava_query_done;
    q->data = r;
    ctx->query = q;

    rc = ngx_ahava_pg_send(amcf->pg, q);

    if (rc != NGX_OK) {
        q->rc = rc;
        return ngx_ahava_query_failed(r, ctx);
    }

    cln->handler = ngx_ahava_query_cleanup;
    cln->data = q;

    ctx->done = done;

    /* while it runs: notice a client that goes away */
    r->read_event_handler = ngx_http_test_reading;

    return NGX_AHAVA_ASYNC;
}


static void
ngx_ahava_query_done(ngx_ahava_pg_query_t *q)
{
    ngx_http_request_t  *r;

    r = q->data;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: statement \"%V\" done", &q->stmt->name);

    ngx_ahava_resume(r, ngx_http_get_module_ctx(r, ngx_ahava_core_module));
}


/* The request is going away: its query must not call it back */

static void
ngx_ahava_query_cleanup(void *data)
{
    ngx_ahava_pg_query_t  *q = data;

    if (q->waiting || q->running) {
        ngx_ahava_pg_cancel(q);
    }
}


/* The shared answer to a query that did not give a result */

ngx_ahava_rc_e
ngx_ahava_query_failed(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    if (ctx->query->rc == NGX_HTTP_SERVICE_UNAVAILABLE) {
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_SERVICE_UNAVAILABLE,
                                      "SERVICE_UNAVAILABLE",
                                      "Database unavailable, try again later",
                                      NULL);
    }

    return ngx_ahava_fail(r, ctx);
}


/*
 * Routing: the path against the location's table; 404 when no path
 * matches (a malformed id included: it names nothing, SPEC §4).  A wrong
 * method is answered after authentication (ngx_ahava_step_method), so
 * that an unauthenticated request learns nothing but 401.
 */

static ngx_ahava_rc_e
ngx_ahava_step_match(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    u_char                *p, *last;
    ngx_str_t              segs[NGX_AHAVA_MAX_SEGS], ids[NGX_AHAVA_MAX_IDS];
    ngx_str_t              found[NGX_AHAVA_MAX_IDS];
    ngx_uint_t             nsegs, i;
    ngx_ahava_route_t     *rt, *path, *routes;
    ngx_ahava_loc_conf_t  *alcf;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: match \"%V\"", &r->uri);

    alcf = ngx_http_get_module_loc_conf(r, ngx_ahava_core_module);
    routes = ctx->access ? alcf->access_routes : alcf->routes;

    p = r->uri.data;
    last = p + r->uri.len;

    /* one trailing slash is tolerated */
    if (last - p > 1 && last[-1] == '/') {
        last--;
    }

    nsegs = 0;

    while (p < last) {
        if (*p++ != '/' || nsegs == NGX_AHAVA_MAX_SEGS) {
            return ngx_ahava_answer_status(r, ctx, NGX_HTTP_NOT_FOUND);
        }

        segs[nsegs].data = p;

        while (p < last && *p != '/') {
            p++;
        }

        segs[nsegs].len = p - segs[nsegs].data;
        nsegs++;
    }

    path = NULL;
    ngx_memzero(found, sizeof(found));

    for (rt = routes; rt->path; rt++) {

        if (!ngx_ahava_match(routes, rt, segs, nsegs, ids)) {
            continue;
        }

        ctx->allow |= rt->methods;

        if (path == NULL) {
            path = rt;
            ngx_memcpy(found, ids, sizeof(found));
        }

        if ((r->method & rt->methods)
            || ((rt->methods & NGX_HTTP_GET) && r->method == NGX_HTTP_HEAD))
        {
            path = rt;
            ngx_memcpy(found, ids, sizeof(found));
            ctx->method_ok = 1;
            break;
        }
    }

    if (path == NULL) {
        return ngx_ahava_answer_status(r, ctx, NGX_HTTP_NOT_FOUND);
    }

    ctx->route = path;

    /* ids as NUL-terminated strings: they become parameters */
    for (i = 0; i < NGX_AHAVA_MAX_IDS && found[i].data; i++) {
        ctx->ids[i].data = ngx_pnalloc(r->pool, found[i].len + 1);
        if (ctx->ids[i].data == NULL) {
            return ngx_ahava_fail(r, ctx);
        }

        ngx_memcpy(ctx->ids[i].data, found[i].data, found[i].len);
        ctx->ids[i].data[found[i].len] = '\0';
        ctx->ids[i].len = found[i].len;
    }

    return NGX_AHAVA_NEXT;
}


/*
 * Once the caller is known: a body the headers say is over the limit
 * (SPEC §4: 64 KiB) is refused whatever the route, before a byte of it is
 * read; then the method.
 */

static ngx_ahava_rc_e
ngx_ahava_step_method(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: size and method");

    if (r->headers_in.content_length_n
        > (off_t) (ctx->route->body_max ? ctx->route->body_max
                                        : NGX_AHAVA_BODY_MAX))
    {
        if (ctx->route->flags & NGX_AHAVA_ROUTE_UPLOAD) {
            ngx_ahava_metrics_count(NGX_AHAVA_M_UPLOADS_TOO_LARGE, 1);
        }

        /* no "100 Continue" (ngx_ahava_send), and the body is not read
         * to its end to keep the connection: it is closed after the
         * answer, lingering so that the client reads it */
        r->keepalive = 0;
        r->lingering_close = 1;

        return ngx_ahava_answer_status(r, ctx,
                                       NGX_HTTP_REQUEST_ENTITY_TOO_LARGE);
    }

    if (!ctx->method_ok) {
        return ngx_ahava_not_allowed(r, ctx, ctx->allow);
    }

    return NGX_AHAVA_NEXT;
}


/* Segment k of a route's path ("/a/:/b": "a", ":", "b"); 0: none */

static ngx_uint_t
ngx_ahava_path_segment(const char *path, ngx_uint_t k, ngx_str_t *seg)
{
    const char  *p, *end;

    p = path;

    for ( ;; ) {
        if (*p++ != '/') {
            return 0;
        }

        end = p;
        while (*end && *end != '/') {
            end++;
        }

        if (k-- == 0) {
            seg->data = (u_char *) p;
            seg->len = end - p;
            return 1;
        }

        p = end;
    }
}


/*
 * A route's path matches the segments: literals exactly, ':' an id — a
 * valid one, and never a word that is a literal at that place in another
 * route of the table ("/api/messages/visit" is no message id).
 */

static ngx_uint_t
ngx_ahava_match(ngx_ahava_route_t *routes, ngx_ahava_route_t *rt,
    ngx_str_t *segs, ngx_uint_t nsegs, ngx_str_t *ids)
{
    ngx_str_t           seg, lit;
    ngx_uint_t          i, nids;
    ngx_ahava_route_t  *other;

    ngx_memzero(ids, NGX_AHAVA_MAX_IDS * sizeof(ngx_str_t));
    nids = 0;

    for (i = 0; i < nsegs; i++) {
        if (!ngx_ahava_path_segment(rt->path, i, &seg)) {
            return 0;
        }

        if (seg.len == 1 && seg.data[0] == '*') {
            /* a name the route's step checks itself (a file name) */
            if (nids == NGX_AHAVA_MAX_IDS || segs[i].len == 0
                || segs[i].len > 255)
            {
                return 0;
            }

            ids[nids++] = segs[i];
            continue;
        }

        if (seg.len == 1 && seg.data[0] == ':') {
            if (nids == NGX_AHAVA_MAX_IDS
                || ngx_ahava_valid_id(segs[i].data, segs[i].len) != NGX_OK)
            {
                return 0;
            }

            for (other = routes; other->path; other++) {
                if (ngx_ahava_path_segment(other->path, i, &lit)
                    && !(lit.len == 1
                         && (lit.data[0] == ':' || lit.data[0] == '*'))
                    && lit.len == segs[i].len
                    && ngx_strncmp(lit.data, segs[i].data, lit.len) == 0)
                {
                    return 0;
                }
            }

            ids[nids++] = segs[i];
            continue;
        }

        if (seg.len != segs[i].len
            || ngx_strncmp(seg.data, segs[i].data, seg.len) != 0)
        {
            return 0;
        }
    }

    /* the route's path has no more segments */
    return !ngx_ahava_path_segment(rt->path, nsegs, &seg);
}


static ngx_ahava_rc_e
ngx_ahava_not_allowed(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    ngx_uint_t methods)
{
    u_char           *p, *last;
    ngx_uint_t        i;
    ngx_table_elt_t  *h;

    static struct {
        ngx_uint_t   method;
        const char  *name;
    } names[] = {
        { NGX_HTTP_GET, "GET, HEAD" },
        { NGX_HTTP_POST, "POST" },
        { NGX_HTTP_PATCH, "PATCH" },
        { NGX_HTTP_PUT, "PUT" },
        { NGX_HTTP_DELETE, "DELETE" }
    };

    h = ngx_list_push(&r->headers_out.headers);
    p = ngx_pnalloc(r->pool, 64);
    if (h == NULL || p == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Allow");
    h->value.data = p;
    last = p + 64;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (methods & names[i].method) {
            p = ngx_slprintf(p, last, "%s%s", p == h->value.data ? "" : ", ",
                             names[i].name);
        }
    }

    h->value.len = p - h->value.data;

    return ngx_ahava_answer_error(r, ctx, NGX_HTTP_NOT_ALLOWED,
                                  "METHOD_NOT_ALLOWED",
                                  "Method not allowed", NULL);
}


/*
 * Query arguments, strictly (SPEC §4): each one the route knows, once,
 * with a value; names and values percent-decoded.  Anything else — an
 * unknown or repeated name, a name without '=', an empty piece, a bad
 * escape or a NUL — is a 400 with details.
 */

static ngx_ahava_rc_e
ngx_ahava_step_args(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    u_char            *p, *last, *amp, *eq, name[64];
    u_char             value[NGX_AHAVA_ID_MAX_LEN + 2];
    size_t             nlen, vlen;
    json_t            *details;
    ngx_int_t          n;
    ngx_str_t          piece;
    ngx_uint_t         i, seen, bad;
    const char       **e;
    ngx_ahava_arg_t   *a;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: query arguments \"%V\"", &r->args);

    a = ctx->route->args;

    for (i = 0; a && a[i].name; i++) {
        ctx->args[i] = a[i].def;
    }

    if (r->args.len == 0) {
        return NGX_AHAVA_NEXT;
    }

    details = json_array();
    if (details == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    p = r->args.data;
    last = p + r->args.len;
    seen = 0;
    bad = 0;

    while (p <= last) {
        amp = ngx_strlchr(p, last, '&');
        if (amp == NULL) {
            amp = last;
        }

        piece.data = p;
        piece.len = amp - p;
        p = amp + 1;

        eq = ngx_strlchr(piece.data, amp, '=');

        if (piece.len == 0 || eq == NULL || eq == piece.data) {
            bad = 1;
            ngx_ahava_detail(details, "query", "every argument needs a "
                             "name and a value (name=value)");
            continue;
        }

        nlen = sizeof(name) - 1;
        vlen = sizeof(value) - 1;

        if (ngx_ahava_unescape(&(ngx_str_t) { eq - piece.data, piece.data },
                               name, &nlen) != NGX_OK)
        {
            bad = 1;
            ngx_ahava_detail(details, "query", "an argument name is not "
                             "valid");
            continue;
        }

        name[nlen] = '\0';

        for (i = 0; a && a[i].name; i++) {
            if (ngx_strcmp(a[i].name, name) == 0) {
                break;
            }
        }

        if (a == NULL || a[i].name == NULL) {
            bad = 1;
            ngx_ahava_detail(details, (char *) name, "\"%s\" is not a known "
                             "argument", name);
            continue;
        }

        if (seen & (1 << i)) {
            bad = 1;
            ngx_ahava_detail(details, a[i].name, "\"%s\" is given more than "
                             "once", a[i].name);
            continue;
        }

        seen |= 1 << i;

        if (a[i].type == NGX_AHAVA_ARG_TOKEN) {
            /* authentication read it, and judged it */
            continue;
        }

        if (ngx_ahava_unescape(&(ngx_str_t) { amp - eq - 1, eq + 1 },
                               value, &vlen) != NGX_OK)
        {
            vlen = 0;
        }

        value[vlen] = '\0';

        if (a[i].type == NGX_AHAVA_ARG_ID) {
            if (ngx_ahava_valid_id(value, vlen) != NGX_OK) {
                bad = 1;
                ngx_ahava_detail(details, a[i].name, "\"%s\" must be an id",
                                 a[i].name);
                continue;
            }

            ctx->arg_ids[i].data = ngx_pnalloc(r->pool, vlen + 1);
            if (ctx->arg_ids[i].data == NULL) {
                return ngx_ahava_fail(r, ctx);
            }

            ngx_memcpy(ctx->arg_ids[i].data, value, vlen + 1);
            ctx->arg_ids[i].len = vlen;
            continue;
        }

        if (a[i].type == NGX_AHAVA_ARG_UINT) {
            n = (vlen == 0 || vlen > 9) ? NGX_ERROR : ngx_atoi(value, vlen);

            if (n == NGX_ERROR || n < a[i].min || n > a[i].max) {
                bad = 1;
                ngx_ahava_detail(details, a[i].name, "\"%s\" must be an "
                                 "integer between %i and %i", a[i].name,
                                 a[i].min, a[i].max);
                continue;
            }

            ctx->args[i] = n;
            continue;
        }

        for (e = a[i].values; *e; e++) {
            if (vlen == ngx_strlen(*e) && ngx_strcmp(*e, value) == 0) {
                break;
            }
        }

        if (*e == NULL) {
            bad = 1;
            ngx_ahava_detail(details, a[i].name, "\"%s\" has an invalid "
                             "value", a[i].name);
            continue;
        }

        ctx->args[i] = e - a[i].values;
    }

    if (bad) {
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_BAD_REQUEST,
                                      "VALIDATION_ERROR",
                                      "Invalid query parameters", details);
    }

    json_decref(details);

    return NGX_AHAVA_NEXT;
}


/* %XX and '+' decoded into out (at most *len bytes); a NUL is refused */

static ngx_int_t
ngx_ahava_unescape(ngx_str_t *in, u_char *out, size_t *len)
{
    u_char  *p, *last, c, h;
    size_t   n;

    p = in->data;
    last = p + in->len;
    n = 0;

    while (p < last) {
        c = *p++;

        if (c == '+') {
            c = ' ';

        } else if (c == '%') {
            if (last - p < 2) {
                return NGX_ERROR;
            }

            c = 0;

            for (h = 0; h < 2; h++) {
                u_char  d = *p++;

                c <<= 4;

                if (d >= '0' && d <= '9') {
                    c |= d - '0';

                } else if ((d | 0x20) >= 'a' && (d | 0x20) <= 'f') {
                    c |= (d | 0x20) - 'a' + 10;

                } else {
                    return NGX_ERROR;
                }
            }
        }

        if (c == '\0' || n == *len) {
            return NGX_ERROR;
        }

        out[n++] = c;
    }

    *len = n;

    return NGX_OK;
}
