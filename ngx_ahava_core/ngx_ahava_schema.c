
/*
 * Copyright (C) Ahava
 */


/*
 * Whether the database has this build's migrations, told once at start.
 *
 * A missing migration is rarely an error: without an index of ours a
 * statement is only slow (sql/009: every person on a page of visits a scan
 * of users).  So the first worker asks once, on an idle connection of the
 * pool, which migration ahava-migrate applied last, and logs a warn line
 * when it is older than the newest this build was made with.
 *
 * The statement is prepared on every connection, also on databases set up
 * another way (Prisma, psql by hand) that have no _ahava_migrations: it
 * names no table of ours, and reads the table through query_to_xml() only
 * when to_regclass() found it, so it never fails to prepare.
 */


#include "ngx_ahava_core.h"


/* sql/: the newest migration of this build (t/010 checks it is the last) */
#define NGX_AHAVA_SCHEMA_LATEST   "011_outbox_retry_export_request.sql"

#define NGX_AHAVA_SCHEMA_RETRY    1000          /* ms while none is idle */
#define NGX_AHAVA_SCHEMA_TRIES    60


static ngx_ahava_stmt_t  ngx_ahava_schema_stmts[] = {

    /* the last migration applied, or NULL without the table */
    { ngx_string("schema migrations"),
      "SELECT CASE WHEN to_regclass('_ahava_migrations') IS NOT NULL"
      " THEN (xpath('/row/name/text()', query_to_xml("
      "'SELECT max(name) AS name FROM _ahava_migrations',"
      " false, true, '')))[1]::text END",
      0, 0, "" },
};


typedef struct {
    ngx_ahava_main_conf_t     *amcf;
    ngx_log_t                 *log;
    ngx_ahava_pg_query_t       query;
    ngx_event_t                timer;
    ngx_uint_t                 tries;
    unsigned                   running:1;
} ngx_ahava_schema_t;


static ngx_ahava_schema_t  *ngx_ahava_schema;


static void ngx_ahava_schema_handler(ngx_event_t *ev);
static void ngx_ahava_schema_done(ngx_ahava_pg_query_t *q);
static ngx_int_t ngx_ahava_schema_number(u_char *name, size_t len);


ngx_int_t
ngx_ahava_schema_declare(ngx_conf_t *cf)
{
    return ngx_ahava_declare(cf, ngx_ahava_schema_stmts,
                             sizeof(ngx_ahava_schema_stmts)
                             / sizeof(ngx_ahava_stmt_t));
}


/* the first worker only: one line per start, not one per worker */

ngx_int_t
ngx_ahava_schema_init(ngx_cycle_t *cycle, ngx_ahava_main_conf_t *amcf)
{
    ngx_ahava_schema_t  *s;

    if (amcf->pg == NULL || ngx_worker != 0) {
        return NGX_OK;
    }

    s = ngx_pcalloc(cycle->pool, sizeof(ngx_ahava_schema_t));
    if (s == NULL) {
        return NGX_ERROR;
    }

    s->amcf = amcf;
    s->log = cycle->log;

    s->timer.handler = ngx_ahava_schema_handler;
    s->timer.data = s;
    s->timer.log = cycle->log;
    s->timer.cancelable = 1;

    /* the pool's warm connection is opening: ask once it is idle */
    ngx_add_timer(&s->timer, 1);

    ngx_ahava_schema = s;

    return NGX_OK;
}


void
ngx_ahava_schema_exit(void)
{
    ngx_ahava_schema_t  *s;

    s = ngx_ahava_schema;

    if (s == NULL) {
        return;
    }

    if (s->timer.timer_set) {
        ngx_del_timer(&s->timer);
    }

    if (s->running) {
        ngx_ahava_pg_cancel(&s->query);
        s->running = 0;
    }

    ngx_ahava_schema = NULL;
}


static void
ngx_ahava_schema_handler(ngx_event_t *ev)
{
    ngx_ahava_pg_query_t  *q;
    ngx_ahava_schema_t    *s;

    s = ev->data;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, s->log, 0,
                   "ahava: schema check, try %ui", s->tries);

    if (ngx_exiting || ngx_terminate) {
        return;
    }

    q = &s->query;
    ngx_memzero(q, sizeof(ngx_ahava_pg_query_t));

    q->stmt = &ngx_ahava_schema_stmts[0];
    q->nparams = 0;
    q->done = ngx_ahava_schema_done;
    q->data = s;
    q->log = s->log;

    /* never a place in the requests' wait queue: an idle connection now,
     * or again in a second; a database down for a minute is logged by the
     * pool, and the check is left for the next start */
    if (ngx_ahava_pg_background(s->amcf->pg, q) == NGX_OK) {
        s->running = 1;
        return;
    }

    if (++s->tries < NGX_AHAVA_SCHEMA_TRIES) {
        ngx_add_timer(&s->timer, NGX_AHAVA_SCHEMA_RETRY);
    }
}


static void
ngx_ahava_schema_done(ngx_ahava_pg_query_t *q)
{
    u_char              *name;
    size_t               len;
    ngx_int_t            have, want;
    ngx_ahava_schema_t  *s;

    s = q->data;
    s->running = 0;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, s->log, 0,
                   "ahava: schema check done, rc %i", q->rc);

    if (q->rc != NGX_OK) {
        ngx_log_error(NGX_LOG_NOTICE, s->log, 0,
                      "ahava: could not tell which migrations the database "
                      "has (%s); this build needs sql/ up to %s",
                      q->sqlstate ? q->sqlstate : "unavailable",
                      NGX_AHAVA_SCHEMA_LATEST);
        return;
    }

    if (PQntuples(q->result) != 1 || PQgetisnull(q->result, 0, 0)) {
        ngx_log_error(NGX_LOG_NOTICE, s->log, 0,
                      "ahava: the database has no _ahava_migrations table, "
                      "or an empty one (set up without ahava-migrate?): "
                      "cannot tell whether it has this build's migrations, "
                      "sql/ up to %s", NGX_AHAVA_SCHEMA_LATEST);
        return;
    }

    name = (u_char *) PQgetvalue(q->result, 0, 0);
    len = PQgetlength(q->result, 0, 0);

    have = ngx_ahava_schema_number(name, len);
    want = ngx_ahava_schema_number((u_char *) NGX_AHAVA_SCHEMA_LATEST,
                                   sizeof(NGX_AHAVA_SCHEMA_LATEST) - 1);

    if (have >= want) {
        ngx_log_error(NGX_LOG_INFO, s->log, 0,
                      "ahava: database migrations applied up to %*s",
                      len, name);
        return;
    }

    ngx_log_error(NGX_LOG_WARN, s->log, 0,
                  "ahava: the database's last migration is %*s, this build "
                  "needs sql/ up to %s: run ahava-migrate (until then some "
                  "statements may be slow or fail)",
                  len, name, NGX_AHAVA_SCHEMA_LATEST);
}


/* "009_person_index.sql" is 9; a name without a number is -1 */

static ngx_int_t
ngx_ahava_schema_number(u_char *name, size_t len)
{
    size_t  i;

    for (i = 0; i < len && name[i] >= '0' && name[i] <= '9'; i++) {
        /* void */
    }

    return i ? ngx_atoi(name, i) : -1;
}
