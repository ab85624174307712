/*
 * openloop.h: what the open-loop client's files share (see openloop.c for what
 * the program does): the connection and parser states, struct conn, the
 * program's state `g`, the parsed arguments, and the functions one file calls
 * in another.
 */
#ifndef OPENLOOP_H
#define OPENLOOP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define LINE_CAP 8192

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

struct state {
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
};

extern struct state g;

/* The command line, checked. */
struct options {
    const char *host, *path, *body_file, *out;
    int port, connections;
    double rate, duration, timeout;
    int64_t warmup;
    int64_t total; /* requests in the timed run: rate x duration */
    char **headers;
    int nheaders;
};

/* openloop.c */
void die(int code, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
void *xmalloc(size_t n);

/* openloop_http.c */
int feed(struct conn *c, const char *p, size_t n, size_t *used);

/* openloop_args.c */
void parse_args(int argc, char **argv, struct options *o);
char *read_file(const char *path, size_t *len);
void build_request(const char *host, int port, const char *path, char **headers, int nheaders, const char *body,
                   size_t body_len);
void resolve(const char *host, int port);
void raise_fd_limit(int want);

#endif
