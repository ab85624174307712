/*
 * openloop_http.c: the open-loop client's HTTP/1.1 response parser. It reads
 * just far enough to find where each response ends: the status line, the
 * headers that frame the body (Content-Length, Transfer-Encoding: chunked,
 * Connection), and chunked bodies to their zero-size chunk, across any read
 * boundaries.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "openloop.h"

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

/* The blank line after the headers: what follows. 1 when the response has no body, so it ended here. */
static int end_headers(struct conn *c) {
    if (c->http10 && !c->keep_alive)
        c->close_after = 1;
    if (c->status >= 100 && c->status < 200) {
        c->ps = P_STATUS; /* an interim answer; the real one follows */
        return 0;
    }
    if (c->status == 204 || c->status == 304)
        return 1;
    if (c->chunked) {
        c->ps = P_CHUNK_SIZE;
    } else if (c->has_length) {
        if (c->remain == 0)
            return 1;
        c->ps = P_BODY;
    } else {
        c->close_after = 1;
        c->ps = P_UNTIL_CLOSE;
    }
    return 0;
}

/* Pass over the body bytes still owed (c->remain) that the input holds; 1 once none are owed. */
static int skip_body(struct conn *c, const char **p, size_t *n) {
    size_t k = (uint64_t)*n < c->remain ? *n : (size_t)c->remain;
    *p += k;
    *n -= k;
    c->remain -= k;
    return c->remain == 0;
}

/*
 * Feed received bytes to the connection's parser. Returns 1 when the response
 * ended (*used: bytes of the input it took), 0 when it needs more, -1 when the
 * bytes are not HTTP/1.1 as this parser knows it.
 */
int feed(struct conn *c, const char *p, size_t n, size_t *used) {
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
            if (end_headers(c))
                goto done;
            continue;
        case P_BODY:
        case P_CHUNK_DATA:
            if (!skip_body(c, &p, &n))
                return 0;
            if (c->ps == P_BODY)
                goto done;
            c->ps = P_CHUNK_END;
            continue;
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
