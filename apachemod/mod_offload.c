/*
 * mod_offload.c - the base server's side of offload for Apache httpd 2.4.
 *
 * For a GET of a big static file that nobody needs to be logged in for, answer with a
 * 307 to one of the offload servers, which fetch the file from here once (their
 * requests carry X-Mod-Offload-Bypass and are served normally) and serve it from their
 * caches. The host is chosen by rendezvous hashing of the path (offload_pick.h), the
 * same choice as the Go package redirect, so each file lives in one offload cache.
 *
 * Directives (server config, virtual host, directory, .htaccess with AllowOverride Options):
 *   OffloadEngine On|Off            default Off
 *   OffloadHost [scheme://]host[:port] [weight]   repeatable; resolved at config time
 *   OffloadDebug On|Off             log each decision at level notice
 *   OffloadMinSize bytes            default 5120; 0 = any size
 *   OffloadExcludeMimeType pattern...   shell wildcards, case-blind
 *   OffloadExcludeUserAgent pattern...
 *   OffloadExcludeAddress pattern|CIDR...
 *   OffloadPick hash|time           default hash; time = the original's rotation
 *   OffloadHostDownFile path        hosts out of rotation, one host[:port] a line
 */
#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "apr_strings.h"
#include "apr_network_io.h"
#include "apr_thread_mutex.h"
#include "apr_file_io.h"
#include "apr_file_info.h"
#include "apr_time.h"

#include <stdlib.h>
#include <time.h>

#include "offload_pick.h"

module AP_MODULE_DECLARE_DATA offload_module;


#define UNSET (-1)
#define DEFAULT_MIN_SIZE 5120

typedef struct {
    const char *scheme;         /* "http" or "https" */
    const char *addr;           /* host[:port] as written: the hash input and the Location */
    int weight;                 /* 1..100 */
    apr_array_header_t *ips;    /* const char *: its resolved addresses */
} offload_host;

typedef struct {
    const char *pattern;        /* wildcard, or the CIDR as written */
    apr_ipsubnet_t *subnet;     /* non-NULL for a CIDR */
} offload_addr;

typedef struct {
    int engine;                 /* UNSET, 0, 1 */
    int debug;
    int pick_time;              /* UNSET, 0 hash, 1 time */
    apr_off_t min_size;         /* UNSET or bytes */
    apr_array_header_t *hosts;  /* offload_host */
    apr_array_header_t *mimes;  /* const char * */
    apr_array_header_t *agents; /* const char * */
    apr_array_header_t *addrs;  /* offload_addr */
    const char *down_file;
} offload_conf;

static void *create_conf(apr_pool_t *p, char *dir)
{
    offload_conf *c = apr_pcalloc(p, sizeof(*c));
    (void)dir;
    c->engine = c->debug = c->pick_time = UNSET;
    c->min_size = UNSET;
    c->hosts = apr_array_make(p, 4, sizeof(offload_host));
    c->mimes = apr_array_make(p, 2, sizeof(const char *));
    c->agents = apr_array_make(p, 2, sizeof(const char *));
    c->addrs = apr_array_make(p, 2, sizeof(offload_addr));
    return c;
}

/* merge_conf: a setting made in the narrower scope wins; the hosts of the narrower scope
 * replace the wider scope's when it names any; exclusions add up. */
static void *merge_conf(apr_pool_t *p, void *basev, void *addv)
{
    offload_conf *base = basev, *add = addv, *c = apr_pcalloc(p, sizeof(*c));
    c->engine = add->engine != UNSET ? add->engine : base->engine;
    c->debug = add->debug != UNSET ? add->debug : base->debug;
    c->pick_time = add->pick_time != UNSET ? add->pick_time : base->pick_time;
    c->min_size = add->min_size != UNSET ? add->min_size : base->min_size;
    c->hosts = add->hosts->nelts > 0 ? add->hosts : base->hosts;
    c->mimes = apr_array_append(p, base->mimes, add->mimes);
    c->agents = apr_array_append(p, base->agents, add->agents);
    c->addrs = apr_array_append(p, base->addrs, add->addrs);
    c->down_file = add->down_file ? add->down_file : base->down_file;
    return c;
}

static const char *set_engine(cmd_parms *cmd, void *dc, int on)
{
    (void)cmd;
    ((offload_conf *)dc)->engine = on;
    return NULL;
}

static const char *set_debug(cmd_parms *cmd, void *dc, int on)
{
    (void)cmd;
    ((offload_conf *)dc)->debug = on;
    return NULL;
}

static const char *set_min_size(cmd_parms *cmd, void *dc, const char *arg)
{
    char *end;
    apr_off_t v;
    if (apr_strtoff(&v, arg, &end, 10) != APR_SUCCESS || *end != '\0' || v < 0) {
        return apr_psprintf(cmd->pool, "OffloadMinSize: '%s' is not a size in bytes", arg);
    }
    ((offload_conf *)dc)->min_size = v;
    return NULL;
}

