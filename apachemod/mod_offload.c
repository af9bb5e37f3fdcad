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
 *   OffloadHost [scheme://]host[:port] [weight]   repeatable; bound to its virtual host
 *   OffloadDebug On|Off             log each decision at level notice
 *   OffloadMinSize bytes            default 5120; 0 = any size
 *   OffloadExcludeMimeType pattern...   shell wildcards, case-blind
 *   OffloadExcludeUserAgent pattern...
 *   OffloadExcludeAddress address|pattern|CIDR...
 *   OffloadPick hash|time           default hash; time = the original's rotation
 *   OffloadHostDownFile path        hosts out of rotation, one host[:port] a line
 *
 * The contract with the offload servers, as this side keeps it:
 *   - An offload host serves one base (its --base), so an OffloadHost belongs to the site
 *     (same_site) whose configuration names it: other virtual hosts that inherit it are
 *     never redirected to it, and a request from that host (X-Mod-Offload-Bypass, from
 *     its address) that lands on another site is refused with 421, so a wrong --base
 *     shows up as an error instead of another site's file.
 *   - A request from an offload host may say for whom it asks in X-Forwarded-For (the
 *     last address): access rules (Require ip) then see that client, so a file the base
 *     refuses to a client is refused to it through the offload host as well.
 */
#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "apr_strings.h"
#include "apr_hash.h"
#include "apr_lib.h"
#include "apr_network_io.h"
#include "apr_thread_mutex.h"
#include "apr_file_io.h"
#include "apr_file_info.h"
#include "apr_time.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <time.h>

#include "offload_pick.h"

module AP_MODULE_DECLARE_DATA offload_module;


#define UNSET (-1)
#define DEFAULT_MIN_SIZE 5120
#define RESOLVE_RETRY apr_time_from_sec(60)

typedef struct {
    const char *scheme;         /* "http" or "https" */
    const char *addr;           /* host[:port] as written: the hash input and the Location */
    const char *name;           /* the host part of addr, without brackets */
    apr_port_t port;            /* the port of addr, 0 when none is written */
    int weight;                 /* 1..100 */
    server_rec *server;         /* the (virtual) server whose configuration names it */
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

/* Per process state: resolved host names and read host-down files, shared by the threads
 * of a child (guarded by state_mutex, made in child_init; the parent has one thread). */
typedef struct resolved {
    struct resolved *next;
    char *name;                 /* malloc'd */
    char **ips;                 /* malloc'd, nips addresses */
    int nips;
    int ok;                     /* resolved: kept for the life of the process */
    int busy;                   /* a thread is looking it up now */
    apr_time_t next_try;        /* when a name that failed is tried again */
} resolved;

typedef struct {
    char *scheme;               /* malloc'd; NULL when the line has none */
    char *host;                 /* malloc'd */
    apr_port_t port;            /* 0 when the line has none */
} down_entry;

typedef struct down_file {
    struct down_file *next;
    char *path;                 /* malloc'd */
    apr_time_t mtime;           /* of the list; with size, "changed" means either differs */
    apr_off_t size;
    int read;                   /* the list below is the file's (else: every host up) */
    down_entry *entries;        /* malloc'd, nentries of them */
    int nentries;
    apr_status_t failed;        /* the last failure to read it, logged once */
    apr_time_t failed_mtime;
} down_file;

static apr_thread_mutex_t *state_mutex;
static resolved *resolved_names;
static down_file *down_files;
/* Every OffloadHost of the server configuration (offload_host *), rebuilt on each read of
 * the configuration: the addresses that requests from offload hosts come from. */
static apr_array_header_t *known_hosts;

static void lock(void)
{
    if (state_mutex != NULL) {
        apr_thread_mutex_lock(state_mutex);
    }
}

static void unlock(void)
{
    if (state_mutex != NULL) {
        apr_thread_mutex_unlock(state_mutex);
    }
}

static apr_port_t host_port(const offload_host *h)
{
    return h->port ? h->port : (strcmp(h->scheme, "https") == 0 ? 443 : 80);
}

static const char *server_desc(apr_pool_t *p, const server_rec *s)
{
    if (!s->is_virtual) {
        return "the main server config";
    }
    return apr_psprintf(p, "<VirtualHost> %s (%s:%u)", s->server_hostname ? s->server_hostname : "?",
                        s->defn_name ? s->defn_name : "?", s->defn_line_number);
}

/* same_site reports whether two servers serve one site: the same server, or virtual hosts
 * with one ServerName and one DocumentRoot (a site's http and https virtual hosts, or a
 * virtual host without a name of its own and the main server). An offload server fetches
 * from one site, so an OffloadHost may serve all of its virtual hosts and no other. */
static int same_site(server_rec *a, server_rec *b)
{
    const core_server_config *ca, *cb;
    if (a == b) {
        return 1;
    }
    if (a->server_hostname == NULL || b->server_hostname == NULL || strcasecmp(a->server_hostname, b->server_hostname) != 0) {
        return 0;
    }
    ca = ap_get_core_module_config(a->module_config);
    cb = ap_get_core_module_config(b->module_config);
    return ca->ap_document_root != NULL && cb->ap_document_root != NULL &&
           strcmp(ca->ap_document_root, cb->ap_document_root) == 0;
}

/* find_name returns the entry for a host name, making it; called locked. */
static resolved *find_name(const char *name)
{
    resolved *e;
    for (e = resolved_names; e != NULL; e = e->next) {
        if (strcasecmp(e->name, name) == 0) {
            return e;
        }
    }
    e = calloc(1, sizeof(*e));
    if (e == NULL || (e->name = strdup(name)) == NULL) {
        free(e);
        return NULL;
    }
    e->next = resolved_names;
    resolved_names = e;
    return e;
}

/* try_resolve looks a name up when it has not resolved yet and its time to try again
 * has come. Called locked; the lookup itself runs unlocked, so a DNS outage holds up
 * one request a minute, not every request. */
static apr_status_t try_resolve(resolved *e, apr_pool_t *p)
{
    apr_sockaddr_t *sa, *it;
    apr_status_t rv;
    char **ips;
    int n = 0;
    if (e->ok) {
        return APR_SUCCESS;
    }
    if (e->busy || apr_time_now() < e->next_try) {
        return APR_EAGAIN;
    }
    e->busy = 1;
    unlock();
    rv = apr_sockaddr_info_get(&sa, e->name, APR_UNSPEC, 80, 0, p);
    lock();
    e->busy = 0;
    if (rv != APR_SUCCESS) {
        e->next_try = apr_time_now() + RESOLVE_RETRY;
        return rv;
    }
    for (it = sa; it != NULL; it = it->next) {
        n++;
    }
    ips = calloc((size_t)n, sizeof(*ips));
    if (ips == NULL) {
        return APR_ENOMEM;
    }
    for (n = 0, it = sa; it != NULL; it = it->next) {
        char *ip;
        if (apr_sockaddr_ip_get(&ip, it) == APR_SUCCESS && (ips[n] = strdup(ip)) != NULL) {
            n++;
        }
    }
    e->ips = ips;
    e->nips = n;
    e->ok = 1;
    return APR_SUCCESS;
}

/* same_ip compares two textual addresses, an IPv4-mapped IPv6 one equal to its IPv4. */
static int same_ip(const char *a, const char *b)
{
    if (strncasecmp(a, "::ffff:", 7) == 0 && strchr(a, '.') != NULL) {
        a += 7;
    }
    if (strncasecmp(b, "::ffff:", 7) == 0 && strchr(b, '.') != NULL) {
        b += 7;
    }
    return strcasecmp(a, b) == 0;
}

/* host_has_ip reports whether the offload host's name resolves to ip. */
static int host_has_ip(const offload_host *h, const char *ip, apr_pool_t *p)
{
    resolved *e;
    int i, found = 0;
    if (ip == NULL) {
        return 0;
    }
    lock();
    e = find_name(h->name);
    if (e != NULL && try_resolve(e, p) == APR_SUCCESS) {
        for (i = 0; i < e->nips && !found; i++) {
            found = same_ip(e->ips[i], ip);
        }
    }
    unlock();
    return found;
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

/* parse_spec reads "[scheme://]host[:port][/]" (what OffloadHost takes, and what an admin
 * copies from it into the host-down file). *scheme is NULL when none is written. */
static int parse_spec(apr_pool_t *p, const char *spec, const char **scheme, char **host, apr_port_t *port)
{
    char *s = apr_pstrdup(p, spec), *sep = strstr(s, "://"), *scope = NULL;
    size_t n;
    *scheme = NULL;
    if (sep != NULL) {
        *sep = '\0';
        *scheme = s;
        s = sep + 3;
    }
    n = strlen(s);
    if (n > 0 && s[n - 1] == '/') {
        s[n - 1] = '\0';
    }
    if (*s == '\0' || strpbrk(s, "/?#@ \t") != NULL) {
        return 0;
    }
    *host = NULL;
    *port = 0;
    return apr_parse_addr_port(host, &scope, port, s, p) == APR_SUCCESS && *host != NULL && scope == NULL;
}

static const char *add_host(cmd_parms *cmd, void *dc, const char *spec, const char *weight)
{
    offload_conf *c = dc;
    offload_host h, *hs;
    const char *scheme;
    char *name;
    int i;

    memset(&h, 0, sizeof(h));
    if (!parse_spec(cmd->pool, spec, &scheme, &name, &h.port) || spec[strlen(spec) - 1] == '/') {
        return apr_psprintf(cmd->pool, "OffloadHost %s: want [scheme://]host[:port]", spec);
    }
    if (scheme != NULL && strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0) {
        return apr_psprintf(cmd->pool, "OffloadHost %s: the scheme must be http or https", spec);
    }
    h.scheme = scheme != NULL && strcasecmp(scheme, "https") == 0 ? "https" : "http";
    h.addr = scheme != NULL ? strstr(spec, "://") + 3 : spec;
    h.name = name;
    h.weight = 1;
    h.server = cmd->server;
    if (weight != NULL) {
        char *end;
        long w = strtol(weight, &end, 10);
        if (*end != '\0' || w < 1 || w > 100) {
            return apr_psprintf(cmd->pool, "OffloadHost %s: the weight '%s' must be a whole number from 1 to 100", spec, weight);
        }
        h.weight = (int)w;
    }
    hs = (offload_host *)c->hosts->elts;
    for (i = 0; i < c->hosts->nelts; i++) {
        if (strcmp(hs[i].scheme, h.scheme) == 0 && strcasecmp(hs[i].name, h.name) == 0 && host_port(&hs[i]) == host_port(&h)) {
            return apr_psprintf(cmd->pool, "OffloadHost %s: listed twice in the same scope (as %s://%s)", spec, hs[i].scheme, hs[i].addr);
        }
    }
    /* No lookup here: a name that does not resolve at boot must not keep Apache down.
     * Names are looked up when the configuration is checked (a warning if they fail) and
     * again when a request needs their addresses. */
    *(offload_host *)apr_array_push(c->hosts) = h;
    return NULL;
}

static const char *add_mime(cmd_parms *cmd, void *dc, const char *arg)
{
    (void)cmd;
    *(const char **)apr_array_push(((offload_conf *)dc)->mimes) = arg;
    return NULL;
}

/* add_agents takes the raw arguments to see the quoting: a User-Agent written unquoted
 * would become several patterns, each of which matches nothing. */
static const char *add_agents(cmd_parms *cmd, void *dc, const char *args)
{
    offload_conf *c = dc;
    apr_array_header_t *words = apr_array_make(cmd->temp_pool, 4, sizeof(const char *));
    const char *suspect = NULL;
    int i;
    while (*args != '\0') {
        int quoted;
        const char *w;
        while (apr_isspace(*args)) {
            args++;
        }
        if (*args == '\0') {
            break;
        }
        quoted = *args == '"' || *args == '\'';
        w = ap_getword_conf(cmd->pool, &args);
        if (!quoted && suspect == NULL && (strpbrk(w, "*?") == NULL || strpbrk(w, "();,") != NULL)) {
            suspect = w;
        }
        *(const char **)apr_array_push(words) = w;
    }
    if (words->nelts == 0) {
        return "OffloadExcludeUserAgent: give at least one pattern";
    }
    if (words->nelts > 1 && suspect != NULL) {
        return apr_psprintf(cmd->pool,
                            "OffloadExcludeUserAgent: '%s' looks like a piece of one User-Agent split at its spaces; "
                            "quote a pattern that has spaces (\"*Mozilla/5.0 (compatible; Foo*\"), and give each of "
                            "several patterns a * or ?", suspect);
    }
    for (i = 0; i < words->nelts; i++) {
        *(const char **)apr_array_push(c->agents) = ((const char **)words->elts)[i];
    }
    return NULL;
}

static int is_ip(const char *s)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* check_addr says what is wrong with an OffloadExcludeAddress value, or NULL. */
static const char *check_addr(apr_pool_t *p, const char *arg)
{
    const char *slash = strchr(arg, '/');
    if (strchr(arg, '-') != NULL) {
        return apr_psprintf(p, "OffloadExcludeAddress: '%s': ranges are not supported; write a CIDR (10.0.0.0/24) or a wildcard (10.0.0.*)", arg);
    }
    if (slash != NULL) {
        char *ip = apr_pstrndup(p, arg, (apr_size_t)(slash - arg)), *end;
        long bits = strtol(slash + 1, &end, 10);
        int max = strchr(ip, ':') != NULL ? 128 : 32;
        if (!is_ip(ip) || slash[1] == '\0' || *end != '\0' || bits < 0 || bits > max) {
            return apr_psprintf(p, "OffloadExcludeAddress: '%s' is not an address/prefix", arg);
        }
        return NULL;
    }
    if (strpbrk(arg, "*?") != NULL) {
        const char *s;
        int parts = 1;
        for (s = arg; *s != '\0'; s++) {
            if (!apr_isxdigit(*s) && strchr(".:*?", *s) == NULL) {
                return apr_psprintf(p, "OffloadExcludeAddress: '%s' is not an address pattern (digits, '.', ':', '*', '?')", arg);
            }
        }
        if (strchr(arg, '.') != NULL && strchr(arg, ':') == NULL) {
            const char *part = arg;
            for (s = arg;; s++) {
                if (*s == '.' || *s == '\0') {
                    size_t n = (size_t)(s - part);
                    char *num = apr_pstrndup(p, part, n);
                    if (strpbrk(num, "*?") == NULL &&
                        (n == 0 || n > 3 || strspn(num, "0123456789") != n || atoi(num) > 255)) {
                        return apr_psprintf(p, "OffloadExcludeAddress: '%s': '%s' is not a number from 0 to 255", arg, num);
                    }
                    if (*s == '\0') {
                        break;
                    }
                    parts++;
                    part = s + 1;
                }
            }
            if (parts > 4) {
                return apr_psprintf(p, "OffloadExcludeAddress: '%s' has more than four parts", arg);
            }
        }
        return NULL;
    }
    if (!is_ip(arg)) {
        return apr_psprintf(p, "OffloadExcludeAddress: '%s' is not an IP address, a wildcard (10.1.*) or a CIDR (10.0.0.0/8)", arg);
    }
    return NULL;
}

static const char *add_addr(cmd_parms *cmd, void *dc, const char *arg)
{
    offload_addr *a;
    const char *slash = strchr(arg, '/');
    const char *err = check_addr(cmd->pool, arg);
    if (err != NULL) {
        return err;
    }
    a = apr_array_push(((offload_conf *)dc)->addrs);
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

/* collect adds the hosts of one configuration scope to known_hosts, once each. */
static void collect(const offload_conf *c, apr_hash_t *seen)
{
    int i;
    if (c == NULL) {
        return;
    }
    for (i = 0; i < c->hosts->nelts; i++) {
        offload_host *h = &((offload_host *)c->hosts->elts)[i];
        if (apr_hash_get(seen, &h, sizeof(h)) == NULL) {
            offload_host **key = apr_palloc(apr_hash_pool_get(seen), sizeof(*key));
            *key = h;
            *(offload_host **)apr_array_push(known_hosts) = h;
            apr_hash_set(seen, key, sizeof(*key), h);
        }
    }
}

/* warn_no_hosts warns about a scope that turns the engine on with no host to send to. */
static void warn_no_hosts(server_rec *s, const offload_conf *c, const offload_conf *server_c, const char *where)
{
    if (c != NULL && c->engine == 1 && c->hosts->nelts == 0 && (server_c == NULL || server_c->hosts->nelts == 0)) {
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s,
                     "offload: OffloadEngine On in %s without any OffloadHost: nothing is offloaded there", where);
    }
}

/* check_config runs at every read of the configuration, apachectl configtest included:
 * it refuses an OffloadHost shared by two virtual hosts and warns about what would
 * otherwise fail in silence. */
static int check_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *main_s)
{
    apr_hash_t *seen = apr_hash_make(ptemp), *sections = apr_hash_make(ptemp);
    server_rec *s;
    int i, j, failed = 0;
    (void)plog;

    known_hosts = apr_array_make(pconf, 8, sizeof(offload_host *));
    for (s = main_s; s != NULL; s = s->next) {
        const offload_conf *sc = ap_get_module_config(s->lookup_defaults, &offload_module);
        core_server_config *core = ap_get_core_module_config(s->module_config);
        apr_array_header_t *lists[2];
        int k;
        collect(sc, seen);
        warn_no_hosts(s, sc, NULL, server_desc(ptemp, s));
        if (s != main_s && sc != NULL && sc->engine == 1 && sc->hosts->nelts > 0 &&
            !same_site(((offload_host *)sc->hosts->elts)[0].server, s)) {
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s,
                         "offload: %s inherits OffloadHost %s from %s and is not offloaded: an offload server "
                         "fetches from one site, so put the Offload directives inside the <VirtualHost> of the "
                         "site its --base names", server_desc(ptemp, s), ((offload_host *)sc->hosts->elts)[0].addr,
                         server_desc(ptemp, ((offload_host *)sc->hosts->elts)[0].server));
        }
        lists[0] = core->sec_dir;
        lists[1] = core->sec_url;
        for (k = 0; k < 2; k++) {
            for (i = 0; lists[k] != NULL && i < lists[k]->nelts; i++) {
                ap_conf_vector_t *v = ((ap_conf_vector_t **)lists[k]->elts)[i];
                const offload_conf *dc = ap_get_module_config(v, &offload_module);
                core_dir_config *cd = ap_get_core_module_config(v);
                collect(dc, seen);
                if (apr_hash_get(sections, &v, sizeof(v)) == NULL) {
                    ap_conf_vector_t **key = apr_palloc(ptemp, sizeof(*key));
                    *key = v;
                    apr_hash_set(sections, key, sizeof(*key), v);
                    warn_no_hosts(s, dc, sc, apr_psprintf(ptemp, "<%s %s> of %s", k == 0 ? "Directory" : "Location",
                                                         cd && cd->d ? cd->d : "?", server_desc(ptemp, s)));
                }
            }
        }
    }
    for (i = 0; i < known_hosts->nelts; i++) {
        const offload_host *a = ((offload_host **)known_hosts->elts)[i];
        resolved *e;
        apr_status_t rv = APR_SUCCESS;
        for (j = 0; j < i; j++) {
            const offload_host *b = ((offload_host **)known_hosts->elts)[j];
            if (!same_site(a->server, b->server) && strcmp(a->scheme, b->scheme) == 0 &&
                strcasecmp(a->name, b->name) == 0 && host_port(a) == host_port(b)) {
                ap_log_error(APLOG_MARK, APLOG_ERR, 0, main_s,
                             "offload: OffloadHost %s is named in both %s and %s: an offload server fetches from "
                             "one base (its --base), so visitors of one would get the other's files; give each "
                             "virtual host offload hosts of its own", a->addr, server_desc(ptemp, b->server),
                             server_desc(ptemp, a->server));
                failed = 1;
            }
        }
        /* httpd reads its configuration twice at start: a name that failed a moment ago
         * is not looked up again (a DNS server that does not answer costs seconds). */
        lock();
        e = find_name(a->name);
        if (e != NULL) {
            rv = try_resolve(e, ptemp);
        }
        unlock();
        if (rv != APR_SUCCESS) {
            ap_log_error(APLOG_MARK, APLOG_WARNING, rv, main_s,
                         "offload: OffloadHost %s: cannot resolve '%s' now; Apache starts anyway, redirects to it "
                         "go on, and the name is looked up again every minute (until then its own requests are "
                         "not recognised by address)", a->addr, a->name);
        }
    }
    return failed ? HTTP_INTERNAL_SERVER_ERROR : OK;
}

static void child_init(apr_pool_t *p, server_rec *s)
{
    (void)s;
    apr_thread_mutex_create(&state_mutex, APR_THREAD_MUTEX_DEFAULT, p);
}

/* entry_names reports whether a line of the host-down file names h: the same host name
 * and, when the line has them, the same scheme and port. */
static int entry_names(const down_entry *e, const offload_host *h)
{
    return strcasecmp(e->host, h->name) == 0 && (e->scheme == NULL || strcasecmp(e->scheme, h->scheme) == 0) &&
           (e->port == 0 || e->port == host_port(h));
}

/* next_line returns the next non-empty line of text (comment, blanks and weight cut off)
 * as a pool string, advancing *text; NULL at the end. */
static char *next_line(apr_pool_t *p, const char **text)
{
    while (**text != '\0') {
        const char *line = *text, *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line), n = 0;
        *text = end ? end + 1 : line + len;
        while (n < len && line[n] != '#') {
            n++;
        }
        while (n > 0 && apr_isspace(*line)) {
            line++;
            n--;
        }
        len = 0;
        while (len < n && !apr_isspace(line[len])) {
            len++;
        }
        if (len > 0) {
            return apr_pstrndup(p, line, len);
        }
    }
    return NULL;
}

