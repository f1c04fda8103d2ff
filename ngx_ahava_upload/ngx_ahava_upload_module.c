
/*
 * ngx_ahava_upload_module: uploads and downloads of files (SPEC §7).
 *
 *   POST /api/messages/upload/image   field "image": JPEG, PNG, GIF, WebP
 *   POST /api/messages/upload/file    field "file": PDF, DOC, DOCX, TXT,
 *                                      CSV, and images under their limit
 *   GET  /uploads/{images|documents|exports}/<name>
 *                                      checked here, served by nginx
 *
 * An upload is streamed: the body is read unbuffered, parsed as it arrives
 * (ngx_ahava_multipart.c), its type decided from its first bytes
 * (ngx_ahava_sniff.c) so that a 415 comes before the rest is read, and the
 * file part written straight to its final name with a ".part" suffix, its
 * sha256 computed on the way; complete and accepted, it is renamed and
 * recorded.  Nothing of a rejected, failed or aborted upload is left: a
 * pool cleanup removes the partial file whatever ends the request.
 *
 * A download is an access-phase check (the name's form first, then the
 * caller: the uploader, a participant of a visit where a message carries
 * the file, the owner of an export, an admin; anyone else and any unknown
 * name 404), after which nginx's own static serving does the rest.
 */


#include "ngx_ahava_core.h"
#include "ngx_ahava_multipart.h"
#include "ngx_ahava_sniff.h"

#include <openssl/evp.h>
#include <openssl/rand.h>


#define NGX_AHAVA_IMAGE_MAX      (5 * 1024 * 1024)
#define NGX_AHAVA_DOCUMENT_MAX   (10 * 1024 * 1024)

/* what a multipart body may carry beyond its file: headers, boundaries */
#define NGX_AHAVA_UPLOAD_SLACK   (64 * 1024)

/* <ms timestamp>-<24 hex>.<ext> */
#define NGX_AHAVA_NAME_MAX       (13 + 1 + 24 + 1 + 4)

/* the per-worker cache of allowed downloads */
#define NGX_AHAVA_GRANTS         1024
#define NGX_AHAVA_GRANT_PATH_MAX (sizeof("documents/") - 1 + NGX_AHAVA_NAME_MAX)
#define NGX_AHAVA_GRANT_MIME_MAX 96


/* abort codes of the parser's callbacks: the answer to give */
enum {
    NGX_AHAVA_UPLOAD_BAD = 1,                   /* 400 */
    NGX_AHAVA_UPLOAD_TOO_LARGE,                 /* 413 */
    NGX_AHAVA_UPLOAD_UNSUPPORTED,               /* 415 */
    NGX_AHAVA_UPLOAD_ERROR                      /* 500 */
};


/* a download allowed a moment ago: who, what, served as which type */
typedef struct {
    ngx_msec_t                 expires;
    u_char                     user[NGX_AHAVA_ID_MAX_LEN];
    u_char                     path[NGX_AHAVA_GRANT_PATH_MAX];
    u_char                     mime[NGX_AHAVA_GRANT_MIME_MAX];
    u_char                     user_len;
    u_char                     path_len;
    u_char                     mime_len;
} ngx_ahava_download_grant_t;


typedef struct {
    ngx_str_t                  root;            /* .../uploads */
    ngx_flag_t                 used;            /* by some location */
    ngx_msec_t                 grant_ttl;
    ngx_ahava_download_grant_t  *grants;        /* per worker, bounded */
} ngx_ahava_upload_main_conf_t;


typedef struct {
    const char                *field;           /* "image" or "file" */
    unsigned                   allowed;         /* sniff kinds */
} ngx_ahava_upload_endpoint_t;


typedef struct {
    ngx_http_request_t        *request;
    ngx_ahava_ctx_t           *ctx;
    const ngx_ahava_upload_endpoint_t  *endpoint;

    ngx_ahava_multipart_t      mp;
    ngx_ahava_sniff_t          sniff;
    EVP_MD_CTX                *sha;

    ngx_fd_t                   fd;
    ngx_str_t                  part;            /* the file while written */
    ngx_str_t                  path;            /* its final name */
    u_char                     name[NGX_AHAVA_NAME_MAX + 1];
    ngx_str_t                  original;
    const char                *dir;             /* "images", "documents" */
    off_t                      size;
    off_t                      max;
    int                        type;            /* by the extension */

    const char                *reason;         /* of a refusal */
    ngx_uint_t                 files;
    ngx_ahava_pg_query_t      *query;           /* the row's INSERT */

    unsigned                   in_file:1;
    unsigned                   renamed:1;       /* at its final name, its
                                                   row not known written */
    unsigned                   reading:1;       /* inside the first read */
} ngx_ahava_upload_t;


