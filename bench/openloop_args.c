/*
 * openloop_args.c: the open-loop client's setup: its command line, the request
 * it sends (built once, sent as is), the server's address, and the open-file
 * limit its connections need.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "openloop.h"

static void usage(const char *msg) {
    if (msg)
        fprintf(stderr, "openloop: %s\n", msg);
    fputs("usage: openloop --port N --rate R --duration S [--host H] [--path P] [--body-file F]\n"
          "                [--header 'Name: value']... [--connections C] [--warmup N] [--timeout S] [--out F]\n",
          stderr);
    exit(2);
}

static double number(const char *flag, const char *text, double lo, double hi) {
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !isfinite(v) || v < lo || v > hi) {
        fprintf(stderr, "openloop: %s wants a number from %g to %g, not '%s'\n", flag, lo, hi, text);
        exit(2);
    }
    return v;
}

char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        die(2, "cannot read %s: %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            if (!buf)
                die(1, "out of memory");
        }
        size_t k = fread(buf + n, 1, cap - n, f);
        n += k;
        if (k == 0)
            break;
    }
    if (ferror(f))
        die(2, "cannot read %s", path);
    fclose(f);
    *len = n;
    return buf;
}

static int header_named(const char *header, const char *name) {
    size_t k = strlen(name);
    return strncasecmp(header, name, k) == 0 && (header[k] == ':' || header[k] == ' ' || header[k] == '\t');
}

void build_request(const char *host, int port, const char *path, char **headers, int nheaders, const char *body,
                   size_t body_len) {
    size_t cap = strlen(path) + strlen(host) + body_len + 256;
    for (int i = 0; i < nheaders; i++)
        cap += strlen(headers[i]) + 2;
    char *r = xmalloc(cap);
    size_t n = (size_t)snprintf(r, cap, "POST %s HTTP/1.1\r\n", path);
    int own_host = 0;
    for (int i = 0; i < nheaders; i++)
        own_host |= header_named(headers[i], "host");
    if (!own_host)
        n += (size_t)snprintf(r + n, cap - n, "Host: %s:%d\r\n", host, port);
    for (int i = 0; i < nheaders; i++) {
        /* the framing is this program's to set */
        if (header_named(headers[i], "content-length") || header_named(headers[i], "connection") ||
            header_named(headers[i], "transfer-encoding"))
            continue;
        n += (size_t)snprintf(r + n, cap - n, "%s\r\n", headers[i]);
    }
    n += (size_t)snprintf(r + n, cap - n, "Content-Length: %zu\r\nConnection: keep-alive\r\n\r\n", body_len);
    memcpy(r + n, body, body_len);
    g.request = r;
    g.request_len = n + body_len;
}

void resolve(const char *host, int port) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    int rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0)
        die(1, "cannot resolve %s: %s", host, gai_strerror(rc));
    memcpy(&g.addr, res->ai_addr, res->ai_addrlen);
    g.addr_len = res->ai_addrlen;
    freeaddrinfo(res);
}

void raise_fd_limit(int want) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)want) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > (rlim_t)want ? (rlim_t)want : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* Read the command line into *o, checked; a bad one ends the program with status 2. */
void parse_args(int argc, char **argv, struct options *o) {
    *o = (struct options){.host = "127.0.0.1", .path = "/", .connections = 256, .timeout = 30, .warmup = 64};
    o->headers = xmalloc(sizeof(char *) * (size_t)argc);
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0)
            usage(NULL);
        if (i + 1 >= argc) {
            fprintf(stderr, "openloop: %s needs a value\n", flag);
            usage(NULL);
        }
        const char *v = argv[++i];
        if (strcmp(flag, "--host") == 0) o->host = v;
        else if (strcmp(flag, "--port") == 0) o->port = (int)number(flag, v, 1, 65535);
        else if (strcmp(flag, "--path") == 0) o->path = v;
        else if (strcmp(flag, "--body-file") == 0) o->body_file = v;
        else if (strcmp(flag, "--header") == 0) {
            if (!strchr(v, ':') || v[0] == ':' || strpbrk(v, "\r\n"))
                die(2, "--header wants 'Name: value', not '%s'", v);
            o->headers[o->nheaders++] = (char *)v;
        } else if (strcmp(flag, "--rate") == 0) o->rate = number(flag, v, 1e-3, 1e7);
        else if (strcmp(flag, "--duration") == 0) o->duration = number(flag, v, 1e-3, 86400);
        else if (strcmp(flag, "--connections") == 0) o->connections = (int)number(flag, v, 1, 60000);
        else if (strcmp(flag, "--warmup") == 0) o->warmup = (int64_t)number(flag, v, 0, 1e6);
        else if (strcmp(flag, "--timeout") == 0) o->timeout = number(flag, v, 1e-3, 86400);
        else if (strcmp(flag, "--out") == 0) o->out = v;
        else {
            fprintf(stderr, "openloop: unknown argument %s\n", flag);
            usage(NULL);
        }
    }
    if (!o->port) usage("--port is required");
    if (o->rate <= 0) usage("--rate is required");
    if (o->duration <= 0) usage("--duration is required");
    if (o->path[0] != '/' || strpbrk(o->path, " \r\n")) die(2, "--path must start with / and hold no spaces");
    o->total = (int64_t)(o->rate * o->duration + 1e-9); /* both positive: truncation is floor */
    if (o->total > 200000000) die(2, "rate x duration is over 200 million requests");
}