static void free_entries(down_file *df)
{
    int i;
    for (i = 0; i < df->nentries; i++) {
        free(df->entries[i].scheme);
        free(df->entries[i].host);
    }
    free(df->entries);
    df->entries = NULL;
    df->nentries = 0;
    df->read = 0;
}

/* set_entries makes the file's text the list: each line "[scheme://]host[:port]" (as
 * copied from OffloadHost, a weight after it ignored), a line without a port naming every
 * port of its host, one without a scheme either scheme. Each line that is not one, or
 * names no OffloadHost, is logged: the file was just read, so once per change. */
static void set_entries(request_rec *r, const offload_conf *c, down_file *df, const char *text)
{
    char *line;
    int i, max = 0;
    free_entries(df);
    df->read = 1;
    while ((line = next_line(r->pool, &text)) != NULL) {
        down_entry e;
        const char *scheme;
        int named = 0;
        if (!parse_spec(r->pool, line, &scheme, &e.host, &e.port)) {
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, "offload: OffloadHostDownFile %s: '%s' is not "
                          "[scheme://]host[:port] as in OffloadHost; it takes no host out of rotation", df->path, line);
            continue;
        }
        e.scheme = (char *)scheme;
        for (i = 0; known_hosts != NULL && i < known_hosts->nelts && !named; i++) {
            named = entry_names(&e, ((offload_host **)known_hosts->elts)[i]);
        }
        for (i = 0; i < c->hosts->nelts && !named; i++) {
            named = entry_names(&e, &((offload_host *)c->hosts->elts)[i]);
        }
        if (!named) {
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                          "offload: OffloadHostDownFile %s: '%s' names no OffloadHost (want [scheme://]host[:port] "
                          "as in OffloadHost); it takes no host out of rotation", df->path, line);
        } /* kept all the same: an .htaccess read later may name it */
        if (df->nentries == max) {
            down_entry *more = realloc(df->entries, sizeof(*more) * (size_t)(max = max ? 2 * max : 8));
            if (more == NULL) {
                break;
            }
            df->entries = more;
        }
        e.scheme = scheme ? strdup(scheme) : NULL;
        e.host = strdup(e.host);
        if (e.host == NULL || (scheme != NULL && e.scheme == NULL)) {
            free(e.scheme);
            free(e.host);
            break;
        }
        df->entries[df->nentries++] = e;
    }
}