static void *ngx_ahava_upload_create_main_conf(ngx_conf_t *cf);
static char *ngx_ahava_upload_init_main_conf(ngx_conf_t *cf, void *conf);
static char *ngx_ahava_upload_set_upload(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_ahava_upload_set_download(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_ahava_upload_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_ahava_upload_postconfiguration(ngx_conf_t *cf);
static ngx_ahava_rc_e ngx_ahava_upload_start(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static void ngx_ahava_upload_body(ngx_http_request_t *r);
static void ngx_ahava_upload_read(ngx_http_request_t *r);
static ngx_ahava_rc_e ngx_ahava_upload_process(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_upload_finish(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx, ngx_ahava_upload_t *u);
static ngx_int_t ngx_ahava_upload_sync_dir(ngx_http_request_t *r,
    ngx_ahava_upload_t *u);
static ngx_ahava_rc_e ngx_ahava_upload_recorded(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_upload_refuse(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx, ngx_ahava_upload_t *u, int code);
static int ngx_ahava_upload_part_begin(void *data,
    const ngx_ahava_multipart_part_t *part);
static int ngx_ahava_upload_part_data(void *data, const unsigned char *p,
    size_t n);
static int ngx_ahava_upload_part_end(void *data);
static void ngx_ahava_upload_discard(ngx_ahava_upload_t *u);
static void ngx_ahava_upload_cleanup(void *data);
static ngx_ahava_rc_e ngx_ahava_download_check(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_rc_e ngx_ahava_download_checked(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
static ngx_ahava_download_grant_t *ngx_ahava_download_grant(
    ngx_http_request_t *r, ngx_ahava_ctx_t *ctx, ngx_str_t *path);
static ngx_ahava_rc_e ngx_ahava_download_allow(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx, u_char *mime, size_t len);


static ngx_ahava_upload_endpoint_t  ngx_ahava_upload_image = {
    "image", NGX_AHAVA_SNIFF_IMAGE
};

static ngx_ahava_upload_endpoint_t  ngx_ahava_upload_file = {
    "file", NGX_AHAVA_SNIFF_IMAGE | NGX_AHAVA_SNIFF_DOCUMENT
};


/* SPEC §7, row by row */

static ngx_ahava_route_t  ngx_ahava_upload_routes[] = {

    { NGX_HTTP_POST, "/api/messages/upload/image", NULL, NULL,
      ngx_ahava_upload_start, &ngx_ahava_upload_image,
      NGX_AHAVA_ROUTE_UPLOAD, NGX_AHAVA_IMAGE_MAX + NGX_AHAVA_UPLOAD_SLACK },

    { NGX_HTTP_POST, "/api/messages/upload/file", NULL, NULL,
      ngx_ahava_upload_start, &ngx_ahava_upload_file,
      NGX_AHAVA_ROUTE_UPLOAD, NGX_AHAVA_DOCUMENT_MAX + NGX_AHAVA_UPLOAD_SLACK },

    { 0, NULL, NULL, NULL, NULL, NULL, 0, 0 }
};

static ngx_ahava_route_t  ngx_ahava_download_routes[] = {

    { NGX_HTTP_GET, "/uploads/images/*", NULL, NULL,
      ngx_ahava_download_check, "images", 0, 0 },

    { NGX_HTTP_GET, "/uploads/documents/*", NULL, NULL,
      ngx_ahava_download_check, "documents", 0, 0 },

    { NGX_HTTP_GET, "/uploads/exports/*", NULL, NULL,
      ngx_ahava_download_check, "exports", 0, 0 },

    { 0, NULL, NULL, NULL, NULL, NULL, 0, 0 }
};


enum {
    NGX_AHAVA_UPLOAD_RECORD = 0,
    NGX_AHAVA_DOWNLOAD_ALLOWED,
    NGX_AHAVA_UPLOAD_NSTMTS
};

static ngx_ahava_stmt_t  ngx_ahava_upload_stmts[] = {

    /* an accepted upload: $1 id, $2 owner, $3 kind, $4 storedPath,
     * $5 originalName, $6 mimetype, $7 size, $8 sha256 */
    { ngx_string("upload record"),
      "INSERT INTO uploads (id, \"ownerId\", kind, \"storedPath\","
      " \"originalName\", mimetype, size, sha256, \"createdAt\")"
      " VALUES ($1, $2, $3, $4, $5, $6, $7::bigint, $8, LOCALTIMESTAMP(3))",
      8, 0, "" },

    /* may $2 have /uploads/$1 ($3: an admin)?  The uploader, a participant
     * of a visit where a message carries it, the owner of an export; the
     * type it is served as, the one its content was found to be */
    { ngx_string("download allowed"),
      "SELECT u.mimetype FROM uploads u WHERE u.\"storedPath\" = $1"
      " AND ($3::bool OR u.\"ownerId\" = $2 OR EXISTS (SELECT 1"
      " FROM messages m JOIN visits v ON v.id = m.\"visitId\""
      " JOIN bookings b ON b.id = v.\"bookingId\""
      " WHERE m.\"attachmentUrl\" = '/uploads/' || $1"
      " AND $2 IN (b.\"patientId\", v.\"nurseId\", v.\"doctorId\")))"
      " UNION ALL SELECT 'application/pdf' FROM export_jobs e"
      " WHERE e.\"fileUrl\" = '/uploads/' || $1"
      " AND ($3::bool OR e.\"userId\" = $2)"
      " LIMIT 1",
      3, 0, "" },
};


static ngx_command_t  ngx_ahava_upload_commands[] = {

    { ngx_string("ahava_upload"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_ahava_upload_set_upload,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      ngx_ahava_upload_routes },

    { ngx_string("ahava_download"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_ahava_upload_set_download,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      ngx_ahava_download_routes },

    { ngx_string("ahava_download_cache_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_ahava_upload_main_conf_t, grant_ttl),
      NULL },

    { ngx_string("ahava_upload_root"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_ahava_upload_main_conf_t, root),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_ahava_upload_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_ahava_upload_postconfiguration,    /* postconfiguration */

    ngx_ahava_upload_create_main_conf,     /* create main configuration */
    ngx_ahava_upload_init_main_conf,       /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_ahava_upload_module = {
    NGX_MODULE_V1,
    &ngx_ahava_upload_module_ctx,          /* module context */
    ngx_ahava_upload_commands,             /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_ahava_upload_init_module,          /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static void *
ngx_ahava_upload_create_main_conf(ngx_conf_t *cf)
{
    ngx_ahava_upload_main_conf_t  *umcf;

    umcf = ngx_pcalloc(cf->pool, sizeof(ngx_ahava_upload_main_conf_t));
    if (umcf == NULL) {
        return NULL;
    }

    umcf->grant_ttl = NGX_CONF_UNSET_MSEC;

    return umcf;
}


static char *
ngx_ahava_upload_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_ahava_upload_main_conf_t  *umcf = conf;

    if (umcf->root.len == 0) {
        ngx_str_set(&umcf->root, "uploads");
    }

    while (umcf->root.len > 1 && umcf->root.data[umcf->root.len - 1] == '/') {
        umcf->root.len--;
    }

    if (ngx_conf_full_name(cf->cycle, &umcf->root, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    ngx_conf_init_msec_value(umcf->grant_ttl, 10000);

    if (umcf->grant_ttl) {
        /* each worker writes its own copy */
        umcf->grants = ngx_pcalloc(cf->pool, NGX_AHAVA_GRANTS
                                   * sizeof(ngx_ahava_download_grant_t));
        if (umcf->grants == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


/* the directives of locations: the core's, noting the root is needed */

static char *
ngx_ahava_upload_set_upload(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_ahava_upload_main_conf_t  *umcf;

    umcf = ngx_http_conf_get_module_main_conf(cf, ngx_ahava_upload_module);
    umcf->used = 1;

    return ngx_ahava_conf_set_routes(cf, cmd, conf);
}


static char *
ngx_ahava_upload_set_download(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_ahava_upload_main_conf_t  *umcf;

    umcf = ngx_http_conf_get_module_main_conf(cf, ngx_ahava_upload_module);
    umcf->used = 1;

    return ngx_ahava_conf_set_access(cf, cmd, conf);
}


/*
 * The directories exist before the first upload, owned by the workers'
 * user (as nginx does for its temp paths): a missing one is said at start,
 * not as a 500 later.
 */

static ngx_int_t
ngx_ahava_upload_init_module(ngx_cycle_t *cycle)
{
    ngx_uint_t                     i;
    ngx_file_info_t                fi;
    ngx_core_conf_t               *ccf;
    ngx_ahava_upload_main_conf_t  *umcf;
    u_char                         path[NGX_MAX_PATH];

    static const char  *dirs[] = { "", "/images", "/documents", "/exports" };

    umcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_ahava_upload_module);

    if (umcf == NULL || !umcf->used) {
        return NGX_OK;
    }

    if (umcf->root.len + sizeof("/documents") > NGX_MAX_PATH) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "ahava_upload_root \"%V\" is too long", &umcf->root);
        return NGX_ERROR;
    }

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);

    for (i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        (void) ngx_sprintf(path, "%V%s%Z", &umcf->root, dirs[i]);

        if (ngx_file_info(path, &fi) != NGX_FILE_ERROR) {
            if (!ngx_is_dir(&fi)) {
                ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                              "ahava_upload_root: \"%s\" is not a directory",
                              path);
                return NGX_ERROR;
            }

            continue;
        }

        if (ngx_create_dir(path, 0700) == NGX_FILE_ERROR) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                          ngx_create_dir_n " \"%s\" failed", path);
            return NGX_ERROR;
        }

        if (geteuid() == 0 && ccf->user != (ngx_uid_t) NGX_CONF_UNSET_UINT
            && chown((const char *) path, ccf->user, -1) == -1)
        {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                          "chown(\"%s\", %d) failed", path, ccf->user);
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_ahava_upload_postconfiguration(ngx_conf_t *cf)
{
    return ngx_ahava_declare(cf, ngx_ahava_upload_stmts,
                             NGX_AHAVA_UPLOAD_NSTMTS);
}


/*
 * POST /api/messages/upload/{image,file}: after authentication, a body that
 * is multipart/form-data, read unbuffered and streamed to its place
 */

static ngx_ahava_rc_e
ngx_ahava_upload_start(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    u_char                         boundary[NGX_AHAVA_MULTIPART_BOUNDARY_MAX];
    size_t                         blen;
    ngx_int_t                      rc;
    ngx_str_t                     *ct;
    ngx_pool_cleanup_t            *cln;
    ngx_ahava_upload_t            *u;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: upload");

    ct = r->headers_in.content_type ? &r->headers_in.content_type->value
                                    : NULL;

    if (ct == NULL
        || ngx_ahava_multipart_boundary(ct->data, ct->len, boundary, &blen)
           != NGX_AHAVA_MULTIPART_OK)
    {
        ngx_ahava_metrics_count(NGX_AHAVA_M_UPLOADS_INVALID, 1);
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_BAD_REQUEST,
                   "VALIDATION_ERROR", "Invalid request body",
                   ngx_ahava_detail(NULL, "body", "must be multipart/form-data "
                                    "with a boundary"));
    }

    if (r->headers_in.content_length_n <= 0 && !r->headers_in.chunked) {
        ngx_ahava_metrics_count(NGX_AHAVA_M_UPLOADS_INVALID, 1);
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_BAD_REQUEST,
                   "VALIDATION_ERROR", "Invalid request body",
                   ngx_ahava_detail(NULL, ((ngx_ahava_upload_endpoint_t *)
                                           ctx->route->data)->field,
                                    "a file is required"));
    }

    u = ngx_pcalloc(r->pool, sizeof(ngx_ahava_upload_t));
    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (u == NULL || cln == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    u->request = r;
    u->ctx = ctx;
    u->endpoint = ctx->route->data;
    u->fd = NGX_INVALID_FILE;

    cln->handler = ngx_ahava_upload_cleanup;
    cln->data = u;

    u->sha = EVP_MD_CTX_new();
    if (u->sha == NULL || EVP_DigestInit_ex(u->sha, EVP_sha256(), NULL) != 1)
    {
        return ngx_ahava_fail(r, ctx);
    }

    /* one file and few fields: at most 4 parts, small headers and fields */
    if (ngx_ahava_multipart_init(&u->mp, boundary, blen, 4096, 4, 1024)
        != NGX_AHAVA_MULTIPART_OK)
    {
        return ngx_ahava_fail(r, ctx);
    }

    u->mp.on_part_begin = ngx_ahava_upload_part_begin;
    u->mp.on_part_data = ngx_ahava_upload_part_data;
    u->mp.on_part_end = ngx_ahava_upload_part_end;
    u->mp.data = u;

    ngx_ahava_sniff_init(&u->sniff, u->endpoint->allowed);

    ctx->data = u;

    /* a chunked body is counted as it is decoded and refused (413) once
     * past the route's limit, as a declared length is before reading */
    ctx->body_limit = ctx->route->body_max;

    /* the body reader's reference stands in for ours (ngx_ahava_body.c) */
    r->request_body_no_buffering = 1;
    r->main->count--;
    u->reading = 1;

    rc = ngx_http_read_client_request_body(r, ngx_ahava_upload_body);

    u->reading = 0;

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        ngx_ahava_metrics_count(rc == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE
                                ? NGX_AHAVA_M_UPLOADS_TOO_LARGE
                                : NGX_AHAVA_M_UPLOADS_INVALID, 1);
        r->main->count++;
        r->keepalive = 0;
        r->lingering_close = 1;
        return ngx_ahava_answer_status(r, ctx, rc);
    }

    /* unbuffered, the first data (or the whole body) is there already */
    return ngx_ahava_upload_process(r, ctx);
}


/* called once from inside the first read: the step goes on by itself */

static void
ngx_ahava_upload_body(ngx_http_request_t *r)
{
    ngx_ahava_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_ahava_core_module);

    if (ctx == NULL || ((ngx_ahava_upload_t *) ctx->data)->reading) {
        return;
    }

    /* a body read whole without us waiting (never unbuffered, but sure) */
    ctx->done = ngx_ahava_upload_process;
    ngx_ahava_resume(r, ctx);
}


/* more of the body arrived (or the client went, or timed out) */

static void
ngx_ahava_upload_read(ngx_http_request_t *r)
{
    ngx_ahava_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_ahava_core_module);

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: upload read");

    ctx->done = ngx_ahava_upload_process;
    ngx_ahava_resume(r, ctx);
}


/*
 * Feeds what was read to the parser, then reads on.  Each buffer is
 * consumed whole, so nginx can reuse it: memory does not grow with the
 * file.
 */

static ngx_ahava_rc_e
ngx_ahava_upload_process(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    int                       rc;
    ngx_int_t                 nrc;
    ngx_buf_t                *b;
    ngx_chain_t              *cl, *next;
    ngx_ahava_upload_t       *u;
    ngx_http_request_body_t  *rb;

    u = ctx->data;
    rb = r->request_body;

    for ( ;; ) {

        /* the links go back to the pool as they are read: nginx's save
         * filter makes one per buffer (a chunk over 128 bytes is one) */
        for (cl = rb->bufs; cl; cl = next) {
            next = cl->next;
            b = cl->buf;

            if (b->last > b->pos) {
                rc = ngx_ahava_multipart_feed(&u->mp, b->pos,
                                              b->last - b->pos);
                b->pos = b->last;

                if (rc != NGX_AHAVA_MULTIPART_OK) {
                    rb->bufs = next;
                    ngx_free_chain(r->pool, cl);
                    return ngx_ahava_upload_refuse(r, ctx, u, rc);
                }
            }

            ngx_free_chain(r->pool, cl);
        }

        rb->bufs = NULL;

        if (!r->reading_body) {
            return ngx_ahava_upload_finish(r, ctx, u);
        }

        nrc = ngx_http_read_unbuffered_request_body(r);

        if (nrc == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE) {
            /* a chunked body past the route's limit (ngx_ahava_body.c) */
            u->reason = "the body is over the limit";
            return ngx_ahava_upload_refuse(r, ctx, u,
                                           NGX_AHAVA_UPLOAD_TOO_LARGE);
        }

        if (nrc >= NGX_HTTP_SPECIAL_RESPONSE) {
            /* the client went or timed out: nothing of it stays */
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "ahava: upload not finished by the client");
            r->keepalive = 0;
            ctx->rc = nrc;
            return NGX_AHAVA_ANSWERED;
        }

        if (nrc == NGX_AGAIN && rb->bufs == NULL) {
            r->read_event_handler = ngx_ahava_upload_read;
            return NGX_AHAVA_ASYNC;
        }

        /* NGX_OK (all of it read) or more data: round again */
    }
}


/* the body is over: one accepted file, renamed, then recorded */

static ngx_ahava_rc_e
ngx_ahava_upload_finish(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    ngx_ahava_upload_t *u)
{
    int                            rc, type;
    u_char                         digest[EVP_MAX_MD_SIZE], *hex, *id;
    unsigned int                   dlen;
    ngx_ahava_rc_e                 arc;
    ngx_ahava_pg_query_t          *q;
    const ngx_ahava_sniff_type_t  *t;

    rc = ngx_ahava_multipart_finish(&u->mp);

    if (rc != NGX_AHAVA_MULTIPART_OK) {
        return ngx_ahava_upload_refuse(r, ctx, u, rc);
    }

    if (u->files == 0) {
        u->reason = "no file part";
        return ngx_ahava_upload_refuse(r, ctx, u, NGX_AHAVA_UPLOAD_BAD);
    }

    if (u->size == 0) {
        u->reason = "empty file";
        return ngx_ahava_upload_refuse(r, ctx, u, NGX_AHAVA_UPLOAD_UNSUPPORTED);
    }

    if (ngx_ahava_sniff_finish(&u->sniff, &type) != NGX_AHAVA_SNIFF_ACCEPT) {
        u->reason = u->sniff.reason ? u->sniff.reason : "unrecognised type";
        return ngx_ahava_upload_refuse(r, ctx, u, NGX_AHAVA_UPLOAD_UNSUPPORTED);
    }

    /* the extension must agree with the content (TXT and CSV by name) */
    type = ngx_ahava_sniff_extension_matches(type, u->original.data,
                                             u->original.len);
    if (type <= 0) {
        u->reason = "the extension does not match the content";
        return ngx_ahava_upload_refuse(r, ctx, u, NGX_AHAVA_UPLOAD_UNSUPPORTED);
    }

    t = ngx_ahava_sniff_type(type);

    if (t->kind == NGX_AHAVA_SNIFF_IMAGE && u->size > NGX_AHAVA_IMAGE_MAX) {
        u->reason = "an image over 5 MiB";
        return ngx_ahava_upload_refuse(r, ctx, u, NGX_AHAVA_UPLOAD_TOO_LARGE);
    }

    if (EVP_DigestFinal_ex(u->sha, digest, &dlen) != 1) {
        return ngx_ahava_upload_refuse(r, ctx, u, NGX_AHAVA_UPLOAD_ERROR);
    }

    /* on disk before it is said to be: then its final name */
    if (fdatasync(u->fd) == -1) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, ngx_errno,
                      "ahava: fdatasync \"%V\" failed", &u->part);
        return ngx_ahava_upload_refuse(r, ctx, u, NGX_AHAVA_UPLOAD_ERROR);
    }

    ngx_close_file(u->fd);
    u->fd = NGX_INVALID_FILE;

    if (ngx_rename_file(u->part.data, u->path.data) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, ngx_errno,
                      ngx_rename_file_n " \"%V\" to \"%V\" failed",
                      &u->part, &u->path);
        return ngx_ahava_upload_refuse(r, ctx, u, NGX_AHAVA_UPLOAD_ERROR);
    }

    u->renamed = 1;

    /* the new name itself on disk before a row names it: a crash must not
     * leave a row pointing to no file (the data went by fdatasync) */
    if (ngx_ahava_upload_sync_dir(r, u) != NGX_OK) {
        return ngx_ahava_upload_refuse(r, ctx, u, NGX_AHAVA_UPLOAD_ERROR);
    }

    hex = ngx_pnalloc(r->pool, 2 * dlen + 1);
    id = ngx_pnalloc(r->pool, NGX_AHAVA_NEW_ID_LEN + 1);
    q = ngx_ahava_query_create(r,
                               &ngx_ahava_upload_stmts[NGX_AHAVA_UPLOAD_RECORD]);
    if (hex == NULL || id == NULL || q == NULL) {
        return ngx_ahava_upload_refuse(r, ctx, u, NGX_AHAVA_UPLOAD_ERROR);
    }

    *ngx_hex_dump(hex, digest, dlen) = '\0';
    ngx_ahava_id_generate(id);
    id[NGX_AHAVA_NEW_ID_LEN] = '\0';

    u->type = type;
    u->query = q;

    q->values[0] = (char *) id;
    q->values[1] = (char *) ctx->user.id;
    q->values[2] = (t->kind == NGX_AHAVA_SNIFF_IMAGE) ? "image" : "document";
    q->values[4] = (char *) u->original.data;
    q->values[5] = (char *) t->mime;
    q->values[7] = (char *) hex;

    if (ngx_ahava_param(r, q, 3, u->path.data + u->path.len
                                 - ngx_strlen(u->dir) - 1 - ngx_strlen(u->name),
                        ngx_strlen(u->dir) + 1 + ngx_strlen(u->name))
        != NGX_OK
        || ngx_ahava_param_uint(r, q, 6, u->size) != NGX_OK)
    {
        return ngx_ahava_upload_refuse(r, ctx, u, NGX_AHAVA_UPLOAD_ERROR);
    }

    arc = ngx_ahava_query(r, ctx, q, ngx_ahava_upload_recorded);

    if (arc != NGX_AHAVA_ASYNC) {
        /* refused at once (503): no row can come, the file goes now */
        ngx_ahava_upload_discard(u);
    }

    return arc;
}


static ngx_int_t
ngx_ahava_upload_sync_dir(ngx_http_request_t *r, ngx_ahava_upload_t *u)
{
    u_char    *dir;
    size_t     len;
    ngx_fd_t   fd;

    len = u->path.len - ngx_strlen(u->name) - 1;

    dir = ngx_pnalloc(r->pool, len + 1);
    if (dir == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(dir, u->path.data, len);
    dir[len] = '\0';

    fd = ngx_open_file(dir, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (fd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, ngx_errno,
                      ngx_open_file_n " \"%s\" failed", dir);
        return NGX_ERROR;
    }

    if (fsync(fd) == -1) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, ngx_errno,
                      "ahava: fsync \"%s\" failed", dir);
        ngx_close_file(fd);
        return NGX_ERROR;
    }

    ngx_close_file(fd);

    return NGX_OK;
}


static ngx_ahava_rc_e
ngx_ahava_upload_recorded(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    u_char                        *body, *p;
    ngx_ahava_upload_t            *u;
    const ngx_ahava_sniff_type_t  *t;

    u = ctx->data;

    u->renamed = 0;

    if (ctx->query->rc != NGX_OK) {
        ngx_ahava_metrics_count(NGX_AHAVA_M_UPLOADS_FAILED, 1);

        if (ctx->query->rc == NGX_ERROR || !ctx->query->sent
            || ctx->query->sqlstate)
        {
            /* not recorded (never sent, or the server said why): the file
             * goes too */
            (void) ngx_delete_file(u->path.data);

        } else {
            /* the connection went after the INSERT was sent: the row may
             * be there, and it must not point to no file */
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                          "ahava: upload \"%s/%s\" kept: PostgreSQL went "
                          "before saying whether its row was written",
                          u->dir, u->name);
        }

        return ngx_ahava_query_failed(r, ctx);
    }

    t = ngx_ahava_sniff_type(u->type);

    body = ngx_pnalloc(r->pool, 512);
    if (body == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    /* names and types are of known characters: no escaping needed */
    p = ngx_sprintf(body, "{\"success\":true,\"data\":{\"filename\":\"%s\","
                    "\"url\":\"/uploads/%s/%s\",\"type\":\"%s\","
                    "\"size\":%O,\"mimetype\":\"%s\",\"sha256\":\"%s\"}}",
                    u->name, u->dir, u->name,
                    (t->kind == NGX_AHAVA_SNIFF_IMAGE) ? "image" : "document",
                    u->size, t->mime, ctx->query->values[7]);

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "ahava: upload \"%s/%s\" stored, %O bytes, %s", u->dir,
                  u->name, u->size, t->mime);

    ngx_ahava_metrics_count(NGX_AHAVA_M_UPLOADS_ACCEPTED, 1);

    return ngx_ahava_answer_text(r, ctx, NGX_HTTP_CREATED, body, p - body);
}


/*
 * A refusal (SPEC §11: a security event with its reason, never the
 * content): the partial file goes (the cleanup), the rest of the body is
 * not read.
 */

static ngx_ahava_rc_e
ngx_ahava_upload_refuse(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    ngx_ahava_upload_t *u, int code)
{
    ngx_uint_t   status;
    const char  *errcode, *message, *reason;

    reason = u->reason;

    switch (code) {

    case NGX_AHAVA_UPLOAD_TOO_LARGE:
        ngx_ahava_metrics_count(NGX_AHAVA_M_UPLOADS_TOO_LARGE, 1);
        status = NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
        errcode = "PAYLOAD_TOO_LARGE";
        message = "File too large";
        break;

    case NGX_AHAVA_UPLOAD_UNSUPPORTED:
        ngx_ahava_metrics_count(NGX_AHAVA_M_UPLOADS_UNSUPPORTED, 1);
        status = NGX_HTTP_UNSUPPORTED_MEDIA_TYPE;
        errcode = "UNSUPPORTED_MEDIA_TYPE";
        message = "Unsupported file type";
        break;

    case NGX_AHAVA_UPLOAD_ERROR:
        ngx_ahava_metrics_count(NGX_AHAVA_M_UPLOADS_FAILED, 1);
        status = NGX_HTTP_INTERNAL_SERVER_ERROR;
        errcode = "INTERNAL";
        message = "Internal server error";
        break;

    case NGX_AHAVA_UPLOAD_BAD:
        ngx_ahava_metrics_count(NGX_AHAVA_M_UPLOADS_INVALID, 1);
        status = NGX_HTTP_BAD_REQUEST;
        errcode = "VALIDATION_ERROR";
        message = "Invalid upload";
        break;

    default:
        /* the multipart parser's own error */
        ngx_ahava_metrics_count(NGX_AHAVA_M_UPLOADS_INVALID, 1);
        status = NGX_HTTP_BAD_REQUEST;
        errcode = "VALIDATION_ERROR";
        message = "Invalid upload";
        reason = ngx_ahava_multipart_strerror(code);
        break;
    }

    if (reason == NULL) {
        reason = message;
    }

    if (status != NGX_HTTP_INTERNAL_SERVER_ERROR) {
        ngx_ahava_audit(r, ctx, "UPLOAD_REJECTED", "upload", NULL,
                        json_pack("{s:s, s:s, s:I}", "reason", reason,
                                  "endpoint", u->endpoint->field,
                                  "status", (json_int_t) status));
    }

    ngx_ahava_upload_discard(u);

    /* the body is not read on: the connection cannot be reused */
    r->keepalive = 0;
    r->lingering_close = 1;

    return ngx_ahava_answer_error(r, ctx, status, errcode, message,
               (status == NGX_HTTP_BAD_REQUEST || code
                == NGX_AHAVA_UPLOAD_UNSUPPORTED)
               ? ngx_ahava_detail(NULL, u->endpoint->field, "%s", reason)
               : NULL);
}


/* A part begins: only one file, in the endpoint's field, of a known type */

static int
ngx_ahava_upload_part_begin(void *data, const ngx_ahava_multipart_part_t *part)
{
    ngx_ahava_upload_t  *u = data;

    int                            t, match;
    u_char                        *p, hexid[12];
    size_t                         len;
    ngx_time_t                    *tp;
    ngx_http_request_t            *r;
    ngx_ahava_upload_main_conf_t  *umcf;
    const ngx_ahava_sniff_type_t  *type;

    r = u->request;

    if (!part->is_file || part->filename_len == 0) {
        if (part->name_len == ngx_strlen(u->endpoint->field)
            && ngx_strncmp(part->name, u->endpoint->field, part->name_len)
               == 0)
        {
            u->reason = "the field is not a file";
            return NGX_AHAVA_UPLOAD_BAD;
        }

        return 0;           /* another field: ignored (and bounded) */
    }

    if (part->name_len != ngx_strlen(u->endpoint->field)
        || ngx_strncmp(part->name, u->endpoint->field, part->name_len) != 0)
    {
        u->reason = "a file in a field of another name";
        return NGX_AHAVA_UPLOAD_BAD;
    }

    if (++u->files > 1) {
        u->reason = "more than one file";
        return NGX_AHAVA_UPLOAD_BAD;
    }

    /* the extension says what the content must be, and where it goes */
    match = NGX_AHAVA_SNIFF_EXT_MISMATCH;

    for (t = NGX_AHAVA_SNIFF_NONE + 1; t < NGX_AHAVA_SNIFF_NTYPES; t++) {
        match = ngx_ahava_sniff_extension_matches(t, part->filename,
                                                  part->filename_len);
        if (match > 0 || match == NGX_AHAVA_SNIFF_BAD_FILENAME) {
            break;
        }
    }

    if (match == NGX_AHAVA_SNIFF_BAD_FILENAME) {
        u->reason = "a file name that cannot be kept";
        return NGX_AHAVA_UPLOAD_BAD;
    }

    type = (match > 0) ? ngx_ahava_sniff_type(match) : NULL;

    if (type == NULL || !(type->kind & u->endpoint->allowed)) {
        u->reason = "a file type that is not accepted";
        return NGX_AHAVA_UPLOAD_UNSUPPORTED;
    }

    u->original.data = ngx_pnalloc(r->pool, part->filename_len + 1);
    if (u->original.data == NULL) {
        return NGX_AHAVA_UPLOAD_ERROR;
    }

    ngx_memcpy(u->original.data, part->filename, part->filename_len);
    u->original.data[part->filename_len] = '\0';
    u->original.len = part->filename_len;

    u->dir = (type->kind == NGX_AHAVA_SNIFF_IMAGE) ? "images" : "documents";
    u->max = (type->kind == NGX_AHAVA_SNIFF_IMAGE) ? NGX_AHAVA_IMAGE_MAX
                                                   : NGX_AHAVA_DOCUMENT_MAX;

    /* <ms>-<24 hex>.<its extension in lowercase> */
    if (RAND_bytes(hexid, sizeof(hexid)) != 1) {
        return NGX_AHAVA_UPLOAD_ERROR;
    }

    tp = ngx_timeofday();
    p = ngx_sprintf(u->name, "%013M-", (ngx_msec_t) tp->sec * 1000 + tp->msec);
    p = ngx_hex_dump(p, hexid, sizeof(hexid));

    /* the client's own extension (jpg or jpeg), lowercased: one of the
     * type's, 1 to 4 letters, as the match above made sure */
    for (len = part->filename_len; part->filename[len - 1] != '.'; len--) {
        /* void */
    }

    *p++ = '.';
    ngx_strlow(p, (u_char *) part->filename + len, part->filename_len - len);
    p += part->filename_len - len;
    *p = '\0';

    umcf = ngx_http_get_module_main_conf(r, ngx_ahava_upload_module);

    len = umcf->root.len + 1 + ngx_strlen(u->dir) + 1 + ngx_strlen(u->name);

    u->path.data = ngx_pnalloc(r->pool, len + 1);
    u->part.data = ngx_pnalloc(r->pool, len + sizeof(".part"));
    if (u->path.data == NULL || u->part.data == NULL) {
        return NGX_AHAVA_UPLOAD_ERROR;
    }

    u->path.len = ngx_sprintf(u->path.data, "%V/%s/%s%Z", &umcf->root,
                              u->dir, u->name) - u->path.data - 1;
    u->part.len = ngx_sprintf(u->part.data, "%V.part%Z", &u->path)
                  - u->part.data - 1;

    u->fd = ngx_open_file(u->part.data, NGX_FILE_WRONLY, NGX_FILE_CREATE_OR_OPEN
                          | O_EXCL, NGX_FILE_DEFAULT_ACCESS);

    if (u->fd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, ngx_errno,
                      ngx_open_file_n " \"%V\" failed", &u->part);
        return NGX_AHAVA_UPLOAD_ERROR;
    }

    u->in_file = 1;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: upload to \"%V\"", &u->part);

    return 0;
}


