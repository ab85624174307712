/*
 * openloop: an open-loop HTTP/1.1 load generator that adds almost no jitter.
 *
 * Request i of the timed run is due at start + i / rate, whether or not the
 * earlier ones have been answered, and its latency runs from that due time to
 * the last byte of its response, so a stall anywhere is charged to every
 * request it delays (no coordinated omission). The client sleeps on a timerfd
 * armed at the next due time (absolute CLOCK_MONOTONIC, nanosecond precision),
 * so it wakes on time without spinning and stays cheap on a shared CPU.
 *
 * All --connections keep-alive connections are opened before anything is sent.
 * A due request goes out at once on an idle connection (the most recently
 * freed first); when none is idle it waits in a FIFO, still timed from its due
 * time, and goes out on the next connection to free up. Responses are parsed
 * just far enough to find their end: status line, headers (Content-Length,
 * Transfer-Encoding: chunked, Connection: close), and chunked bodies to the
 * terminating zero-size chunk, across any read boundaries. A non-2xx answer is
 * an error; so is a connection closed or reset under a request, after which
 * the connection is opened again.
 *
 * Usage: openloop --port N --rate R --duration S [--host 127.0.0.1] [--path /]
 *   [--body-file FILE] [--header "Name: value"]... [--connections 256]
 *   [--warmup 64] [--timeout 30] [--out FILE]
 *
 * --out receives each answered request's latency in microseconds, one a line;
 * stdout gets one final line:
 *   OPENLOOP {"answered":N,"errors":N,"late_us":X,"sent":N}
 * where late_us is the worst delay of the client's own sends behind their due
 * times, counting only requests that found a connection idle. Requests still
 * unanswered --timeout seconds after the last due time count as errors.
 * Exit status: 0 on a completed run, 1 if it cannot connect or fails, 2 on bad
 * arguments.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define LINE_CAP 8192
#define READ_CAP 65536
#define MAX_EVENTS 256
#define TIMER_TAG UINT64_MAX
#define RETRY_NS 100000000LL   /* wait before opening a refused connection again */
#define CONNECT_NS 5000000000LL /* how long the first connections may take */
#define LEAD_NS 50000000LL      /* gap between the warm-up and the first due time */

enum conn_state { C_CLOSED, C_CONNECTING, C_IDLE, C_BUSY };
enum parse_state { P_STATUS, P_HEADER, P_BODY, P_CHUNK_SIZE, P_CHUNK_DATA, P_CHUNK_END, P_TRAILER, P_UNTIL_CLOSE };

struct conn {
    int fd;
    enum conn_state state;
    int in_stack;  /* listed in the idle stack (entries go stale when a connection closes) */
    int want_out;  /* EPOLLOUT is registered */
    int timed;     /* the request in flight belongs to the timed run, not the warm-up */
    int64_t due;   /* due time of the request in flight, ns */
    size_t wrote;  /* bytes of the request written so far */
    int64_t retry_at;
    /* response parser */
    enum parse_state ps;
    int status, chunked, has_length, close_after, http10, keep_alive;
    uint64_t remain;
    size_t line_len;
    char line[LINE_CAP];
};

static struct {
    struct sockaddr_storage addr;
    socklen_t addr_len;
    char target[300]; /* host:port, for messages */
    char *request;
    size_t request_len;
    int epoll_fd, timer_fd;
    int64_t timer_armed;
    struct conn *conns;
    int nconns;
    int *idle;  /* stack of connection indices, most recently freed on top */
    int nidle_stack, nidle, nbusy, nclosed;
    int64_t *fifo; /* due times of requests waiting for a connection, in order */
    int64_t fifo_head, fifo_tail;
    int connecting_fatal; /* while the first connections open, a failure ends the program */
    int64_t *latencies;
    int64_t answered, errors, sent;
    int64_t late_ns;
} g;

