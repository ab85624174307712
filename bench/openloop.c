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
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "openloop.h"

/* The other files: openloop.h (shared types), openloop_http.c (the response parser), openloop_args.c (setup). */

#define READ_CAP 65536
#define MAX_EVENTS 256
#define TIMER_TAG UINT64_MAX
#define RETRY_NS 100000000LL   /* wait before opening a refused connection again */
#define CONNECT_NS 5000000000LL /* how long the first connections may take */
#define LEAD_NS 50000000LL      /* gap between the warm-up and the first due time */

struct state g;

void die(int code, const char *fmt, ...) {
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

void *xmalloc(size_t n) {
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

/* A connection could not be made: fatal while the first connections open, else retried after RETRY_NS. */
static void connect_failed(struct conn *c, int err) {
    if (g.connecting_fatal)
        die(1, "cannot connect to %s: %s", g.target, strerror(err));
    close(c->fd);
    c->fd = -1;
    c->retry_at = now_ns() + RETRY_NS;
    set_state(c, C_CLOSED);
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
        connect_failed(c, errno);
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
        connect_failed(c, err);
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

/* ---- responses (parsed by feed, in openloop_http.c) ---- */

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

/* When request i of a phase is due. */
static int64_t due_at(int64_t i, double rate, int64_t start) {
    return rate > 0 ? start + (int64_t)((double)i * 1e9 / rate) : start;
}

/* Requests that fell due by `now` go out at once if a connection is idle, else queue; *next counts those offered. */
static void offer_due(int64_t *next, int64_t total, double rate, int64_t start, int timed, int64_t now) {
    while (*next < total) {
        int64_t due = due_at(*next, rate, start);
        if (due > now)
            break;
        (*next)++;
        if (g.fifo_head == g.fifo_tail && g.nidle > 0) {
            send_request(pop_idle(), due, timed);
            int64_t late = now_ns() - due;
            if (timed && late > g.late_ns)
                g.late_ns = late;
        } else {
            g.fifo[g.fifo_tail++] = due;
        }
    }
}

/* Open again the closed connections whose wait is over; returns `wake`, or the next retry time if sooner. */
static int64_t retry_closed(int64_t now, int64_t wake) {
    for (int i = 0; i < g.nconns; i++) {
        struct conn *c = &g.conns[i];
        if (c->state != C_CLOSED)
            continue;
        if (c->retry_at <= now)
            open_conn(c);
        else if (c->retry_at < wake)
            wake = c->retry_at;
    }
    return wake;
}

static void handle_events(const struct epoll_event *events, int n) {
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
}

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
        offer_due(&next, total, rate, start, timed, now);
        int64_t wake = next < total ? due_at(next, rate, start) : deadline;
        if (next >= total && g.nbusy == 0 && g.fifo_head == g.fifo_tail)
            return 1;
        if (next >= total && now >= deadline) {
            if (timed)
                g.errors += g.nbusy + (g.fifo_tail - g.fifo_head); /* never answered */
            return 0;
        }
        if (g.nclosed > 0)
            wake = retry_closed(now, wake);
        arm_timer(wake);
        int n = epoll_wait(g.epoll_fd, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die(1, "epoll_wait: %s", strerror(errno));
        }
        handle_events(events, n);
        /* connections that freed up take the queued requests, oldest first */
        while (g.fifo_head != g.fifo_tail && g.nidle > 0)
            send_request(pop_idle(), g.fifo[g.fifo_head++], timed);
    }
}

/* ---- setup ---- */

/* The epoll set with the timer in it, and room for `connections` connections and the phases' requests. */
static void setup_loop(int connections, int64_t total, int64_t warmup) {
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
}

/* Every connection open before anything is sent; any failure ends the program. */
static void open_all(const char *host, int port, int connections) {
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
}

static void write_latencies(const char *out) {
    FILE *f = fopen(out, "w");
    if (!f)
        die(1, "cannot write %s: %s", out, strerror(errno));
    for (int64_t i = 0; i < g.answered; i++)
        fprintf(f, "%" PRId64 "\n", (g.latencies[i] + 500) / 1000);
    if (fclose(f) != 0)
        die(1, "cannot write %s: %s", out, strerror(errno));
}

int main(int argc, char **argv) {
    struct options o;
    parse_args(argc, argv, &o);

    size_t body_len = 0;
    char *body = o.body_file ? read_file(o.body_file, &body_len) : xmalloc(1);
    build_request(o.host, o.port, o.path, o.headers, o.nheaders, body, body_len);
    snprintf(g.target, sizeof g.target, "%s:%d", o.host, o.port);
    resolve(o.host, o.port);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit(o.connections + 64);

    setup_loop(o.connections, o.total, o.warmup);
    open_all(o.host, o.port, o.connections);

    /* the warm-up: all at once, answers discarded */
    if (o.warmup > 0 && !run_phase(o.warmup, 0, now_ns(), 0, (int64_t)(o.timeout * 1e9)))
        die(1, "the warm-up's %lld requests were not all answered within %g s", (long long)o.warmup, o.timeout);

    int64_t start = now_ns() + LEAD_NS;
    run_phase(o.total, o.rate, start, 1, (int64_t)(o.timeout * 1e9));

    if (o.out)
        write_latencies(o.out);
    printf("OPENLOOP {\"answered\":%" PRId64 ",\"errors\":%" PRId64 ",\"late_us\":%" PRId64 ",\"sent\":%" PRId64 "}\n",
           g.answered, g.errors, (g.late_ns + 500) / 1000, g.sent);
    return 0;
}