/* File bytes: judged, counted, hashed and written as they come */

static int
ngx_ahava_upload_part_data(void *data, const unsigned char *p, size_t n)
{
    ngx_ahava_upload_t  *u = data;

    ssize_t  written;

    if (!u->in_file) {
        return 0;
    }

    if (ngx_ahava_sniff_feed(&u->sniff, p, n) == NGX_AHAVA_SNIFF_REJECT) {
        u->reason = u->sniff.reason;
        return NGX_AHAVA_UPLOAD_UNSUPPORTED;
    }

    u->size += n;

    if (u->size > u->max) {
        u->reason = (u->max == NGX_AHAVA_IMAGE_MAX) ? "an image over 5 MiB"
                                                    : "a file over 10 MiB";
        return NGX_AHAVA_UPLOAD_TOO_LARGE;
    }

    if (EVP_DigestUpdate(u->sha, p, n) != 1) {
        return NGX_AHAVA_UPLOAD_ERROR;
    }

    /* a small sequential write, as nginx's own temp files (DESIGN.md) */
    while (n) {
        written = write(u->fd, p, n);

        if (written == -1) {
            if (ngx_errno == NGX_EINTR) {
                continue;
            }

            ngx_log_error(NGX_LOG_ERR, u->request->connection->log, ngx_errno,
                          "ahava: write to \"%V\" failed", &u->part);
            return NGX_AHAVA_UPLOAD_ERROR;
        }

        p += written;
        n -= written;
    }

    return 0;
}