static void die(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("openloop: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(code);
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *xmalloc(size_t n) {
    void *p = calloc(n ? n : 1, 1);
    if (!p)
        die(1, "out of memory");
    return p;
}

/* ---- epoll and the timer ---- */

static void watch(struct conn *c, int op, int out) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (out ? EPOLLOUT : 0)};
    ev.data.u64 = (uint64_t)(c - g.conns);
    if (epoll_ctl(g.epoll_fd, op, c->fd, &ev) < 0)
        die(1, "epoll_ctl: %s", strerror(errno));
    c->want_out = out;
}

static void arm_timer(int64_t at) {
    if (at == g.timer_armed)
        return;
    struct itimerspec its = {0};
    if (at != INT64_MAX) {
        if (at < 1)
            at = 1; /* zero would disarm it */
        its.it_value.tv_sec = at / 1000000000LL;
        its.it_value.tv_nsec = at % 1000000000LL;
    }
    if (timerfd_settime(g.timer_fd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
        die(1, "timerfd_settime: %s", strerror(errno));
    g.timer_armed = at;
}

/* ---- connection states ---- */

static void set_state(struct conn *c, enum conn_state s) {
    if (c->state == C_IDLE) g.nidle--;
    if (c->state == C_BUSY) g.nbusy--;
    if (c->state == C_CLOSED) g.nclosed--;
    c->state = s;
    if (s == C_IDLE) {
        g.nidle++;
        if (!c->in_stack) {
            g.idle[g.nidle_stack++] = (int)(c - g.conns);
            c->in_stack = 1;
        }
    }
    if (s == C_BUSY) g.nbusy++;
    if (s == C_CLOSED) g.nclosed++;
}

static struct conn *pop_idle(void) {
    while (g.nidle_stack > 0) {
        struct conn *c = &g.conns[g.idle[--g.nidle_stack]];
        c->in_stack = 0;
        if (c->state == C_IDLE)
            return c;
    }
    return NULL;
}

static void open_conn(struct conn *c) {
    if (c->fd >= 0)
        close(c->fd); /* also leaves the epoll set */
    c->fd = socket(g.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        die(1, "socket: %s", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&g.addr, g.addr_len) == 0) {
        watch(c, EPOLL_CTL_ADD, 0);
        set_state(c, C_IDLE);
        return;
    }
    if (errno != EINPROGRESS) {
        if (g.connecting_fatal)
            die(1, "cannot connect to %s: %s", g.target, strerror(errno));
        close(c->fd);
        c->fd = -1;
        c->retry_at = now_ns() + RETRY_NS;
        set_state(c, C_CLOSED);
        return;
    }
    watch(c, EPOLL_CTL_ADD, 1);
    set_state(c, C_CONNECTING);
}

/* The connection broke or misbehaved: the request on it, if any, failed; open it again. */
static void fail(struct conn *c) {
    if (c->state == C_BUSY && c->timed)
        g.errors++;
    open_conn(c);
}

static void connected(struct conn *c) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err) {
        if (g.connecting_fatal)
            die(1, "cannot connect to %s: %s", g.target, strerror(err));
        close(c->fd);
        c->fd = -1;
        c->retry_at = now_ns() + RETRY_NS;
        set_state(c, C_CLOSED);
        return;
    }
    watch(c, EPOLL_CTL_MOD, 0);
    set_state(c, C_IDLE);
}

/* ---- sending ---- */

static void write_some(struct conn *c) {
    while (c->wrote < g.request_len) {
        ssize_t n = send(c->fd, g.request + c->wrote, g.request_len - c->wrote, MSG_NOSIGNAL);
        if (n > 0) {
            c->wrote += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_out)
                watch(c, EPOLL_CTL_MOD, 1);
            return;
        }
        fail(c);
        return;
    }
    if (c->timed)
        g.sent++;
    if (c->want_out)
        watch(c, EPOLL_CTL_MOD, 0);
}

static void send_request(struct conn *c, int64_t due, int timed) {
    set_state(c, C_BUSY);
    c->due = due;
    c->timed = timed;
    c->wrote = 0;
    c->ps = P_STATUS;
    c->line_len = 0;
    write_some(c);
}

/* ---- the response parser ---- */

