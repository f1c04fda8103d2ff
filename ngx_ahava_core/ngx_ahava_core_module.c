
/*
 * ngx_ahava_core_module: the directives of the shared dependencies and the
 * per-worker lifecycle of the PostgreSQL pool, the Redis client and the
 * user cache.  Secrets are read at configuration time from "env:NAME",
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
      ngx_ahava_conf_set_handler,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      (void *) ngx_ahava_health_handler },

    { ngx_string("ahava_error_page"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_ahava_conf_set_handler,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      (void *) ngx_ahava_error_page_handler },

      ngx_null_command
};


static ngx_http_module_t  ngx_ahava_core_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    ngx_ahava_create_main_conf,            /* create main configuration */
    ngx_ahava_init_main_conf,              /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
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

    return amcf;
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


/* A location's content handler: the directive's post field */

char *
ngx_ahava_conf_set_handler(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler) {
        return "is duplicate: the location already has a handler";
    }

    clcf->handler = (ngx_http_handler_pt) cmd->post;

    return NGX_CONF_OK;
}


/*
 * libpq keyword/value arrays from the conninfo or URI.  A host name is
 * resolved here, once, into hostaddr: PQconnectPoll would otherwise resolve
 * it blocking inside a worker.  Fallback modes that open a second socket
 * (sslmode=prefer, gssencmode=prefer) are turned off, and the server ends
 * statements that outlive ahava_pg_query_timeout.
 */

static ngx_int_t
ngx_ahava_pg_params(ngx_conf_t *cf, ngx_ahava_main_conf_t *amcf)
{
    int                 rc;
    char               *err, *host, *hostaddr, addr[NGX_SOCKADDR_STRLEN + 1];
    u_char             *conninfo, *opt;
    ngx_uint_t          n, i, has_ssl;
    struct addrinfo     hints, *res;
    PQconninfoOption   *opts, *o;

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
    has_ssl = 0;

    for (o = opts; o->keyword; o++) {
        if (o->val == NULL || o->val[0] == '\0') {
            continue;
        }

        if (ngx_strcmp(o->keyword, "options") == 0
            || ngx_strcmp(o->keyword, "gssencmode") == 0
            || ngx_strcmp(o->keyword, "target_session_attrs") == 0)
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

        amcf->pg_keywords[i] = ngx_pnalloc(cf->pool,
                                           ngx_strlen(o->keyword) + 1);
        amcf->pg_values[i] = ngx_pnalloc(cf->pool, ngx_strlen(o->val) + 1);
        if (amcf->pg_keywords[i] == NULL || amcf->pg_values[i] == NULL) {
            PQconninfoFree(opts);
            return NGX_ERROR;
        }

        ngx_cpystrn((u_char *) amcf->pg_keywords[i], (u_char *) o->keyword,
                    ngx_strlen(o->keyword) + 1);
        ngx_cpystrn((u_char *) amcf->pg_values[i], (u_char *) o->val,
                    ngx_strlen(o->val) + 1);

        if (ngx_strcmp(o->keyword, "host") == 0) {
            host = amcf->pg_values[i];
        }

        if (ngx_strcmp(o->keyword, "hostaddr") == 0) {
            hostaddr = amcf->pg_values[i];
        }

        i++;
    }

    PQconninfoFree(opts);

    if (host && ngx_strchr(host, ',')) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "ahava_database: a single host is supported");
        return NGX_ERROR;
    }

    if (host && hostaddr == NULL && host[0] != '/' && host[0] != '@') {
        ngx_memzero(&hints, sizeof(struct addrinfo));
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;

        rc = getaddrinfo(host, NULL, &hints, &res);
        if (rc != 0 || res == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "ahava_database: host \"%s\" not found: %s",
                               host, gai_strerror(rc));
            return NGX_ERROR;
        }

        n = ngx_sock_ntop(res->ai_addr, res->ai_addrlen, (u_char *) addr,
                          NGX_SOCKADDR_STRLEN, 0);
        addr[n] = '\0';
        freeaddrinfo(res);

        amcf->pg_keywords[i] = "hostaddr";
        amcf->pg_values[i] = (char *) ngx_pstrdup(cf->pool,
                                 &(ngx_str_t) { n + 1, (u_char *) addr });
        if (amcf->pg_values[i] == NULL) {
            return NGX_ERROR;
        }

        i++;
    }

    if (!has_ssl) {
        amcf->pg_keywords[i] = "sslmode";
        amcf->pg_values[i++] = "disable";
    }

    amcf->pg_keywords[i] = "gssencmode";
    amcf->pg_values[i++] = "disable";

    amcf->pg_keywords[i] = "application_name";
    amcf->pg_values[i++] = "ahava-nginx";

    opt = ngx_pnalloc(cf->pool, 64);
    if (opt == NULL) {
        return NGX_ERROR;
    }

    ngx_snprintf(opt, 64, "-c statement_timeout=%M -c TimeZone=UTC%Z",
                 amcf->pg_query_timeout);

    amcf->pg_keywords[i] = "options";
    amcf->pg_values[i++] = (char *) opt;

    amcf->pg_keywords[i] = NULL;
    amcf->pg_values[i] = NULL;

    return NGX_OK;
}


static ngx_int_t
ngx_ahava_init_process(ngx_cycle_t *cycle)
{
    ngx_ahava_main_conf_t  *amcf;

    amcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_ahava_core_module);

    if (amcf == NULL) {
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
        amcf->redis = ngx_ahava_redis_create(cycle, amcf);
        if (amcf->redis == NULL) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void
ngx_ahava_exit_process(ngx_cycle_t *cycle)
{
    ngx_ahava_main_conf_t  *amcf;

    amcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_ahava_core_module);

    if (amcf == NULL) {
        return;
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


ngx_ahava_ctx_t *
ngx_ahava_get_ctx(ngx_http_request_t *r)
{
    ngx_ahava_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_ahava_core_module);

    if (ctx == NULL) {
        ctx = ngx_pcalloc(r->pool, sizeof(ngx_ahava_ctx_t));
        if (ctx == NULL) {
            return NULL;
        }

        ngx_http_set_ctx(r, ctx, ngx_ahava_core_module);
    }

    return ctx;
}


/*
 * Runs the first step of a content handler.  A step that went asynchronous
 * keeps the request alive (count++) until its completion finalizes it.
 */

ngx_int_t
ngx_ahava_content(ngx_http_request_t *r, ngx_ahava_step_pt step)
{
    ngx_int_t  rc;

    rc = step(r);

    if (rc == NGX_AGAIN) {
        r->main->count++;
        return NGX_DONE;
    }

    return rc;
}


/* The caller's id as a NUL-terminated query parameter */

char *
ngx_ahava_user_param(ngx_http_request_t *r)
{
    u_char           *p;
    ngx_ahava_ctx_t  *ctx;

    ctx = ngx_ahava_get_ctx(r);

    p = ngx_pnalloc(r->pool, ctx->user.id_len + 1);
    if (p == NULL) {
        return NULL;
    }

    ngx_memcpy(p, ctx->user.id, ctx->user.id_len);
    p[ctx->user.id_len] = '\0';

    return (char *) p;
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