/* mark_down sets down[i] for each host the down file lists. The file is read again when
 * its time or size changes; a failure to read it is logged once per change. */
static void mark_down(request_rec *r, const offload_conf *c, int *down)
{
    apr_finfo_t fi;
    apr_status_t rv;
    down_file *df;
    const offload_host *hosts = (const offload_host *)c->hosts->elts;
    int i, j;
    if (c->down_file == NULL) {
        return;
    }
    rv = apr_stat(&fi, c->down_file, APR_FINFO_MTIME | APR_FINFO_SIZE, r->pool);
    lock();
    for (df = down_files; df != NULL && strcmp(df->path, c->down_file) != 0; df = df->next) {
    }
    if (df == NULL) {
        df = calloc(1, sizeof(*df));
        if (df == NULL || (df->path = strdup(c->down_file)) == NULL) {
            free(df);
            unlock();
            return;
        }
        df->next = down_files;
        down_files = df;
    }
    if (rv != APR_SUCCESS && APR_STATUS_IS_ENOENT(rv)) {
        free_entries(df); /* no file: every host is up */
        df->mtime = 0;
        df->failed = APR_SUCCESS;
    } else if (rv != APR_SUCCESS) {
        if (df->failed != rv) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, rv, r, "offload: OffloadHostDownFile %s: cannot see it; "
                          "the hosts it lists stay as they were", c->down_file);
            df->failed = rv;
        }
    } else if (!df->read || df->mtime != fi.mtime || df->size != fi.size) {
        apr_file_t *f;
        apr_size_t len = fi.size > 65536 ? 65536 : (apr_size_t)fi.size, got = 0;
        char *text = apr_palloc(r->pool, len + 1);
        rv = apr_file_open(&f, c->down_file, APR_FOPEN_READ, 0, r->pool);
        if (rv == APR_SUCCESS) {
            rv = apr_file_read_full(f, text, len, &got);
            apr_file_close(f);
            rv = APR_STATUS_IS_EOF(rv) ? APR_SUCCESS : rv;
        }
        if (rv == APR_SUCCESS) {
            text[got] = '\0';
            set_entries(r, c, df, text);
            df->mtime = fi.mtime;
            df->size = fi.size;
            df->failed = APR_SUCCESS;
        } else if (df->failed != rv || df->failed_mtime != fi.mtime) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, rv, r, "offload: OffloadHostDownFile %s: cannot read it "
                          "(Apache's user must be able to); the hosts it lists stay as they were", c->down_file);
            df->failed = rv;
            df->failed_mtime = fi.mtime;
        }
    }
    for (i = 0; i < c->hosts->nelts; i++) {
        for (j = 0; j < df->nentries && !down[i]; j++) {
            down[i] = entry_names(&df->entries[j], &hosts[i]);
        }
    }
    unlock();
}