/* Collect bytes up to a newline into c->line; 1 with the line (CR LF stripped) in *line and *len, 0 if the input ran out first. */
static int take_line(struct conn *c, const char **p, size_t *n, char **line, size_t *len) {
    const char *nl = memchr(*p, '\n', *n);
    size_t k = nl ? (size_t)(nl - *p) + 1 : *n;
    size_t room = LINE_CAP - 1 - c->line_len;
    size_t copy = k < room ? k : room; /* an over-long line keeps its start, which is all that is read */
    memcpy(c->line + c->line_len, *p, copy);
    c->line_len += copy;
    *p += k;
    *n -= k;
    if (!nl)
        return 0;
    size_t l = c->line_len;
    if (l && c->line[l - 1] == '\n') l--;
    if (l && c->line[l - 1] == '\r') l--;
    c->line[l] = '\0';
    c->line_len = 0;
    *line = c->line;
    *len = l;
    return 1;
}

static int has_token(const char *value, const char *token) {
    return strcasestr(value, token) != NULL;
}

static int parse_status(struct conn *c, const char *line, size_t len) {
    /* HTTP/1.x NNN reason */
    if (len < 12 || strncmp(line, "HTTP/1.", 7) != 0 || line[8] != ' ')
        return -1;
    if (line[9] < '0' || line[9] > '9' || line[10] < '0' || line[10] > '9' || line[11] < '0' || line[11] > '9')
        return -1;
    c->status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
    c->http10 = line[7] == '0';
    c->chunked = c->has_length = c->close_after = c->keep_alive = 0;
    c->remain = 0;
    return 0;
}

static int parse_header(struct conn *c, char *line) {
    char *colon = strchr(line, ':');
    if (!colon)
        return -1;
    *colon = '\0';
    char *name = line, *value = colon + 1;
    size_t nl = strlen(name);
    while (nl && (name[nl - 1] == ' ' || name[nl - 1] == '\t'))
        name[--nl] = '\0';
    while (*value == ' ' || *value == '\t')
        value++;
    if (strcasecmp(name, "content-length") == 0) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(value, &end, 10);
        if (errno || end == value)
            return -1;
        c->has_length = 1;
        c->remain = v;
    } else if (strcasecmp(name, "transfer-encoding") == 0) {
        if (has_token(value, "chunked"))
            c->chunked = 1;
    } else if (strcasecmp(name, "connection") == 0) {
        if (has_token(value, "close"))
            c->close_after = 1;
        if (has_token(value, "keep-alive"))
            c->keep_alive = 1;
    }
    return 0;
}

static int parse_chunk_size(const char *line, uint64_t *size) {
    uint64_t v = 0;
    int digits = 0;
    for (const char *s = line; *s && *s != ';' && *s != ' ' && *s != '\t'; s++) {
        int d;
        if (*s >= '0' && *s <= '9') d = *s - '0';
        else if (*s >= 'a' && *s <= 'f') d = *s - 'a' + 10;
        else if (*s >= 'A' && *s <= 'F') d = *s - 'A' + 10;
        else return -1;
        if (v >> 56)
            return -1;
        v = v * 16 + (uint64_t)d;
        digits++;
    }
    if (!digits)
        return -1;
    *size = v;
    return 0;
}

/*
 * Feed received bytes to the connection's parser. Returns 1 when the response
 * ended (*used: bytes of the input it took), 0 when it needs more, -1 when the
 * bytes are not HTTP/1.1 as this parser knows it.
 */