static int
ngx_ahava_upload_part_end(void *data)
{
    ngx_ahava_upload_t  *u = data;

    u->in_file = 0;

    return 0;
}


/* The partial file goes at once: it is never seen after an answer */

static void
ngx_ahava_upload_discard(ngx_ahava_upload_t *u)
{
    if (u->fd != NGX_INVALID_FILE) {
        ngx_close_file(u->fd);
        u->fd = NGX_INVALID_FILE;
    }

    if (u->part.data && !u->renamed) {
        (void) ngx_delete_file(u->part.data);
        u->part.data = NULL;
    }

    /* renamed, and its INSERT never reached PostgreSQL (refused at once,
     * or the client went while it waited for a connection): no row can
     * point to it.  One that was sent may commit still: it stays. */
    if (u->renamed && (u->query == NULL || !u->query->sent)) {
        (void) ngx_delete_file(u->path.data);
        u->renamed = 0;
    }
}


/* Whatever ends the request: nothing of an unfinished upload stays */

static void
ngx_ahava_upload_cleanup(void *data)
{
    ngx_ahava_upload_t  *u = data;

    ngx_ahava_upload_discard(u);

    if (u->sha) {
        EVP_MD_CTX_free(u->sha);
        u->sha = NULL;
    }
}


/*
 * GET /uploads/<dir>/<name>: the name must have the stored form before
 * anything else is looked at (so "..", encoded slashes, NUL or a listing
 * never reach a file), then the caller must be allowed.
 */