/* from_offload_host reports whether ip is an address of a configured offload host. */
static int from_offload_host(request_rec *r, const offload_conf *c, const char *ip)
{
    int i;
    for (i = 0; known_hosts != NULL && i < known_hosts->nelts; i++) {
        if (host_has_ip(((offload_host **)known_hosts->elts)[i], ip, r->pool)) {
            return 1;
        }
    }
    for (i = 0; c != NULL && i < c->hosts->nelts; i++) {
        if (host_has_ip(&((offload_host *)c->hosts->elts)[i], ip, r->pool)) {
            return 1;
        }
    }
    return 0;
}

/* post_read_request looks at what the offload hosts ask (X-Mod-Offload-Bypass from the
 * address of an OffloadHost of the server config): one that reaches another virtual
 * host than its own is refused (its --base names the wrong site); one that says for whom
 * it asks (X-Forwarded-For) has the access rules applied to that client. It runs after
 * mod_remoteip, which may already have done the latter. */
static int post_read_request(request_rec *r)
{
    const char *peer = r->connection->client_ip, *xff, *last;
    const offload_host *own = NULL, *other = NULL;
    apr_sockaddr_t *sa;
    char *ip;
    int i;
    if (known_hosts == NULL || apr_table_get(r->headers_in, "X-Mod-Offload-Bypass") == NULL) {
        return DECLINED;
    }
    for (i = 0; i < known_hosts->nelts && own == NULL; i++) {
        const offload_host *h = ((offload_host **)known_hosts->elts)[i];
        if (host_has_ip(h, peer, r->pool)) {
            if (same_site(h->server, r->server)) {
                own = h;
            } else {
                other = h;
            }
        }
    }
    if (own == NULL && other == NULL) {
        return DECLINED;
    }
    if (own == NULL) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "offload: refused %s for %s: it comes from offload host %s of %s, but reached %s; "
                      "that offload server's --base must name the site it offloads for", r->uri, peer,
                      other->addr, server_desc(r->pool, other->server), server_desc(r->pool, r->server));
        return HTTP_MISDIRECTED_REQUEST;
    }
    xff = apr_table_getm(r->pool, r->headers_in, "X-Forwarded-For");
    if (xff == NULL || strcmp(r->useragent_ip, peer) != 0) {
        return DECLINED; /* nobody named, or mod_remoteip already applied it */
    }
    last = strrchr(xff, ',');
    last = last ? last + 1 : xff;
    while (apr_isspace(*last)) {
        last++;
    }
    ip = apr_pstrdup(r->pool, last);
    for (i = (int)strlen(ip); i > 0 && apr_isspace(ip[i - 1]); i--) {
        ip[i - 1] = '\0';
    }
    if (!is_ip(ip) || apr_sockaddr_info_get(&sa, ip, APR_UNSPEC, r->useragent_addr->port, APR_IPV4_ADDR_OK, r->pool) != APR_SUCCESS) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "offload: refused %s from offload host %s: X-Forwarded-For '%s' "
                      "names no address", r->uri, peer, xff);
        return HTTP_BAD_REQUEST;
    }
    r->useragent_addr = sa;
    r->useragent_ip = ip;
    return DECLINED;
}