static int feed(struct conn *c, const char *p, size_t n, size_t *used) {
    const char *start = p;
    char *line;
    size_t len;
    for (;;) {
        switch (c->ps) {
        case P_STATUS:
            if (!take_line(c, &p, &n, &line, &len))
                return 0;
            if (len == 0)
                continue; /* a stray empty line before the status line */
            if (parse_status(c, line, len) < 0)
                return -1;
            c->ps = P_HEADER;
            continue;
        case P_HEADER:
            if (!take_line(c, &p, &n, &line, &len))
                return 0;
            if (len > 0) {
                if (parse_header(c, line) < 0)
                    return -1;
                continue;
            }
            if (c->http10 && !c->keep_alive)
                c->close_after = 1;
            if (c->status >= 100 && c->status < 200) {
                c->ps = P_STATUS; /* an interim answer; the real one follows */
                continue;
            }
            if (c->status == 204 || c->status == 304)
                goto done;
            if (c->chunked) {
                c->ps = P_CHUNK_SIZE;
            } else if (c->has_length) {
                if (c->remain == 0)
                    goto done;
                c->ps = P_BODY;
            } else {
                c->close_after = 1;
                c->ps = P_UNTIL_CLOSE;
            }
            continue;
        case P_BODY:
        case P_CHUNK_DATA: {
            size_t k = (uint64_t)n < c->remain ? n : (size_t)c->remain;
            p += k;
            n -= k;
            c->remain -= k;
            if (c->remain > 0)
                return 0;
            if (c->ps == P_BODY)
                goto done;
            c->ps = P_CHUNK_END;
            continue;
        }
        case P_CHUNK_SIZE:
            if (!take_line(c, &p, &n, &line, &len))
                return 0;
            if (parse_chunk_size(line, &c->remain) < 0)
                return -1;
            c->ps = c->remain ? P_CHUNK_DATA : P_TRAILER;
            continue;
        case P_CHUNK_END:
            if (!take_line(c, &p, &n, &line, &len))
                return 0;
            if (len != 0)
                return -1;
            c->ps = P_CHUNK_SIZE;
            continue;
        case P_TRAILER:
            if (!take_line(c, &p, &n, &line, &len))
                return 0;
            if (len == 0)
                goto done;
            continue;
        case P_UNTIL_CLOSE:
            p += n;
            return 0;
        }
    }
done:
    *used = (size_t)(p - start);
    return 1;
}

static void finish(struct conn *c, int64_t t) {
    if (c->timed) {
        if (c->status >= 200 && c->status < 300)
            g.latencies[g.answered++] = t - c->due;
        else
            g.errors++;
    }
    if (c->close_after)
        open_conn(c); /* the server ends the connection after this answer: not a failure */
    else
        set_state(c, C_IDLE);
}

static void readable(struct conn *c) {
    static char buf[READ_CAP];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            fail(c); /* reset */
            return;
        }
        if (n == 0) { /* closed by the server */
            if (c->state == C_BUSY && c->ps == P_UNTIL_CLOSE) {
                finish(c, now_ns());
                return;
            }
            fail(c); /* a failure only if a request was on it */
            return;
        }
        int64_t t = now_ns();
        if (c->state != C_BUSY) {
            fail(c); /* bytes nobody asked for */
            return;
        }
        size_t used = 0;
        int r = feed(c, buf, (size_t)n, &used);
        if (r < 0) {
            fail(c);
            return;
        }
        if (r > 0) {
            int extra = used < (size_t)n;
            finish(c, t);
            if (extra && c->state == C_IDLE)
                open_conn(c); /* more than one response to one request */
            return;
        }
        if ((size_t)n < sizeof buf)
            return;
    }
}

/* ---- the schedule ---- */

