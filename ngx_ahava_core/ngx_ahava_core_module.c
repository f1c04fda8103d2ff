
/*
 * ngx_ahava_core_module: the directives of the shared dependencies, the
 * statements every module declares, and the per-worker lifecycle of the
 * PostgreSQL pool, the Redis client, the user cache and the security-event
 * journal.  Secrets are read at configuration time from "env:NAME",
 * "file:/path" or, discouraged, the literal value; they are never logged.
 */


#include "ngx_ahava_core.h"

#include <netdb.h>


static void *ngx_ahava_create_main_conf(ngx_conf_t *cf);
static char *ngx_ahava_init_main_conf(ngx_conf_t *cf, void *conf);
static char *ngx_ahava_conf_fail(ngx_conf_t *cf, const char *message);
static char *ngx_ahava_database(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_ahava_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *ngx_ahava_secret(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_ahava_jwt_algorithm(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_ahava_encryption_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_ahava_pg_params(ngx_conf_t *cf,
    ngx_ahava_main_conf_t *amcf);
static ngx_int_t ngx_ahava_postconfiguration(ngx_conf_t *cf);
static void *ngx_ahava_create_loc_conf(ngx_conf_t *cf);
static char *ngx_ahava_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static ngx_int_t ngx_ahava_init_process(ngx_cycle_t *cycle);
static void ngx_ahava_exit_process(ngx_cycle_t *cycle);


static ngx_command_t  ngx_ahava_core_commands[] = {

    { ngx_string("ahava_database"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_ahava_database,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ahava_pg_pool_size"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_ahava_main_conf_t, pg_pool_size),
      NULL },

    { ngx_string("ahava_pg_wait_queue"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_ahava_main_conf_t, pg_wait_queue),
      NULL },

    { ngx_string("ahava_pg_wait_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_ahava_main_conf_t, pg_wait_timeout),
      NULL },

    { ngx_string("ahava_pg_query_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_ahava_main_conf_t, pg_query_timeout),
      NULL },

    { ngx_string("ahava_pg_connect_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_ahava_main_conf_t, pg_connect_timeout),
      NULL },

    { ngx_string("ahava_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_ahava_redis,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ahava_jwt_secret"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_ahava_secret,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_ahava_main_conf_t, jwt_secret),
      NULL },

    { ngx_string("ahava_jwt_public_key"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_ahava_secret,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_ahava_main_conf_t, jwt_public_key),
      NULL },

    { ngx_string("ahava_jwt_algorithm"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_ahava_jwt_algorithm,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ahava_encryption_key"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_ahava_encryption_key,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ahava_user_cache_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_ahava_main_conf_t, user_cache_ttl),
      NULL },

    { ngx_string("ahava_user_cache_size"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_ahava_main_conf_t, user_cache_size),
      NULL },

    { ngx_string("ahava_health"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_ahava_conf_set_routes,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      ngx_ahava_health_routes },

    { ngx_string("ahava_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_ahava_metrics_directive,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ahava_error_page"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_ahava_conf_set_routes,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_ahava_core_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_ahava_postconfiguration,           /* postconfiguration */

    ngx_ahava_create_main_conf,            /* create main configuration */
    ngx_ahava_init_main_conf,              /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_ahava_create_loc_conf,             /* create location configuration */
    ngx_ahava_merge_loc_conf               /* merge location configuration */
};


ngx_module_t  ngx_ahava_core_module = {
    NGX_MODULE_V1,
    &ngx_ahava_core_module_ctx,            /* module context */
    ngx_ahava_core_commands,               /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_ahava_init_process,                /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_ahava_exit_process,                /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static void *
ngx_ahava_create_main_conf(ngx_conf_t *cf)
{
    ngx_ahava_main_conf_t  *amcf;

    amcf = ngx_pcalloc(cf->pool, sizeof(ngx_ahava_main_conf_t));
    if (amcf == NULL) {
        return NULL;
    }

    amcf->pg_pool_size = NGX_CONF_UNSET_UINT;
    amcf->pg_wait_queue = NGX_CONF_UNSET_UINT;
    amcf->pg_wait_timeout = NGX_CONF_UNSET_MSEC;
    amcf->pg_query_timeout = NGX_CONF_UNSET_MSEC;
    amcf->pg_connect_timeout = NGX_CONF_UNSET_MSEC;
    amcf->jwt_alg = NGX_CONF_UNSET;
    amcf->user_cache_ttl = NGX_CONF_UNSET_MSEC;
    amcf->user_cache_size = NGX_CONF_UNSET_UINT;

    if (ngx_array_init(&amcf->stmts, cf->pool, 64, sizeof(ngx_ahava_stmt_t *))
        != NGX_OK
        || ngx_array_init(&amcf->route_tables, cf->pool, 8,
                          sizeof(ngx_ahava_route_t *))
           != NGX_OK)
    {
        return NULL;
    }

    return amcf;
}


static void *
ngx_ahava_create_loc_conf(ngx_conf_t *cf)
{
    return ngx_pcalloc(cf->pool, sizeof(ngx_ahava_loc_conf_t));
}


/*
 * An API location keeps request bodies in memory: at most 64 KiB
 * (SPEC §4), in a buffer that holds them whole, so no body is ever read
 * back from a temp file inside the worker.  The limit is the module's,
 * enforced after authentication (ngx_ahava_body.c): nginx's own
 * client_max_body_size would answer a large body before the token is
 * looked at.  The core module merged its settings before ours, so these
 * are the final values.
 */

static char *
ngx_ahava_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_ahava_loc_conf_t  *prev = parent;
    ngx_ahava_loc_conf_t  *conf = child;

    ngx_http_core_loc_conf_t  *clcf;

    if (conf->routes == NULL) {
        conf->routes = prev->routes;
    }

    if (conf->access_routes == NULL) {
        conf->access_routes = prev->access_routes;
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (conf->routes && clcf->handler == ngx_ahava_api_handler) {
        clcf->client_max_body_size = 0;

        if (clcf->client_body_buffer_size < NGX_AHAVA_BODY_MAX + 1) {
            clcf->client_body_buffer_size = NGX_AHAVA_BODY_MAX + 1;
        }

        clcf->client_body_in_file_only = 0;     /* "off" */
    }

    /*
     * The error page of a request refused for its body size (nginx's 413,
     * or ours on a chunked body) is found by URI with the size counted so
     * far: a limit here would refuse it again, with nginx's HTML page.
     */
    if (clcf->handler == ngx_ahava_error_page_handler) {
        clcf->client_max_body_size = 0;
    }

    return NGX_CONF_OK;
}


/*
 * The statements of the core itself (the modules declare theirs likewise),
 * and the access-phase handler of the locations nginx serves after a check
 */

static ngx_int_t
ngx_ahava_postconfiguration(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_ahava_main_conf_t      *amcf;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_ahava_access_handler;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_ahava_metrics_log_handler;

    amcf = ngx_http_conf_get_module_main_conf(cf, ngx_ahava_core_module);

    if (ngx_ahava_metrics_conf(cf, amcf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_ahava_auth_declare(cf) != NGX_OK
        || ngx_ahava_metrics_declare(cf) != NGX_OK
        || ngx_ahava_audit_declare(cf) != NGX_OK
        || ngx_ahava_outbox_declare(cf) != NGX_OK
        || ngx_ahava_schema_declare(cf) != NGX_OK
        || ngx_ahava_body_filter_init(cf) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * A module's statements: each gets its index and its name on the server
 * ("ahava_<index>"); every connection prepares all of them when it opens.
 */

ngx_int_t
ngx_ahava_declare(ngx_conf_t *cf, ngx_ahava_stmt_t *stmts, ngx_uint_t n)
{
    ngx_uint_t              i;
    ngx_ahava_stmt_t      **slot;
    ngx_ahava_main_conf_t  *amcf;

    amcf = ngx_http_conf_get_module_main_conf(cf, ngx_ahava_core_module);

    for (i = 0; i < n; i++) {
        if (stmts[i].nparams > NGX_AHAVA_PG_MAX_PARAMS) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "ahava: statement \"%V\" has too many "
                               "parameters", &stmts[i].name);
            return NGX_ERROR;
        }

        slot = ngx_array_push(&amcf->stmts);
        if (slot == NULL) {
            return NGX_ERROR;
        }

        stmts[i].index = amcf->stmts.nelts - 1;
        ngx_sprintf(stmts[i].id, "ahava_%ui%Z", stmts[i].index);
        *slot = &stmts[i];
    }

    return NGX_OK;
}


/* init_main_conf's own message: nginx would name the last directive read */

static char *
ngx_ahava_conf_fail(ngx_conf_t *cf, const char *message)
{
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "ahava: %s", message);
    return NGX_CONF_ERROR;
}


static char *
ngx_ahava_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_ahava_main_conf_t  *amcf = conf;

    ngx_conf_init_uint_value(amcf->pg_pool_size, 8);
    ngx_conf_init_uint_value(amcf->pg_wait_queue, 64);
    ngx_conf_init_msec_value(amcf->pg_wait_timeout, 5000);
    ngx_conf_init_msec_value(amcf->pg_query_timeout, 10000);
    ngx_conf_init_msec_value(amcf->pg_connect_timeout, 5000);
    ngx_conf_init_msec_value(amcf->user_cache_ttl, 60000);
    ngx_conf_init_uint_value(amcf->user_cache_size, 4096);

    if (amcf->jwt_alg == NGX_CONF_UNSET) {
        ngx_str_set(&amcf->jwt_alg_name, "HS256");
        amcf->jwt_alg = ngx_ahava_jwt_parse_alg(&amcf->jwt_alg_name);
    }

    if (amcf->pg_pool_size == 0) {
        return ngx_ahava_conf_fail(cf, "ahava_pg_pool_size must be at least 1");
    }

    if (amcf->pg_conninfo.len
        && ngx_ahava_pg_params(cf, amcf) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    /* HMAC algorithms take the secret, the others a public key */
    if (amcf->jwt_alg_name.data[0] == 'H') {
        amcf->jwt_key = amcf->jwt_secret;

        if (amcf->jwt_public_key.len) {
            return ngx_ahava_conf_fail(cf, "ahava_jwt_public_key does not "
                                       "go with an HS* ahava_jwt_algorithm");
        }

    } else {
        amcf->jwt_key = amcf->jwt_public_key;

        if (amcf->jwt_secret.len) {
            return ngx_ahava_conf_fail(cf, "ahava_jwt_secret does not go "
                                       "with an RS* or ES* "
                                       "ahava_jwt_algorithm; use "
                                       "ahava_jwt_public_key");
        }
    }

    if (amcf->pg_conninfo.len && amcf->jwt_key.len == 0) {
        return ngx_ahava_conf_fail(cf, (amcf->jwt_alg_name.data[0] == 'H')
                   ? "ahava_jwt_secret is required with ahava_database"
                   : "ahava_jwt_public_key is required with ahava_database");
    }

    return NGX_CONF_OK;
}


/*
 * "env:NAME", "file:/path" or the literal value.  A file's trailing
 * newline is dropped.  Runs in the master at configuration time.
 */

ngx_int_t
ngx_ahava_secret_value(ngx_conf_t *cf, ngx_str_t *spec, ngx_str_t *value)
{
    char         *env;
    u_char        name[256];
    ssize_t       n;
    ngx_file_t    file;
    ngx_str_t     path;
    ngx_file_info_t  fi;

    if (spec->len > 4 && ngx_strncmp(spec->data, "env:", 4) == 0) {
        if (spec->len - 4 >= sizeof(name)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "environment variable name too long");
            return NGX_ERROR;
        }

        ngx_cpystrn(name, spec->data + 4, spec->len - 4 + 1);
        env = getenv((char *) name);

        if (env == NULL || *env == '\0') {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "environment variable \"%s\" is not set",
                               name);
            return NGX_ERROR;
        }

        value->len = ngx_strlen(env);
        value->data = ngx_pstrdup(cf->pool, &(ngx_str_t) { value->len,
                                                           (u_char *) env });
        return value->data ? NGX_OK : NGX_ERROR;
    }

    if (spec->len > 5 && ngx_strncmp(spec->data, "file:", 5) == 0) {
        path.len = spec->len - 5;
        path.data = spec->data + 5;

        if (ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) {
            return NGX_ERROR;
        }

        ngx_memzero(&file, sizeof(ngx_file_t));
        file.name = path;
        file.log = cf->log;

        file.fd = ngx_open_file(path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
        if (file.fd == NGX_INVALID_FILE) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                               ngx_open_file_n " \"%V\" failed", &path);
            return NGX_ERROR;
        }

        if (ngx_fd_info(file.fd, &fi) == NGX_FILE_ERROR
            || ngx_file_size(&fi) > 64 * 1024)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "secret file \"%V\" is unreadable or larger "
                               "than 64K", &path);
            ngx_close_file(file.fd);
            return NGX_ERROR;
        }

        value->data = ngx_pnalloc(cf->pool, ngx_file_size(&fi) + 1);
        if (value->data == NULL) {
            ngx_close_file(file.fd);
            return NGX_ERROR;
        }

        n = ngx_read_file(&file, value->data, ngx_file_size(&fi), 0);
        ngx_close_file(file.fd);

        if (n == NGX_ERROR) {
            return NGX_ERROR;
        }

        value->len = n;

        while (value->len
               && (value->data[value->len - 1] == '\n'
                   || value->data[value->len - 1] == '\r'))
        {
            value->len--;
        }

        value->data[value->len] = '\0';

        if (value->len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "secret file \"%V\" is empty", &path);
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    *value = *spec;

    return NGX_OK;
}


static char *
ngx_ahava_database(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_ahava_main_conf_t  *amcf = conf;

    ngx_str_t  *value;

    if (amcf->pg_conninfo.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_ahava_secret_value(cf, &value[1], &amcf->pg_conninfo) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_ahava_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_ahava_main_conf_t  *amcf = conf;

    ngx_str_t  *value;

    if (amcf->redis_url.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_ahava_secret_value(cf, &value[1], &amcf->redis_url) != NGX_OK
        || ngx_ahava_redis_parse_url(cf, amcf) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_ahava_secret(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    ngx_str_t  *field, *value;

    field = (ngx_str_t *) (p + cmd->offset);

    if (field->data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_ahava_secret_value(cf, &value[1], field) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_ahava_jwt_algorithm(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_ahava_main_conf_t  *amcf = conf;

    ngx_str_t  *value;

    if (amcf->jwt_alg != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    amcf->jwt_alg = ngx_ahava_jwt_parse_alg(&value[1]);

    if (amcf->jwt_alg == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "unknown JWT algorithm \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    amcf->jwt_alg_name = value[1];

    return NGX_CONF_OK;
}


static char *
ngx_ahava_encryption_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_ahava_main_conf_t  *amcf = conf;

    u_char      **key;
    ngx_str_t    *value, secret;
    ngx_uint_t    i;

    if (amcf->keys) {
        return "is duplicate";
    }

    amcf->keys = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                  sizeof(u_char *));
    if (amcf->keys == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {
        if (ngx_ahava_secret_value(cf, &value[i], &secret) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        key = ngx_array_push(amcf->keys);
        if (key == NULL) {
            return NGX_CONF_ERROR;
        }

        *key = ngx_pnalloc(cf->pool, NGX_AHAVA_KEY_LEN);
        if (*key == NULL) {
            return NGX_CONF_ERROR;
        }

        if (ngx_ahava_crypto_key_decode(secret.data, secret.len, *key) != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "ahava_encryption_key: key %ui is not the "
                               "base64 of 32 bytes", i);
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


/*
 * A location's routes: the directive's post field is the module's route
 * table (NULL: the JSON error page for error_page).
 */

char *
ngx_ahava_conf_set_routes(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_ahava_loc_conf_t      *alcf;
    ngx_http_core_loc_conf_t  *clcf;

    /* the directive may be any module's: the routes live in the core's */
    alcf = ngx_http_conf_get_module_loc_conf(cf, ngx_ahava_core_module);

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler) {
        return "is duplicate: the location already has a handler";
    }

    if (cmd->post == NULL) {
        clcf->handler = ngx_ahava_error_page_handler;
        return NGX_CONF_OK;
    }

    if (ngx_ahava_metrics_add_routes(cf, cmd->post) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    alcf->routes = cmd->post;
    clcf->handler = ngx_ahava_api_handler;

    return NGX_CONF_OK;
}


/*
 * A location whose content nginx serves (static files) after the check of
 * a route table: the directive's post field.
 */

char *
ngx_ahava_conf_set_access(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_ahava_loc_conf_t  *alcf;

    alcf = ngx_http_conf_get_module_loc_conf(cf, ngx_ahava_core_module);

    if (alcf->access_routes) {
        return "is duplicate";
    }

    if (ngx_ahava_metrics_add_routes(cf, cmd->post) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    alcf->access_routes = cmd->post;

    return NGX_CONF_OK;
}


/*
 * libpq keyword/value arrays from the conninfo or URI.  A host name is
 * resolved here, once, into hostaddr — every address of every host of the
 * list, in order, so "localhost" reaches an IPv4-only server after ::1 is
 * refused, and "host=a,b" fails over: PQconnectPoll would otherwise
 * resolve names blocking inside a worker.  Fallback modes that retry on a second socket without need
 * (sslmode=prefer, gssencmode=prefer) are turned off; the user's own
 * "options" are kept and ours appended (they win): the server ends
 * statements that outlive ahava_pg_query_timeout, and times are UTC.
 */

static ngx_int_t
ngx_ahava_pg_params(ngx_conf_t *cf, ngx_ahava_main_conf_t *amcf)
{
    int                 rc;
    char               *err, *host, *hostaddr, *options, *port, *name, *next;
    u_char             *conninfo, *p, *q, *hosts, *addrs;
    size_t              n, len;
    ngx_uint_t          i, naddrs, has_ssl;
    struct addrinfo     hints, *res, *ai;
    PQconninfoOption   *opts, *o;
    u_char              addr[NGX_SOCKADDR_STRLEN + 1];

    conninfo = ngx_pnalloc(cf->pool, amcf->pg_conninfo.len + 1);
    if (conninfo == NULL) {
        return NGX_ERROR;
    }

    ngx_cpystrn(conninfo, amcf->pg_conninfo.data, amcf->pg_conninfo.len + 1);

    err = NULL;
    opts = PQconninfoParse((char *) conninfo, &err);

    if (opts == NULL) {
        /* libpq's message may quote the conninfo: do not log it */
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "ahava_database: invalid connection string");
        if (err) {
            PQfreemem(err);
        }

        return NGX_ERROR;
    }

    n = 0;
    for (o = opts; o->keyword; o++) {
        n++;
    }

    amcf->pg_keywords = ngx_pcalloc(cf->pool, (n + 8) * sizeof(char *));
    amcf->pg_values = ngx_pcalloc(cf->pool, (n + 8) * sizeof(char *));
    if (amcf->pg_keywords == NULL || amcf->pg_values == NULL) {
        PQconninfoFree(opts);
        return NGX_ERROR;
    }

    i = 0;
    host = NULL;
    hostaddr = NULL;
    port = NULL;
    options = NULL;
    has_ssl = 0;

    for (o = opts; o->keyword; o++) {
        if (o->val == NULL || o->val[0] == '\0'
            || ngx_strcmp(o->keyword, "gssencmode") == 0)
        {
            continue;
        }

        if (ngx_strcmp(o->keyword, "sslmode") == 0) {
            if (ngx_strcmp(o->val, "prefer") == 0
                || ngx_strcmp(o->val, "allow") == 0)
            {
                continue;
            }

            has_ssl = 1;
        }

        len = ngx_strlen(o->val) + 1;

        amcf->pg_keywords[i] = (char *) ngx_pstrdup(cf->pool,
                                   &(ngx_str_t) { ngx_strlen(o->keyword) + 1,
                                                  (u_char *) o->keyword });
        amcf->pg_values[i] = (char *) ngx_pstrdup(cf->pool,
                                   &(ngx_str_t) { len, (u_char *) o->val });
        if (amcf->pg_keywords[i] == NULL || amcf->pg_values[i] == NULL) {
            PQconninfoFree(opts);
            return NGX_ERROR;
        }

        if (ngx_strcmp(o->keyword, "host") == 0) {
            host = amcf->pg_values[i];

        } else if (ngx_strcmp(o->keyword, "hostaddr") == 0) {
            hostaddr = amcf->pg_values[i];

        } else if (ngx_strcmp(o->keyword, "port") == 0) {
            port = amcf->pg_values[i];

        } else if (ngx_strcmp(o->keyword, "options") == 0) {
            /* appended to below, not passed twice */
            options = amcf->pg_values[i];
            continue;
        }

        i++;
    }

    PQconninfoFree(opts);

    /* "h1,h2:5432" gives ",5432": one port, the same for every host */
    if (port && ngx_strchr(port, ',')) {
        name = NULL;

        for (p = (u_char *) port; *p; p = (u_char *) next + (*next != '\0')) {
            next = (char *) p;
            while (*next && *next != ',') {
                next++;
            }

            if (next == (char *) p) {
                continue;
            }

            if (name && ((size_t) (next - (char *) p) != len
                         || ngx_strncmp(name, p, len) != 0))
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "ahava_database: one port for every "
                                   "host");
                return NGX_ERROR;
            }

            if (name == NULL) {
                name = (char *) p;
                len = next - (char *) p;
            }
        }

        if (name) {
            ngx_memmove(port, name, len);
            port[len] = '\0';
        }
    }

    if (host && hostaddr == NULL && host[0] != '/' && host[0] != '@') {

        /* libpq tries host[k] at hostaddr[k]: each name once per address */
        hosts = ngx_pnalloc(cf->pool, 16 * (ngx_strlen(host) + 1));
        addrs = ngx_pnalloc(cf->pool, 16 * (NGX_SOCKADDR_STRLEN + 1));
        if (hosts == NULL || addrs == NULL) {
            return NGX_ERROR;
        }

        p = addrs;
        q = hosts;
        naddrs = 0;

        for (name = host; *name; name = next) {
            next = name;
            while (*next && *next != ',') {
                next++;
            }

            len = next - name;

            if (*next == ',') {
                *next++ = '\0';
            }

            if (len == 0 || name[0] == '/') {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "ahava_database: a list of hosts must "
                                   "name TCP hosts");
                return NGX_ERROR;
            }

            ngx_memzero(&hints, sizeof(struct addrinfo));
            hints.ai_family = AF_UNSPEC;
            hints.ai_socktype = SOCK_STREAM;

            rc = getaddrinfo(name, NULL, &hints, &res);
            if (rc != 0 || res == NULL) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "ahava_database: host \"%s\" not found: "
                                   "%s", name, gai_strerror(rc));
                return NGX_ERROR;
            }

            for (ai = res; ai && naddrs < 16; ai = ai->ai_next) {
                n = ngx_sock_ntop(ai->ai_addr, ai->ai_addrlen, addr,
                                  NGX_SOCKADDR_STRLEN, 0);

                if (naddrs++) {
                    *p++ = ',';
                    *q++ = ',';
                }

                p = ngx_cpymem(p, addr, n);
                q = ngx_cpymem(q, name, len);
            }

            freeaddrinfo(res);
        }

        *p = '\0';
        *q = '\0';

        /* the host keyword's value becomes the list */
        for (n = 0; n < i; n++) {
            if (amcf->pg_values[n] == host) {
                amcf->pg_values[n] = (char *) hosts;
            }
        }

        amcf->pg_keywords[i] = "hostaddr";
        amcf->pg_values[i++] = (char *) addrs;
    }

    if (!has_ssl) {
        amcf->pg_keywords[i] = "sslmode";
        amcf->pg_values[i++] = "disable";
    }

    amcf->pg_keywords[i] = "gssencmode";
    amcf->pg_values[i++] = "disable";

    amcf->pg_keywords[i] = "application_name";
    amcf->pg_values[i++] = "ahava-nginx";

    len = (options ? ngx_strlen(options) + 1 : 0) + 128;

    p = ngx_pnalloc(cf->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    amcf->pg_keywords[i] = "options";
    amcf->pg_values[i++] = (char *) p;

    if (options) {
        p = ngx_sprintf(p, "%s ", options);
    }

    /* the statements' plans do not depend on their values: plan once */
    ngx_sprintf(p, "-c statement_timeout=%M -c TimeZone=UTC -c DateStyle=ISO"
                " -c plan_cache_mode=force_generic_plan%Z",
                amcf->pg_query_timeout);

    amcf->pg_keywords[i] = NULL;
    amcf->pg_values[i] = NULL;

    return NGX_OK;
}


static ngx_int_t
ngx_ahava_init_process(ngx_cycle_t *cycle)
{
    ngx_ahava_main_conf_t  *amcf;

    amcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_ahava_core_module);

    /* not the cache manager and loader, which call this too */
    if (amcf == NULL
        || (ngx_process != NGX_PROCESS_WORKER
            && ngx_process != NGX_PROCESS_SINGLE))
    {
        return NGX_OK;
    }

    if (amcf->pg_keywords) {
        amcf->pg = ngx_ahava_pg_pool_create(cycle, amcf);
        if (amcf->pg == NULL) {
            return NGX_ERROR;
        }

        amcf->users = ngx_ahava_user_cache_create(cycle,
                                                  amcf->user_cache_size);
        if (amcf->users == NULL) {
            return NGX_ERROR;
        }
    }

    if (amcf->redis_host.len) {
        /* the outbox relay resumes as soon as Redis is (back) up */
        amcf->redis = ngx_ahava_redis_create(cycle, amcf,
                                             ngx_ahava_outbox_redis_ready,
                                             NULL);
        if (amcf->redis == NULL) {
            return NGX_ERROR;
        }
    }

    if (amcf->pg) {
        amcf->audit = ngx_ahava_audit_create(cycle, amcf);
        if (amcf->audit == NULL) {
            return NGX_ERROR;
        }
    }

    if (amcf->pg && amcf->redis) {
        if (ngx_ahava_outbox_init(cycle, amcf) != NGX_OK) {
            return NGX_ERROR;
        }

    } else if (amcf->pg && ngx_worker == 0) {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "ahava: no \"ahava_redis\": the events and jobs of "
                      "changes stay in the table ahava_outbox");
    }

    if (ngx_ahava_schema_init(cycle, amcf) != NGX_OK) {
        return NGX_ERROR;
    }

    /* its gauges read the pool and the Redis client made above */
    return ngx_ahava_metrics_init_process(cycle, amcf);
}


static void
ngx_ahava_exit_process(ngx_cycle_t *cycle)
{
    ngx_ahava_main_conf_t  *amcf;

    amcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_ahava_core_module);

    if (amcf == NULL) {
        return;
    }

    ngx_ahava_metrics_exit_process();
    ngx_ahava_outbox_exit();
    ngx_ahava_schema_exit();

    if (amcf->audit) {
        ngx_ahava_audit_destroy(amcf->audit);
        amcf->audit = NULL;
    }

    if (amcf->pg) {
        ngx_ahava_pg_pool_destroy(amcf->pg);
        amcf->pg = NULL;
    }

    if (amcf->redis) {
        ngx_ahava_redis_destroy(amcf->redis);
        amcf->redis = NULL;
    }
}


/*
 * Gives back the nginx side of a connection whose socket a library owns
 * (libpq's PQfinish, hiredis's redisFree close it): events, timers and the
 * connection slot, but not the fd.
 */

void
ngx_ahava_forget_connection(ngx_connection_t *c)
{
    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    if (ngx_del_conn) {
        ngx_del_conn(c, NGX_CLOSE_EVENT);

    } else {
        if (c->read->active) {
            ngx_del_event(c->read, NGX_READ_EVENT, NGX_CLOSE_EVENT);
        }

        if (c->write->active) {
            ngx_del_event(c->write, NGX_WRITE_EVENT, NGX_CLOSE_EVENT);
        }
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    c->fd = (ngx_socket_t) -1;
    ngx_free_connection(c);
}


/*
 * A log line at most once a second per limit; the lines in between are
 * counted and the count goes with the next one, so an outage under load
 * writes a line a second, not one per request.
 */

void
ngx_ahava_log_limited(ngx_ahava_log_limit_t *limit, ngx_uint_t level,
    ngx_log_t *log, const char *fmt, ...)
{
    u_char   msg[NGX_MAX_ERROR_STR], *p;
    va_list  args;

    if (log->log_level < level) {
        return;
    }

    if (limit->last == ngx_time()) {
        limit->suppressed++;
        return;
    }

    va_start(args, fmt);
    p = ngx_vslprintf(msg, msg + sizeof(msg) - 64, fmt, args);
    va_end(args);

    if (limit->suppressed) {
        p = ngx_slprintf(p, msg + sizeof(msg), " (%ui more like it in the "
                         "last second)", limit->suppressed);
    }

    ngx_log_error(level, log, 0, "%*s", p - msg, msg);

    limit->last = ngx_time();
    limit->suppressed = 0;
}