static const char *set_pick(cmd_parms *cmd, void *dc, const char *arg)
{
    if (strcasecmp(arg, "hash") == 0) {
        ((offload_conf *)dc)->pick_time = 0;
    } else if (strcasecmp(arg, "time") == 0) {
        ((offload_conf *)dc)->pick_time = 1;
    } else {
        return apr_psprintf(cmd->pool, "OffloadPick: '%s': want hash or time", arg);
    }
    return NULL;
}

static const char *set_down_file(cmd_parms *cmd, void *dc, const char *arg)
{
    ((offload_conf *)dc)->down_file = ap_server_root_relative(cmd->pool, arg);
    return NULL;
}

static const char *add_host(cmd_parms *cmd, void *dc, const char *spec, const char *weight)
{
    offload_conf *c = dc;
    offload_host *h;
    const char *sep = strstr(spec, "://");
    char *host = NULL, *scope = NULL;
    apr_port_t port = 0;
    apr_sockaddr_t *sa;
    apr_status_t rv;

    h = apr_array_push(c->hosts);
    h->scheme = "http";
    h->addr = spec;
    h->weight = 1;
    if (sep != NULL) {
        h->scheme = apr_pstrndup(cmd->pool, spec, (apr_size_t)(sep - spec));
        h->addr = sep + 3;
        if (strcasecmp(h->scheme, "http") != 0 && strcasecmp(h->scheme, "https") != 0) {
            return apr_psprintf(cmd->pool, "OffloadHost %s: the scheme must be http or https", spec);
        }
        h->scheme = strcasecmp(h->scheme, "http") == 0 ? "http" : "https";
    }
    if (*h->addr == '\0' || strpbrk(h->addr, "/?#@ \t") != NULL) {
        return apr_psprintf(cmd->pool, "OffloadHost %s: want [scheme://]host[:port]", spec);
    }
    if (weight != NULL) {
        char *end;
        long w = strtol(weight, &end, 10);
        if (*end != '\0' || w < 1 || w > 100) {
            return apr_psprintf(cmd->pool, "OffloadHost %s: the weight '%s' must be a whole number from 1 to 100", spec, weight);
        }
        h->weight = (int)w;
    }
    rv = apr_parse_addr_port(&host, &scope, &port, h->addr, cmd->pool);
    if (rv != APR_SUCCESS || host == NULL) {
        return apr_psprintf(cmd->pool, "OffloadHost %s: want [scheme://]host[:port]", spec);
    }
    /* Resolved now, as the original did, to know the offload servers when they ask. */
    rv = apr_sockaddr_info_get(&sa, host, APR_UNSPEC, port ? port : 80, 0, cmd->pool);
    if (rv != APR_SUCCESS) {
        return apr_psprintf(cmd->pool, "OffloadHost %s: cannot resolve '%s'", spec, host);
    }
    h->ips = apr_array_make(cmd->pool, 2, sizeof(const char *));
    for (; sa != NULL; sa = sa->next) {
        char *ip;
        if (apr_sockaddr_ip_get(&ip, sa) == APR_SUCCESS) {
            *(const char **)apr_array_push(h->ips) = ip;
        }
    }
    return NULL;
}

static const char *add_mime(cmd_parms *cmd, void *dc, const char *arg)
{
    (void)cmd;
    *(const char **)apr_array_push(((offload_conf *)dc)->mimes) = arg;
    return NULL;
}

static const char *add_agent(cmd_parms *cmd, void *dc, const char *arg)
{
    (void)cmd;
    *(const char **)apr_array_push(((offload_conf *)dc)->agents) = arg;
    return NULL;
}

static const char *add_addr(cmd_parms *cmd, void *dc, const char *arg)
{
    offload_addr *a = apr_array_push(((offload_conf *)dc)->addrs);
    const char *slash = strchr(arg, '/');
    a->pattern = arg;
    a->subnet = NULL;
    if (slash != NULL) {
        char *ip = apr_pstrndup(cmd->pool, arg, (apr_size_t)(slash - arg));
        if (apr_ipsubnet_create(&a->subnet, ip, slash + 1, cmd->pool) != APR_SUCCESS) {
            return apr_psprintf(cmd->pool, "OffloadExcludeAddress: '%s' is not an address/prefix", arg);
        }
    }
    return NULL;
}

/* The hosts out of rotation, from OffloadHostDownFile: read again when its mtime changes.
 * One cache per child process, guarded by a mutex for threaded MPMs. */
static apr_thread_mutex_t *down_mutex;
static char *down_path;        /* malloc'd */
static apr_time_t down_mtime;
static char *down_text;        /* malloc'd, NUL-terminated */