/* Offer `total` requests, request i due at start + i / rate (all at `start` when rate is 0), until all are answered or failed, or `drain_ns` after the last due time. */
static int run_phase(int64_t total, double rate, int64_t start, int timed, int64_t drain_ns) {
    struct epoll_event events[MAX_EVENTS];
    int64_t next = 0, last_due = start;
    g.fifo_head = g.fifo_tail = 0;
    if (total > 0 && rate > 0)
        last_due = start + (int64_t)((double)(total - 1) * 1e9 / rate);
    int64_t deadline = last_due + drain_ns;
    for (;;) {
        int64_t now = now_ns();
        /* requests that fell due go out now if a connection is idle, else queue */
        while (next < total) {
            int64_t due = rate > 0 ? start + (int64_t)((double)next * 1e9 / rate) : start;
            if (due > now)
                break;
            next++;
            if (g.fifo_head == g.fifo_tail && g.nidle > 0) {
                send_request(pop_idle(), due, timed);
                int64_t late = now_ns() - due;
                if (timed && late > g.late_ns)
                    g.late_ns = late;
            } else {
                g.fifo[g.fifo_tail++] = due;
            }
        }
        int64_t wake = next < total ? (rate > 0 ? start + (int64_t)((double)next * 1e9 / rate) : start) : deadline;
        if (next >= total && g.nbusy == 0 && g.fifo_head == g.fifo_tail)
            return 1;
        if (next >= total && now >= deadline) {
            if (timed)
                g.errors += g.nbusy + (g.fifo_tail - g.fifo_head); /* never answered */
            return 0;
        }
        if (g.nclosed > 0) {
            for (int i = 0; i < g.nconns; i++) {
                struct conn *c = &g.conns[i];
                if (c->state != C_CLOSED)
                    continue;
                if (c->retry_at <= now)
                    open_conn(c);
                else if (c->retry_at < wake)
                    wake = c->retry_at;
            }
        }
        arm_timer(wake);
        int n = epoll_wait(g.epoll_fd, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die(1, "epoll_wait: %s", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            if (events[i].data.u64 == TIMER_TAG) {
                uint64_t ticks;
                if (read(g.timer_fd, &ticks, sizeof ticks) < 0 && errno != EAGAIN)
                    die(1, "timerfd read: %s", strerror(errno));
                g.timer_armed = INT64_MAX; /* spent */
                continue;
            }
            struct conn *c = &g.conns[events[i].data.u64];
            uint32_t ev = events[i].events;
            if (c->state == C_CONNECTING) {
                if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))
                    connected(c);
                continue;
            }
            if (c->state == C_CLOSED)
                continue;
            if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP))
                readable(c);
            if ((ev & EPOLLOUT) && c->state == C_BUSY && c->wrote < g.request_len)
                write_some(c);
        }
        /* connections that freed up take the queued requests, oldest first */
        while (g.fifo_head != g.fifo_tail && g.nidle > 0)
            send_request(pop_idle(), g.fifo[g.fifo_head++], timed);
    }
}

/* ---- setup ---- */

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