#define DECLINE(why) do { \
        if (c->debug == 1) { \
            ap_log_rerror(APLOG_MARK, APLOG_NOTICE, 0, r, "offload: not offloading %s: %s", r->uri, why); \
        } \
        return DECLINED; \
    } while (0)

/* type_match matches a content type against an exclusion pattern, with and without the
 * type's parameters ("text/plain; charset=UTF-8" is excluded by "text/plain"). */
static int type_match(apr_pool_t *p, const char *type, const char *pattern)
{
    const char *semi = strchr(type, ';');
    size_t n;
    if (ap_strcasecmp_match(type, pattern) == 0) {
        return 1;
    }
    if (semi == NULL) {
        return 0;
    }
    for (n = (size_t)(semi - type); n > 0 && apr_isspace(type[n - 1]); n--) {
    }
    return ap_strcasecmp_match(apr_pstrndup(p, type, n), pattern) == 0;
}

static int offload_handler(request_rec *r)
{
    const offload_conf *c = ap_get_module_config(r->per_dir_config, &offload_module);
    const offload_host *hosts;
    const char **addrs;
    int *weights, *down, i, n, pick;
    apr_off_t min_size;
    const char *ua, *path, *location;

    if (c == NULL || c->engine != 1) {
        return DECLINED;
    }
    if (c->hosts->nelts == 0) {
        DECLINE("OffloadEngine On but no OffloadHost here");
    }
    /* An ErrorDocument, a DirectoryIndex or autoindex's HEADER/README are not the
     * request the client made: the client must get their bytes in this response. */
    if (r->main != NULL || r->prev != NULL) {
        DECLINE("a subrequest or internal redirect");
    }
    if (r->method_number != M_GET || r->header_only) {
        DECLINE("not a GET");
    }
    /* A DirectoryIndex page or a MultiViews variant: httpd chose the file for this client
     * (ap_internal_fast_redirect sets r->uri to it, away from the request's path). The
     * offload server, asking for the request's path, could get another choice. */
    if (r->parsed_uri.path == NULL || strcmp(r->uri, r->parsed_uri.path) != 0) {
        DECLINE("a file httpd chose for the path (DirectoryIndex, MultiViews)");
    }
    /* Hooked last (after mod_actions too): every module with a handler of its own (CGI,
     * also through a "magic" type like application/x-httpd-cgi, PHP, proxies) has
     * declined. What is left is the default handler's if the handler name is the one
     * httpd derives from the type (a type, "" without one), as mod_file_cache decides. */
    if (r->handler != NULL && !AP_IS_DEFAULT_HANDLER_NAME(r->handler) && strcmp(r->handler, "default-handler") != 0 &&
        ap_strcmp_match(r->handler, "*/*") != 0) {
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
        if (!same_site(hosts[i].server, r->server)) {
            DECLINE("its OffloadHost belongs to another virtual host (or the main server config): "
                    "put the Offload directives inside this <VirtualHost>");
        }
    }
    if (from_offload_host(r, c, r->connection->client_ip) || from_offload_host(r, c, r->useragent_ip)) {
        DECLINE("request from an offload server");
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
        if (type_match(r->pool, type, ((const char **)c->mimes->elts)[i])) {
            DECLINE("excluded MIME type");
        }
    }
    /* The path as the client escaped it, without a scheme and host it may have sent
     * (absolute-form) and without anything after it: the Location and the hash input. */
    path = r->unparsed_uri; /* r->parsed_uri.path is unescaped in place with r->uri */
    if (*path != '/') {
        const char *sep = strstr(path, "://");
        path = sep != NULL ? strchr(sep + 3, '/') : NULL;
        if (path == NULL) {
            DECLINE("no path");
        }
    }
    path = apr_pstrndup(r->pool, path, strcspn(path, "?#"));

    addrs = apr_palloc(r->pool, sizeof(*addrs) * (apr_size_t)n);
    weights = apr_palloc(r->pool, sizeof(*weights) * (apr_size_t)n);
    down = apr_pcalloc(r->pool, sizeof(*down) * (apr_size_t)n);
    for (i = 0; i < n; i++) {
        addrs[i] = hosts[i].addr;
        weights[i] = hosts[i].weight;
    }
    mark_down(r, c, down);
    pick = c->pick_time == 1 ? offload_pick_time(down, n, (long long)time(NULL))
                             : offload_pick_hash(addrs, weights, down, n, path);
    if (pick < 0) {
        DECLINE("every offload host is down");
    }
    location = apr_pstrcat(r->pool, hosts[pick].scheme, "://", hosts[pick].addr, path, NULL);
    if (c->debug == 1) {
        ap_log_rerror(APLOG_MARK, APLOG_NOTICE, 0, r, "offload: %s -> %s", r->uri, location);
    }
    apr_table_setn(r->headers_out, "Location", location);
    /* httpd answers a status returned by a handler with err_headers_out only. */
    apr_table_setn(r->err_headers_out, "Cache-Control", "no-store");
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
    AP_INIT_RAW_ARGS("OffloadExcludeUserAgent", add_agents, NULL, RSRC_CONF | ACCESS_CONF | OR_OPTIONS,
                     "User-Agents never offloaded (shell wildcards; quote one with spaces)"),
    AP_INIT_ITERATE("OffloadExcludeAddress", add_addr, NULL, RSRC_CONF | ACCESS_CONF | OR_OPTIONS,
                    "client addresses never offloaded (addresses, wildcards or CIDR)"),
    {NULL}
};

static void register_hooks(apr_pool_t *p)
{
    static const char *const after[] = {"mod_actions.c", NULL};
    (void)p;
    ap_hook_check_config(check_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_init(child_init, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_post_read_request(post_read_request, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_handler(offload_handler, after, NULL, APR_HOOK_LAST);
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