static void child_init(apr_pool_t *p, server_rec *s)
{
    (void)s;
    apr_thread_mutex_create(&down_mutex, APR_THREAD_MUTEX_DEFAULT, p);
}

static int line_listed(const char *text, const char *addr)
{
    size_t n = strlen(addr);
    const char *line = text;
    while (line != NULL && *line != '\0') {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        const char *hash = memchr(line, '#', len);
        if (hash != NULL) {
            len = (size_t)(hash - line);
        }
        while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t' || line[len - 1] == '\r')) {
            len--;
        }
        while (len > 0 && (*line == ' ' || *line == '\t')) {
            line++;
            len--;
        }
        if (len == n && strncmp(line, addr, n) == 0) {
            return 1;
        }
        line = end ? end + 1 : NULL;
    }
    return 0;
}

/* mark_down sets down[i] for each host listed in the down file. */
static void mark_down(request_rec *r, const offload_conf *c, int *down)
{
    apr_finfo_t fi;
    const offload_host *hosts = (const offload_host *)c->hosts->elts;
    int i;
    if (c->down_file == NULL || apr_stat(&fi, c->down_file, APR_FINFO_MTIME | APR_FINFO_SIZE, r->pool) != APR_SUCCESS) {
        return; /* no file: every host is up */
    }
    if (down_mutex != NULL) {
        apr_thread_mutex_lock(down_mutex);
    }
    if (down_path == NULL || strcmp(down_path, c->down_file) != 0 || down_mtime != fi.mtime) {
        apr_file_t *f;
        apr_size_t len = fi.size > 65536 ? 65536 : (apr_size_t)fi.size;
        char *text = malloc(len + 1);
        if (text != NULL && apr_file_open(&f, c->down_file, APR_FOPEN_READ, 0, r->pool) == APR_SUCCESS) {
            apr_size_t got = 0;
            apr_file_read_full(f, text, len, &got);
            apr_file_close(f);
            text[got] = '\0';
            free(down_text);
            free(down_path);
            down_text = text;
            down_path = strdup(c->down_file);
            down_mtime = fi.mtime;
        } else {
            free(text);
        }
    }
    if (down_text != NULL && down_path != NULL && strcmp(down_path, c->down_file) == 0) {
        for (i = 0; i < c->hosts->nelts; i++) {
            down[i] = line_listed(down_text, hosts[i].addr);
        }
    }
    if (down_mutex != NULL) {
        apr_thread_mutex_unlock(down_mutex);
    }
}

#define DECLINE(why) do { \
        if (c->debug == 1) { \
            ap_log_rerror(APLOG_MARK, APLOG_NOTICE, 0, r, "offload: not offloading %s: %s", r->uri, why); \
        } \
        return DECLINED; \
    } while (0)