static char *read_file(const char *path, size_t *len) {
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

static void build_request(const char *host, int port, const char *path, char **headers, int nheaders, const char *body,
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

static void resolve(const char *host, int port) {
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

static void raise_fd_limit(int want) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)want) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > (rlim_t)want ? (rlim_t)want : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *path = "/", *body_file = NULL, *out = NULL;
    int port = 0, connections = 256;
    double rate = 0, duration = 0, timeout = 30;
    int64_t warmup = 64;
    char **headers = xmalloc(sizeof(char *) * (size_t)argc);
    int nheaders = 0;
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0)
            usage(NULL);
        if (i + 1 >= argc) {
            fprintf(stderr, "openloop: %s needs a value\n", flag);
            usage(NULL);
        }
        const char *v = argv[++i];
        if (strcmp(flag, "--host") == 0) host = v;
        else if (strcmp(flag, "--port") == 0) port = (int)number(flag, v, 1, 65535);
        else if (strcmp(flag, "--path") == 0) path = v;
        else if (strcmp(flag, "--body-file") == 0) body_file = v;
        else if (strcmp(flag, "--header") == 0) {
            if (!strchr(v, ':') || v[0] == ':' || strpbrk(v, "\r\n"))
                die(2, "--header wants 'Name: value', not '%s'", v);
            headers[nheaders++] = (char *)v;
        } else if (strcmp(flag, "--rate") == 0) rate = number(flag, v, 1e-3, 1e7);
        else if (strcmp(flag, "--duration") == 0) duration = number(flag, v, 1e-3, 86400);
        else if (strcmp(flag, "--connections") == 0) connections = (int)number(flag, v, 1, 60000);
        else if (strcmp(flag, "--warmup") == 0) warmup = (int64_t)number(flag, v, 0, 1e6);
        else if (strcmp(flag, "--timeout") == 0) timeout = number(flag, v, 1e-3, 86400);
        else if (strcmp(flag, "--out") == 0) out = v;
        else {
            fprintf(stderr, "openloop: unknown argument %s\n", flag);
            usage(NULL);
        }
    }
    if (!port) usage("--port is required");
    if (rate <= 0) usage("--rate is required");
    if (duration <= 0) usage("--duration is required");
    if (path[0] != '/' || strpbrk(path, " \r\n")) die(2, "--path must start with / and hold no spaces");
    int64_t total = (int64_t)(rate * duration + 1e-9); /* both positive: truncation is floor */
    if (total > 200000000) die(2, "rate x duration is over 200 million requests");

    size_t body_len = 0;
    char *body = body_file ? read_file(body_file, &body_len) : xmalloc(1);
    build_request(host, port, path, headers, nheaders, body, body_len);
    snprintf(g.target, sizeof g.target, "%s:%d", host, port);
    resolve(host, port);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit(connections + 64);

    g.epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    g.timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (g.epoll_fd < 0 || g.timer_fd < 0)
        die(1, "epoll/timerfd: %s", strerror(errno));
    struct epoll_event tev = {.events = EPOLLIN};
    tev.data.u64 = TIMER_TAG;
    if (epoll_ctl(g.epoll_fd, EPOLL_CTL_ADD, g.timer_fd, &tev) < 0)
        die(1, "epoll_ctl: %s", strerror(errno));
    g.timer_armed = INT64_MAX;
    g.nconns = connections;
    g.conns = xmalloc(sizeof(struct conn) * (size_t)connections);
    g.idle = xmalloc(sizeof(int) * (size_t)connections);
    int64_t queue = total > warmup ? total : warmup;
    g.fifo = xmalloc(sizeof(int64_t) * (size_t)(queue + 1));
    g.latencies = xmalloc(sizeof(int64_t) * (size_t)(total + 1));

    /* every connection open before anything is sent */
    g.connecting_fatal = 1;
    for (int i = 0; i < connections; i++) {
        g.conns[i].fd = -1;
        g.conns[i].state = C_CLOSED;
        g.nclosed++;
        open_conn(&g.conns[i]);
    }
    int64_t connect_deadline = now_ns() + CONNECT_NS;
    while (g.nidle < connections) {
        struct epoll_event events[MAX_EVENTS];
        int64_t left = connect_deadline - now_ns();
        if (left <= 0)
            die(1, "cannot connect to %s:%d: %d of %d connections open after %lld s", host, port, g.nidle, connections,
                CONNECT_NS / 1000000000LL);
        int n = epoll_wait(g.epoll_fd, events, MAX_EVENTS, (int)(left / 1000000) + 1);
        if (n < 0 && errno != EINTR)
            die(1, "epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++) {
            if (events[i].data.u64 == TIMER_TAG)
                continue;
            struct conn *c = &g.conns[events[i].data.u64];
            if (c->state == C_CONNECTING)
                connected(c);
            else if (c->state == C_IDLE && (events[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
                die(1, "cannot connect to %s:%d: the server closed a new connection", host, port);
        }
    }
    g.connecting_fatal = 0;

    /* the warm-up: all at once, answers discarded */
    if (warmup > 0 && !run_phase(warmup, 0, now_ns(), 0, (int64_t)(timeout * 1e9)))
        die(1, "the warm-up's %lld requests were not all answered within %g s", (long long)warmup, timeout);

    int64_t start = now_ns() + LEAD_NS;
    run_phase(total, rate, start, 1, (int64_t)(timeout * 1e9));

    if (out) {
        FILE *f = fopen(out, "w");
        if (!f)
            die(1, "cannot write %s: %s", out, strerror(errno));
        for (int64_t i = 0; i < g.answered; i++)
            fprintf(f, "%" PRId64 "\n", (g.latencies[i] + 500) / 1000);
        if (fclose(f) != 0)
            die(1, "cannot write %s: %s", out, strerror(errno));
    }
    printf("OPENLOOP {\"answered\":%" PRId64 ",\"errors\":%" PRId64 ",\"late_us\":%" PRId64 ",\"sent\":%" PRId64 "}\n",
           g.answered, g.errors, (g.late_ns + 500) / 1000, g.sent);
    return 0;
}