static ngx_ahava_rc_e
ngx_ahava_download_check(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    ngx_str_t                    path;
    ngx_ahava_pg_query_t        *q;
    ngx_ahava_download_grant_t  *g;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: download check");

    if (ngx_ahava_valid_file_name(ctx->ids[0].data, ctx->ids[0].len)
        != NGX_OK)
    {
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_NOT_FOUND, "NOT_FOUND",
                                      "File not found", NULL);
    }

    /* "images/<name>", as stored */
    path.data = r->uri.data + sizeof("/uploads/") - 1;
    path.len = r->uri.len - (sizeof("/uploads/") - 1);

    g = ngx_ahava_download_grant(r, ctx, &path);

    if (g && g->path_len && (ngx_msec_int_t) (g->expires - ngx_current_msec) > 0
        && g->user_len == ctx->user.id_len && g->path_len == path.len
        && ngx_memcmp(g->user, ctx->user.id, g->user_len) == 0
        && ngx_memcmp(g->path, path.data, path.len) == 0)
    {
        return ngx_ahava_download_allow(r, ctx, g->mime, g->mime_len);
    }

    q = ngx_ahava_query_create(r,
                             &ngx_ahava_upload_stmts[NGX_AHAVA_DOWNLOAD_ALLOWED]);
    if (q == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    if (ngx_ahava_param(r, q, 0, path.data, path.len) != NGX_OK) {
        return ngx_ahava_fail(r, ctx);
    }

    q->values[1] = (char *) ctx->user.id;
    q->values[2] = (ctx->user.role == NGX_AHAVA_ROLE_ADMIN) ? "t" : "f";

    return ngx_ahava_query(r, ctx, q, ngx_ahava_download_checked);
}