static int offload_handler(request_rec *r)
{
    const offload_conf *c = ap_get_module_config(r->per_dir_config, &offload_module);
    const offload_host *hosts;
    const char **addrs;
    int *weights, *down, i, j, n, pick;
    apr_off_t min_size;
    const char *ua, *path, *location;

    if (c == NULL || c->engine != 1 || c->hosts->nelts == 0) {
        return DECLINED;
    }
    if (r->method_number != M_GET || r->header_only) {
        DECLINE("not a GET");
    }
    /* Static files have no handler of their own: httpd sets the handler to the content
     * type (or default-handler). A script handler (AddHandler) keeps the file here. */
    if (r->handler != NULL && strcmp(r->handler, "default-handler") != 0 &&
        (r->content_type == NULL || strcmp(r->handler, r->content_type) != 0)) {
        DECLINE("not a static file");
    }
    if (r->args != NULL || strchr(r->unparsed_uri, '?') != NULL) {
        DECLINE("query string");
    }
    if (r->user != NULL || apr_table_get(r->headers_in, "Authorization") != NULL) {
        DECLINE("authenticated");
    }
    if (r->finfo.filetype != APR_REG) {
        DECLINE("not a regular file");
    }
    if (r->path_info != NULL && *r->path_info != '\0') {
        DECLINE("path info");
    }
    min_size = c->min_size == UNSET ? DEFAULT_MIN_SIZE : c->min_size;
    if (r->finfo.size < min_size) {
        DECLINE("smaller than OffloadMinSize");
    }
    if (apr_table_get(r->headers_in, "X-Mod-Offload-Bypass") != NULL) {
        DECLINE("X-Mod-Offload-Bypass");
    }
    hosts = (const offload_host *)c->hosts->elts;
    n = c->hosts->nelts;
    for (i = 0; i < n; i++) {
        const char **ips = (const char **)hosts[i].ips->elts;
        for (j = 0; j < hosts[i].ips->nelts; j++) {
            if (strcmp(ips[j], r->useragent_ip) == 0) {
                DECLINE("request from an offload server");
            }
        }
    }
    for (i = 0; i < c->addrs->nelts; i++) {
        const offload_addr *a = &((const offload_addr *)c->addrs->elts)[i];
        if (a->subnet != NULL ? apr_ipsubnet_test(a->subnet, r->useragent_addr)
                              : ap_strcasecmp_match(r->useragent_ip, a->pattern) == 0) {
            DECLINE("excluded address");
        }
    }
    ua = apr_table_get(r->headers_in, "User-Agent");
    for (i = 0; i < c->agents->nelts; i++) {
        if (ap_strcasecmp_match(ua ? ua : "", ((const char **)c->agents->elts)[i]) == 0) {
            DECLINE("excluded User-Agent");
        }
    }
    for (i = 0; i < c->mimes->nelts; i++) {
        const char *type = r->content_type ? r->content_type : "application/octet-stream";
        if (ap_strcasecmp_match(type, ((const char **)c->mimes->elts)[i]) == 0) {
            DECLINE("excluded MIME type");
        }
    }

    addrs = apr_palloc(r->pool, sizeof(*addrs) * (apr_size_t)n);
    weights = apr_palloc(r->pool, sizeof(*weights) * (apr_size_t)n);
    down = apr_pcalloc(r->pool, sizeof(*down) * (apr_size_t)n);
    for (i = 0; i < n; i++) {
        addrs[i] = hosts[i].addr;
        weights[i] = hosts[i].weight;
    }
    mark_down(r, c, down);
    /* The raw path, as package redirect hashes it: the request target before any '?'. */
    path = r->parsed_uri.path ? r->parsed_uri.path : r->uri;
    pick = c->pick_time == 1 ? offload_pick_time(down, n, (long long)time(NULL))
                             : offload_pick_hash(addrs, weights, down, n, path);
    if (pick < 0) {
        DECLINE("every offload host is down");
    }
    location = apr_pstrcat(r->pool, hosts[pick].scheme, "://", hosts[pick].addr, r->unparsed_uri, NULL);
    if (c->debug == 1) {
        ap_log_rerror(APLOG_MARK, APLOG_NOTICE, 0, r, "offload: %s -> %s", r->uri, location);
    }
    apr_table_setn(r->headers_out, "Location", location);
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    return HTTP_TEMPORARY_REDIRECT;
}

static const command_rec offload_cmds[] = {
    AP_INIT_FLAG("OffloadEngine", set_engine, NULL, RSRC_CONF | ACCESS_CONF | OR_OPTIONS,
                 "On to redirect big static files to the offload hosts"),
    AP_INIT_FLAG("OffloadDebug", set_debug, NULL, RSRC_CONF | ACCESS_CONF | OR_OPTIONS,
                 "On to log every decision at level notice"),
    AP_INIT_TAKE12("OffloadHost", add_host, NULL, RSRC_CONF | ACCESS_CONF | OR_OPTIONS,
                   "an offload host: [scheme://]host[:port] [weight]"),
    AP_INIT_TAKE1("OffloadMinSize", set_min_size, NULL, RSRC_CONF | ACCESS_CONF | OR_OPTIONS,
                  "smallest file to offload, in bytes (default 5120)"),
    AP_INIT_TAKE1("OffloadPick", set_pick, NULL, RSRC_CONF | ACCESS_CONF | OR_OPTIONS,
                  "hash (default: each file on one host) or time (the original's rotation)"),
    AP_INIT_TAKE1("OffloadHostDownFile", set_down_file, NULL, RSRC_CONF | ACCESS_CONF | OR_OPTIONS,
                  "file listing hosts out of rotation, one host[:port] a line"),
    AP_INIT_ITERATE("OffloadExcludeMimeType", add_mime, NULL, RSRC_CONF | ACCESS_CONF | OR_OPTIONS,
                    "MIME types never offloaded (shell wildcards)"),
    AP_INIT_ITERATE("OffloadExcludeUserAgent", add_agent, NULL, RSRC_CONF | ACCESS_CONF | OR_OPTIONS,
                    "User-Agents never offloaded (shell wildcards)"),
    AP_INIT_ITERATE("OffloadExcludeAddress", add_addr, NULL, RSRC_CONF | ACCESS_CONF | OR_OPTIONS,
                    "client addresses never offloaded (shell wildcards or CIDR)"),
    {NULL}
};

static void register_hooks(apr_pool_t *p)
{
    (void)p;
    ap_hook_child_init(child_init, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_handler(offload_handler, NULL, NULL, APR_HOOK_FIRST);
}

AP_DECLARE_MODULE(offload) = {
    STANDARD20_MODULE_STUFF,
    create_conf,
    merge_conf,
    NULL,
    NULL,
    offload_cmds,
    register_hooks
#if defined(AP_MODULE_FLAG_ALWAYS_MERGE)
    , AP_MODULE_FLAG_NONE
#endif
};