static ngx_ahava_rc_e
ngx_ahava_download_checked(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx)
{
    size_t                         len;
    u_char                        *mime;
    ngx_str_t                      path;
    ngx_ahava_download_grant_t    *g;
    ngx_ahava_upload_main_conf_t  *umcf;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "ahava: download checked");

    if (ctx->query->rc != NGX_OK) {
        return ngx_ahava_query_failed(r, ctx);
    }

    if (PQntuples(ctx->query->result) != 1) {
        /* absent and not yours look the same (SPEC §7) */
        return ngx_ahava_answer_error(r, ctx, NGX_HTTP_NOT_FOUND, "NOT_FOUND",
                                      "File not found", NULL);
    }

    mime = (u_char *) PQgetvalue(ctx->query->result, 0, 0);
    len = PQgetlength(ctx->query->result, 0, 0);

    /* remembered for a while: a grant only, never a refusal */
    path.data = r->uri.data + sizeof("/uploads/") - 1;
    path.len = r->uri.len - (sizeof("/uploads/") - 1);

    g = ngx_ahava_download_grant(r, ctx, &path);

    if (g && len <= NGX_AHAVA_GRANT_MIME_MAX
        && path.len <= NGX_AHAVA_GRANT_PATH_MAX)
    {
        umcf = ngx_http_get_module_main_conf(r, ngx_ahava_upload_module);

        g->expires = ngx_current_msec + umcf->grant_ttl;
        ngx_memcpy(g->user, ctx->user.id, ctx->user.id_len);
        g->user_len = (u_char) ctx->user.id_len;
        ngx_memcpy(g->path, path.data, path.len);
        g->path_len = (u_char) path.len;
        ngx_memcpy(g->mime, mime, len);
        g->mime_len = (u_char) len;
    }

    return ngx_ahava_download_allow(r, ctx, mime, len);
}


/* the slot of (caller, file) in this worker's grants, if they are kept */

static ngx_ahava_download_grant_t *
ngx_ahava_download_grant(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    ngx_str_t *path)
{
    uint32_t                       crc;
    ngx_ahava_upload_main_conf_t  *umcf;

    umcf = ngx_http_get_module_main_conf(r, ngx_ahava_upload_module);

    if (umcf->grants == NULL) {
        return NULL;
    }

    ngx_crc32_init(crc);
    ngx_crc32_update(&crc, ctx->user.id, ctx->user.id_len);
    ngx_crc32_update(&crc, path->data, path->len);
    ngx_crc32_final(crc);

    return &umcf->grants[crc % NGX_AHAVA_GRANTS];
}


/* allowed: served by nginx as the type its content was found to be */

static ngx_ahava_rc_e
ngx_ahava_download_allow(ngx_http_request_t *r, ngx_ahava_ctx_t *ctx,
    u_char *mime, size_t len)
{
    ngx_table_elt_t  *h;

    r->headers_out.content_type.data = ngx_pnalloc(r->pool, len);
    if (r->headers_out.content_type.data == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    ngx_memcpy(r->headers_out.content_type.data, mime, len);
    r->headers_out.content_type.len = len;
    r->headers_out.content_type_len = len;

    /* the ones nginx will serve, whatever the location's own headers */
    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    h->hash = 1;
    ngx_str_set(&h->key, "X-Content-Type-Options");
    ngx_str_set(&h->value, "nosniff");

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return ngx_ahava_fail(r, ctx);
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Cache-Control");
    ngx_str_set(&h->value, "private");

    if (((const char *) ctx->route->data)[0] != 'i') {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return ngx_ahava_fail(r, ctx);
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Content-Disposition");
        ngx_str_set(&h->value, "attachment");
    }

    /* on to nginx's static serving */
    return NGX_AHAVA_NEXT;
}
