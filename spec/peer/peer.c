/*
 * peer.c - fault-injecting HTTP/1.1 server for the coord test-suite.
 *
 * Serves a fixed set of routes (see README.md next to this file) producing
 * behaviour that real servers will not produce on demand: truncated bodies,
 * garbage replies, resets, stalls, chunked lines split across segments,
 * floods against slow readers and full-duplex chunked streams.
 *
 *   peer [--port N] [--max-seconds S] [--upstream PORT [--strip PREFIX]]
 *
 * Listens on 127.0.0.1 (an ephemeral port unless --port N), prints one line
 * "PORT <n>" on stdout once listening, and exits on SIGTERM/SIGINT, when
 * stdin reaches EOF (the parent died) or after S seconds (default 600).
 * With --upstream, it is a proxy in front of 127.0.0.1:PORT that can drop the
 * connection after the upstream has answered, and counts arrivals by path;
 * with --strip, it forwards only paths under PREFIX, without it (a server
 * behind a reverse proxy at a path).
 *
 * Build: gcc -std=gnu11 -O1 -g -Wall -Wextra -Werror -pthread -o peer peer.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define THREAD_STACK    (128 * 1024)
#define LISTEN_BACKLOG  4096
#define RBUF_SIZE       (16 * 1024)
#define HEAD_MAX        (64 * 1024)
#define MAX_HEADERS     100
#define BODY_MAX        (64u * 1024 * 1024)
#define DUPLEX_LINE_MAX (1024 * 1024)
#define FLOOD_CHUNK     (16 * 1024)
#define ID_MAX          128
#define DEFAULT_WAIT_MS 5000
#define MAX_WAIT_MS     3600000

/* Results of reading a request body. */
enum { BODY_OK = 0, BODY_EOF = -1, BODY_BAD = -2, BODY_BIG = -3, BODY_SEND = -4 };

/* Per-id flags in the event table. */
enum { EV_CLOSED = 1, EV_BLOCKED = 2, EV_SEEN = 4 };

struct buf { char *p; size_t len, cap; };
struct header { char *name, *value; };

struct request {
    char *method;
    const char *path, *query;
    struct header hdr[MAX_HEADERS];
    int nhdr;
    long long length;            /* Content-Length, -1 if absent */
    bool chunked, expect_continue, keep_alive, head_only;
    struct buf body;
};

struct conn {
    int fd;
    bool reset;                  /* close with RST instead of FIN */
    size_t rpos, rlen;           /* unread bytes are rbuf[rpos..rlen) */
    struct request rq;
    char rbuf[RBUF_SIZE];
    char head[HEAD_MAX];         /* request line and header lines */
};

/* Keyed by an id, or by a request path in proxy mode (arrivals, armed drops). */
struct event { struct event *next; unsigned flags; long arrivals, armed; char id[]; };

static atomic_long stat_requests, stat_connections, stat_open;
static int wake_pipe[2];
static pthread_mutex_t ev_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ev_cond;   /* initialised in main (monotonic clock) */
static struct event *events;
static int upstream_port;       /* --upstream: proxy mode, forward to 127.0.0.1:port */
static const char *strip_prefix; /* --strip: forward only paths under it, without it */

/* ---------------------------------------------------------------- utils */

/* Appends n uninitialised bytes to b and returns where they start. */
static char *buf_extend(struct buf *b, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap *= 2;
        if (!(b->p = realloc(b->p, cap))) abort();
        b->cap = cap;
    }
    b->len += n;
    return b->p + b->len - n;
}

static void buf_add(struct buf *b, const void *data, size_t n)
{
    if (n) memcpy(buf_extend(b, n), data, n);
}

__attribute__((format(printf, 2, 3)))
static void buf_printf(struct buf *b, const char *fmt, ...)
{
    char *s;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0) abort();
    buf_add(b, s, (size_t)n);
    free(s);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static void msleep(long long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (ms > 0 && nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static long long clamp(long long v, long long lo, long long hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* ---------------------------------------------------------- event table */

/* Finds or creates the entry for id; the caller holds ev_lock. */
static struct event *ev_get(const char *id)
{
    for (struct event *e = events; e; e = e->next)
        if (strcmp(e->id, id) == 0) return e;
    size_t n = strlen(id) + 1;
    struct event *e = calloc(1, sizeof *e + n);
    if (!e) abort();
    memcpy(e->id, id, n);
    e->next = events;
    return events = e;
}

static void ev_update(const char *id, unsigned set, unsigned clear)
{
    pthread_mutex_lock(&ev_lock);
    struct event *e = ev_get(id);
    e->flags = (e->flags & ~clear) | set;
    pthread_cond_broadcast(&ev_cond);
    pthread_mutex_unlock(&ev_lock);
}

/* Waits up to ms for flag to be set on id; true if it was. */
static bool ev_wait(const char *id, unsigned flag, long long ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    long long ns = dl.tv_nsec + ms % 1000 * 1000000LL;
    dl.tv_sec += ms / 1000 + ns / 1000000000;
    dl.tv_nsec = ns % 1000000000;
    pthread_mutex_lock(&ev_lock);
    struct event *e = ev_get(id);
    int rc = 0;
    while (!(e->flags & flag) && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&ev_cond, &ev_lock, &dl);
    bool ok = e->flags & flag;
    pthread_mutex_unlock(&ev_lock);
    return ok;
}

/* ----------------------------------------------------------- socket I/O */

static int send_all(int fd, const void *data, size_t n)
{
    for (const char *p = data; n > 0;) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Sends b and frees it. */
static int send_buf(int fd, struct buf *b)
{
    int r = send_all(fd, b->p, b->len);
    free(b->p);
    *b = (struct buf){ 0 };
    return r;
}

/* Refills the (fully consumed) read buffer; -1 on EOF or error. */
static int conn_fill(struct conn *c)
{
    ssize_t r;
    c->rpos = c->rlen = 0;
    do r = recv(c->fd, c->rbuf, RBUF_SIZE, 0);
    while (r < 0 && errno == EINTR);
    if (r <= 0) return -1;
    c->rlen = (size_t)r;
    return 0;
}

/* Reads one LF- or CRLF-terminated line into dst (NUL-terminated, without
 * the terminator). Returns its length, -1 on EOF/error, -2 if too long. */
static long read_line(struct conn *c, char *dst, size_t cap)
{
    size_t n = 0;
    for (char *nl = NULL; !nl;) {
        if (c->rpos == c->rlen && conn_fill(c) < 0) return -1;
        char *start = c->rbuf + c->rpos;
        size_t avail = c->rlen - c->rpos;
        nl = memchr(start, '\n', avail);
        size_t take = nl ? (size_t)(nl - start) + 1 : avail;
        if (n + take >= cap) return -2;
        memcpy(dst + n, start, take);
        n += take;
        c->rpos += take;
    }
    n--;
    if (n > 0 && dst[n - 1] == '\r') n--;
    dst[n] = '\0';
    return (long)n;
}

/* Body bytes are handed to a sink piece by piece, as soon as they arrive. */
typedef int (*sink_fn)(struct conn *c, const char *p, size_t n, void *ctx);

static int read_fixed(struct conn *c, unsigned long long n, sink_fn sink, void *ctx)
{
    while (n > 0) {
        if (c->rpos == c->rlen && conn_fill(c) < 0) return BODY_EOF;
        size_t take = c->rlen - c->rpos;
        if (take > n) take = (size_t)n;
        int r = sink(c, c->rbuf + c->rpos, take, ctx);
        c->rpos += take;
        n -= take;
        if (r < 0) return r;
    }
    return BODY_OK;
}

static int read_chunked(struct conn *c, sink_fn sink, void *ctx)
{
    char line[256], *end;
    long n;
    for (;;) {
        if ((n = read_line(c, line, sizeof line)) < 0) return n == -1 ? BODY_EOF : BODY_BAD;
        errno = 0;
        unsigned long long size = strtoull(line, &end, 16);
        if (!isxdigit((unsigned char)line[0]) || errno || (*end && !strchr("; \t", *end)))
            return BODY_BAD;
        if (size == 0) break;
        int r = read_fixed(c, size, sink, ctx);
        if (r < 0) return r;
        if ((n = read_line(c, line, sizeof line)) != 0) return n == -1 ? BODY_EOF : BODY_BAD;
    }
    while ((n = read_line(c, line, sizeof line)) > 0) {}   /* trailer fields */
    return n == 0 ? BODY_OK : n == -1 ? BODY_EOF : BODY_BAD;
}

static int send_continue(struct conn *c)
{
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    return send_all(c->fd, cont, sizeof cont - 1);
}

static int read_body(struct conn *c, sink_fn sink, void *ctx)
{
    struct request *rq = &c->rq;
    bool has_body = rq->chunked || rq->length > 0;
    if (has_body && rq->expect_continue && send_continue(c) < 0) return BODY_EOF;
    if (rq->chunked) return read_chunked(c, sink, ctx);
    if (rq->length > 0) return read_fixed(c, (unsigned long long)rq->length, sink, ctx);
    return BODY_OK;
}

static int sink_store(struct conn *c, const char *p, size_t n, void *ctx)
{
    (void)ctx;
    if (c->rq.body.len + n > BODY_MAX) return BODY_BIG;
    buf_add(&c->rq.body, p, n);
    return 0;
}

/* ------------------------------------------------------ request parsing */

static const char *header(const struct request *rq, const char *name)
{
    for (int i = 0; i < rq->nhdr; i++)
        if (strcasecmp(rq->hdr[i].name, name) == 0) return rq->hdr[i].value;
    return NULL;
}

static char *trim(char *s)
{
    s += strspn(s, " \t");
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = '\0';
    return s;
}

/* Splits "METHOD target HTTP/1.x"; returns 0 or an HTTP error status. */
static int parse_request_line(struct request *rq, char *line)
{
    char *sp1 = strchr(line, ' ');
    char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    if (!sp2 || sp1 == line) return 400;
    *sp1 = *sp2 = '\0';
    char *target = sp1 + 1, *version = sp2 + 1;
    if (strncmp(version, "HTTP/1.", 7) != 0) return 400;
    rq->method = line;
    rq->head_only = strcmp(line, "HEAD") == 0;
    rq->keep_alive = strcmp(version, "HTTP/1.0") != 0;
    if (strncasecmp(target, "http://", 7) == 0) {   /* absolute form */
        char *slash = strchr(target + 7, '/');
        target = slash ? slash : (char *)"/";
    }
    char *q = strchr(target, '?');
    if (q) *q++ = '\0';
    rq->path = target;
    rq->query = q ? q : "";
    return 0;
}

static int interpret_headers(struct request *rq)
{
    const char *v;
    if ((v = header(rq, "Content-Length"))) {
        if (!*v || strspn(v, "0123456789") != strlen(v) || strlen(v) > 15) return 400;
        rq->length = atoll(v);
    }
    if ((v = header(rq, "Transfer-Encoding")) && strcasestr(v, "chunked"))
        rq->chunked = true;
    if ((v = header(rq, "Expect")) && strcasecmp(v, "100-continue") == 0)
        rq->expect_continue = true;
    if ((v = header(rq, "Connection")) && strcasestr(v, "close"))
        rq->keep_alive = false;
    else if (v && strcasestr(v, "keep-alive"))
        rq->keep_alive = true;
    return 0;
}

/* Reads header lines (after the first line, which used bytes of c->head) into rq, up
 * to the empty line. Returns 0, -1 on EOF, or an HTTP error status. */
static int parse_header_lines(struct conn *c, struct request *rq, size_t used)
{
    long n;
    for (;;) {
        char *h = c->head + used;
        if ((n = read_line(c, h, HEAD_MAX - used)) < 0) return n == -1 ? -1 : 431;
        if (n == 0) break;
        used += (size_t)n + 1;
        char *colon = strchr(h, ':');
        if (!colon || colon == h) return 400;
        if (rq->nhdr == MAX_HEADERS) return 431;
        *colon = '\0';
        rq->hdr[rq->nhdr++] = (struct header){ h, trim(colon + 1) };
    }
    return interpret_headers(rq);
}

/* Reads a request head into c->rq. Returns 0, -1 to close silently, or an
 * HTTP error status to reply with before closing. */
static int parse_head(struct conn *c)
{
    struct request *rq = &c->rq;
    long n;
    do n = read_line(c, c->head, HEAD_MAX);  /* skip empty lines between requests */
    while (n == 0);
    if (n < 0) return n == -1 ? -1 : 431;
    int st = parse_request_line(rq, c->head);
    if (st) return st;
    return parse_header_lines(c, rq, (size_t)n + 1);
}

/* Finds query parameter key; returns its value (not NUL-terminated). */
static const char *query_get(const char *query, const char *key, size_t *len)
{
    size_t klen = strlen(key);
    for (const char *p = query; *p;) {
        const char *end = strchrnul(p, '&');
        if ((size_t)(end - p) > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
            *len = (size_t)(end - p) - klen - 1;
            return p + klen + 1;
        }
        p = *end ? end + 1 : end;
    }
    return NULL;
}

/* Copies parameter key into out (truncated; "" if absent). */
static void query_str(const char *query, const char *key, char *out, size_t cap)
{
    size_t n = 0;
    const char *v = query_get(query, key, &n);
    if (!v) n = 0;
    if (n >= cap) n = cap - 1;
    if (n) memcpy(out, v, n);
    out[n] = '\0';
}

static long long query_num(const char *query, const char *key, long long dflt)
{
    char v[32], *end;
    query_str(query, key, v, sizeof v);
    long long n = strtoll(v, &end, 10);
    return *v && !*end ? n : dflt;
}

/* ------------------------------------------------------------ responses */

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";           case 204: return "No Content";
    case 304: return "Not Modified"; case 400: return "Bad Request";
    case 404: return "Not Found";    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default:  return "Status";
    }
}

/* Sends a complete response; returns 1 to keep the connection, 0 to close. */
static int send_response(struct conn *c, int status, const char *ctype,
                         const struct buf *extra, const char *body, size_t len)
{
    struct request *rq = &c->rq;
    bool bodyless = status == 204 || status == 304;
    struct buf out = { 0 };
    buf_printf(&out, "HTTP/1.1 %d %s\r\n", status, reason(status));
    if (!bodyless)
        buf_printf(&out, "Content-Type: %s\r\nContent-Length: %zu\r\n", ctype, len);
    if (extra) buf_add(&out, extra->p, extra->len);
    buf_printf(&out, "Connection: %s\r\n\r\n", rq->keep_alive ? "keep-alive" : "close");
    if (!bodyless && !rq->head_only) buf_add(&out, body, len);
    return send_buf(c->fd, &out) == 0 && rq->keep_alive;
}

static int reply_text(struct conn *c, int status, const char *body)
{
    return send_response(c, status, "text/plain", NULL, body, strlen(body));
}

static int send_chunked_head(struct conn *c, const char *ctype)
{
    struct buf out = { 0 };
    buf_printf(&out, "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n"
               "Connection: %s\r\n\r\n", ctype, c->rq.keep_alive ? "keep-alive" : "close");
    return send_buf(c->fd, &out);
}

/* Frames data as one chunk; n == 0 gives the terminating chunk. */
static void add_chunk(struct buf *b, const char *data, size_t n)
{
    buf_printf(b, "%zx\r\n", n);
    buf_add(b, data, n);
    buf_add(b, "\r\n", 2);
}

/* Sends one chunk with a single write. */
static int send_chunk(int fd, const char *data, size_t n)
{
    struct buf out = { 0 };
    add_chunk(&out, data, n);
    return send_buf(fd, &out);
}

/* --------------------------------------------------------------- routes */

static int route_hello(struct conn *c)
{
    return reply_text(c, 200, "hello");
}

static int route_echo(struct conn *c)
{
    struct request *rq = &c->rq;
    struct buf extra = { 0 };
    buf_printf(&extra, "X-Method: %s\r\n", rq->method);
    for (int i = 0; i < rq->nhdr; i++)
        if (strncasecmp(rq->hdr[i].name, "X-Test-", 7) == 0)
            buf_printf(&extra, "%s: %s\r\n", rq->hdr[i].name, rq->hdr[i].value);
    buf_printf(&extra, "X-Multi: a\r\nX-Multi: b\r\n");
    int keep = send_response(c, 200, "application/octet-stream", &extra,
                             rq->body.p, rq->body.len);
    free(extra.p);
    return keep;
}

static int route_status(struct conn *c)
{
    long long code = query_num(c->rq.query, "code", 200);
    if (code < 200 || code > 999) return reply_text(c, 400, "bad code");
    size_t n = 0;
    const char *body = query_get(c->rq.query, "body", &n);
    return send_response(c, (int)code, "text/plain", NULL, body ? body : "", body ? n : 0);
}

static int route_id(struct conn *c)
{
    char body[32];
    snprintf(body, sizeof body, "%lld", query_num(c->rq.query, "n", 0));
    msleep(clamp(query_num(c->rq.query, "delay_ms", 0), 0, MAX_WAIT_MS));
    return reply_text(c, 200, body);
}

static int route_slow(struct conn *c)
{
    msleep(clamp(query_num(c->rq.query, "ms", 0), 0, MAX_WAIT_MS));
    return reply_text(c, 200, "slow");
}

static int route_stall(struct conn *c)
{
    char id[ID_MAX];
    query_str(c->rq.query, "id", id, sizeof id);
    ev_update(id, EV_SEEN, EV_CLOSED);
    /* Send nothing; discard input until the client closes or resets. */
    ssize_t r;
    do r = recv(c->fd, c->rbuf, RBUF_SIZE, 0);
    while (r > 0 || (r < 0 && errno == EINTR));
    ev_update(id, EV_CLOSED, 0);
    return 0;
}

/* Long-poll shared by /seen, /closed and /blocked. */
static int route_await(struct conn *c, unsigned flag, const char *yes, const char *no)
{
    char id[ID_MAX];
    query_str(c->rq.query, "id", id, sizeof id);
    long long ms = clamp(query_num(c->rq.query, "timeout_ms", DEFAULT_WAIT_MS), 0, MAX_WAIT_MS);
    return ev_wait(id, flag, ms) ? reply_text(c, 200, yes) : reply_text(c, 504, no);
}

static int route_closed(struct conn *c)
{
    return route_await(c, EV_CLOSED, "closed", "not closed");
}

/* /seen?id=X: waits until a /stall with id X has arrived, so a test can act on a request
   it knows is on the wire. */
static int route_seen(struct conn *c)
{
    return route_await(c, EV_SEEN, "seen", "not seen");
}

static int route_blocked(struct conn *c)
{
    return route_await(c, EV_BLOCKED, "blocked", "not blocked");
}

static int route_truncate(struct conn *c)
{
    static const char msg[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                              "Content-Length: 100\r\n\r\n0123456789";
    send_all(c->fd, msg, sizeof msg - 1);
    return 0;
}

static int route_garbage(struct conn *c)
{
    static const char msg[] = "this is not http\r\n\r\n";
    send_all(c->fd, msg, sizeof msg - 1);
    return 0;
}

static int route_reset(struct conn *c)
{
    c->reset = true;
    return 0;
}

static int route_lines_split(struct conn *c)
{
    static const char *const parts[] = {
        "alpha\nbra", "vo\ncharlie\ndel", "ta\n", "echo\nfoxtrot\ngolf\nhotel\n",
        "india", "\n", "juliet\r\n", "",   /* "" is the terminating chunk */
    };
    if (send_chunked_head(c, "text/plain") < 0) return 0;
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
        msleep(20);
        if (send_chunk(c->fd, parts[i], strlen(parts[i])) < 0) return 0;
    }
    return c->rq.keep_alive;
}

/* Writes one framed /flood chunk. The writer counts as blocked if poll()
 * says the socket is not writable, or if a non-blocking attempt cannot take
 * the whole chunk (poll alone misses a buffer that fills up mid-chunk when
 * the client has stopped reading entirely). The rest is written blocking. */
static int flood_write(int fd, const struct buf *chunk, bool *blocked)
{
    struct pollfd p = { .fd = fd, .events = POLLOUT };
    bool full = poll(&p, 1, 0) >= 0 && !(p.revents & POLLOUT);
    ssize_t w = 0;
    if (!full) {
        w = send(fd, chunk->p, chunk->len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return -1;
        w = w < 0 ? 0 : w;
        full = (size_t)w < chunk->len;
    }
    *blocked = *blocked || full;
    return send_all(fd, chunk->p + w, chunk->len - (size_t)w);
}

/* Appends "<seq> xxx...x\n", exactly len bytes long. */
static void flood_line(struct buf *b, long long seq, long long len)
{
    char *p = buf_extend(b, (size_t)len);
    int n = snprintf(p, (size_t)len, "%lld ", seq);
    memset(p + n, 'x', (size_t)(len - n - 1));
    p[len - 1] = '\n';
}

static int route_flood(struct conn *c)
{
    char id[ID_MAX];
    query_str(c->rq.query, "id", id, sizeof id);
    long long lines = query_num(c->rq.query, "lines", 1000);
    long long len = query_num(c->rq.query, "len", 64);
    if (lines < 0 || lines > 1000000000 || len < 16 || len > 65536)
        return reply_text(c, 400, "bad flood parameters");
    ev_update(id, 0, EV_BLOCKED);
    if (send_chunked_head(c, "text/plain") < 0) return 0;
    struct buf data = { 0 }, frame = { 0 };
    bool blocked = false, marked = false;
    int r = 0;
    for (long long seq = 1; seq <= lines && r == 0; seq++) {
        flood_line(&data, seq, len);
        if (data.len < FLOOD_CHUNK && seq < lines) continue;
        frame.len = 0;
        add_chunk(&frame, data.p, data.len);
        data.len = 0;
        r = flood_write(c->fd, &frame, &blocked);
        if (blocked && !marked) ev_update(id, EV_BLOCKED, 0);
        marked = blocked;
    }
    free(data.p);
    free(frame.p);
    return r == 0 && send_chunk(c->fd, NULL, 0) == 0 && c->rq.keep_alive;
}

struct duplex {
    struct buf line;             /* bytes of the current, unfinished line */
    size_t scanned;              /* how many of them hold no '\n' */
};

/* Echoes every complete line of the request body as soon as it arrives. */
static int sink_duplex(struct conn *c, const char *p, size_t n, void *ctx)
{
    struct duplex *d = ctx;
    if (d->line.len + n > DUPLEX_LINE_MAX) return BODY_BIG;
    buf_add(&d->line, p, n);
    char *nl;
    while ((nl = memchr(d->line.p + d->scanned, '\n', d->line.len - d->scanned))) {
        size_t llen = (size_t)(nl - d->line.p);
        struct buf out = { 0 };
        buf_printf(&out, "%zx\r\necho:", llen + 6);
        buf_add(&out, d->line.p, llen);
        buf_add(&out, "\n\r\n", 3);
        if (send_buf(c->fd, &out) < 0) return BODY_SEND;
        d->line.len -= llen + 1;
        memmove(d->line.p, nl + 1, d->line.len);
        d->scanned = 0;
    }
    d->scanned = d->line.len;
    return 0;
}

static int route_duplex(struct conn *c)
{
    struct request *rq = &c->rq;
    if (!rq->chunked) {
        if (read_body(c, sink_store, NULL) < 0) return 0;
        return reply_text(c, 400, "duplex needs a chunked request body");
    }
    if (rq->expect_continue && send_continue(c) < 0) return 0;
    if (send_chunked_head(c, "application/x-ndjson") < 0) return 0;
    struct duplex d = { 0 };
    int r = read_chunked(c, sink_duplex, &d);   /* replies while reading */
    free(d.line.p);
    if (r < 0) return 0;    /* the reply is under way: all we can do is close */
    return send_chunk(c->fd, "bye\n", 4) == 0 && send_chunk(c->fd, NULL, 0) == 0 &&
           rq->keep_alive;
}

static int route_stats(struct conn *c)
{
    char body[128];
    snprintf(body, sizeof body, "{\"requests\":%ld,\"connections\":%ld,\"open\":%ld}",
             atomic_load(&stat_requests), atomic_load(&stat_connections),
             atomic_load(&stat_open));
    return send_response(c, 200, "application/json", NULL, body, strlen(body));
}

/* ---------------------------------------------------------- proxy mode */

/* Hop-by-hop and framing headers: the proxy sets its own. */
static bool hop_header(const char *name)
{
    static const char *const names[] = { "Connection", "Keep-Alive", "Proxy-Connection",
        "Content-Length", "Transfer-Encoding", "Expect", "TE", "Upgrade" };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (strcasecmp(name, names[i]) == 0) return true;
    return false;
}

static int connect_upstream(void)
{
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)upstream_port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Reads the upstream's whole reply on u (one request per connection): the status line
 * stays in u->head, headers in u->rq, the body (de-chunked) in u->rq.body. */
static int read_upstream(struct conn *u, bool head_only)
{
    long n = read_line(u, u->head, HEAD_MAX);
    if (n < 12 || strncmp(u->head, "HTTP/1.", 7) != 0) return -1;
    u->rq.length = -1;
    if (parse_header_lines(u, &u->rq, (size_t)n + 1) != 0) return -1;
    int status = atoi(u->head + 9);
    if (head_only || status == 204 || status == 304 || status < 200) return 0;
    if (u->rq.chunked) return read_chunked(u, sink_store, NULL) == BODY_OK ? 0 : -1;
    if (u->rq.length >= 0)
        return read_fixed(u, (unsigned long long)u->rq.length, sink_store, NULL) == BODY_OK ? 0 : -1;
    for (;;) {   /* no framing: the body ends with the connection */
        if (u->rpos < u->rlen && sink_store(u, u->rbuf + u->rpos, u->rlen - u->rpos, NULL) < 0)
            return -1;
        u->rpos = u->rlen;
        if (conn_fill(u) < 0) return 0;
    }
}

/* The path to forward for a request path in proxy mode: without --strip's prefix; NULL
 * when the path is outside that prefix. */
static const char *upstream_path(const char *path)
{
    if (!strip_prefix) return path;
    size_t n = strlen(strip_prefix);
    if (strncmp(path, strip_prefix, n) != 0 || (path[n] != '/' && path[n] != '\0')) return NULL;
    return path[n] ? path + n : "/";
}

/* Any request in proxy mode: counted by path, forwarded to the upstream on a connection of
 * its own, and its reply relayed on the client's keep-alive connection; unless a drop is
 * armed for the path: then the client's connection is closed once the upstream has
 * answered, without a byte of the reply ("applied, then the connection died"). */
static int route_proxy(struct conn *c)
{
    struct request *rq = &c->rq;
    const char *path = upstream_path(rq->path);
    if (!path) return reply_text(c, 404, "outside the proxied prefix");
    pthread_mutex_lock(&ev_lock);
    struct event *e = ev_get(rq->path);
    e->arrivals++;
    bool drop = e->armed > 0;
    if (drop) e->armed--;
    pthread_mutex_unlock(&ev_lock);

    struct buf out = { 0 };
    buf_printf(&out, "%s %s%s%s HTTP/1.1\r\n", rq->method, path, *rq->query ? "?" : "", rq->query);
    for (int i = 0; i < rq->nhdr; i++)
        if (!hop_header(rq->hdr[i].name))
            buf_printf(&out, "%s: %s\r\n", rq->hdr[i].name, rq->hdr[i].value);
    buf_printf(&out, "Content-Length: %zu\r\nConnection: close\r\n\r\n", rq->body.len);
    buf_add(&out, rq->body.p, rq->body.len);
    int fd = connect_upstream();
    if (fd < 0) {
        free(out.p);
        return reply_text(c, 502, "upstream unreachable");
    }
    struct conn *u = calloc(1, sizeof *u);
    if (!u) abort();
    u->fd = fd;
    int r = send_buf(fd, &out) == 0 ? read_upstream(u, rq->head_only) : -1;
    close(fd);
    int keep = 0;
    if (r < 0) {
        keep = reply_text(c, 502, "bad upstream reply");
    } else if (!drop) {
        buf_printf(&out, "%s\r\n", u->head);
        for (int i = 0; i < u->rq.nhdr; i++)
            if (!hop_header(u->rq.hdr[i].name))
                buf_printf(&out, "%s: %s\r\n", u->rq.hdr[i].name, u->rq.hdr[i].value);
        buf_printf(&out, "Content-Length: %zu\r\nConnection: %s\r\n\r\n", u->rq.body.len,
                   rq->keep_alive ? "keep-alive" : "close");
        if (!rq->head_only) buf_add(&out, u->rq.body.p, u->rq.body.len);
        keep = send_buf(c->fd, &out) == 0 && rq->keep_alive;
    }
    free(u->rq.body.p);
    free(u);
    return keep;
}

/* A streamed request in proxy mode (chunked body with Expect: 100-continue, as a watch
 * stream sends): counted, its head forwarded with the path rewritten, then bytes relayed
 * both ways as they come until either side closes. No drop: the connection is the stream. */
static int route_tunnel(struct conn *c)
{
    struct request *rq = &c->rq;
    const char *path = upstream_path(rq->path);
    if (!path) {
        c->rq.keep_alive = false;
        return reply_text(c, 404, "outside the proxied prefix");
    }
    pthread_mutex_lock(&ev_lock);
    ev_get(rq->path)->arrivals++;
    pthread_mutex_unlock(&ev_lock);
    int fd = connect_upstream();
    if (fd < 0) {
        c->rq.keep_alive = false;
        return reply_text(c, 502, "upstream unreachable");
    }
    struct buf out = { 0 };
    buf_printf(&out, "%s %s%s%s HTTP/1.1\r\n", rq->method, path, *rq->query ? "?" : "", rq->query);
    for (int i = 0; i < rq->nhdr; i++)
        if (strcasecmp(rq->hdr[i].name, "Connection") != 0)
            buf_printf(&out, "%s: %s\r\n", rq->hdr[i].name, rq->hdr[i].value);
    buf_printf(&out, "Connection: close\r\n\r\n");
    buf_add(&out, c->rbuf + c->rpos, c->rlen - c->rpos);
    c->rpos = c->rlen;
    if (send_buf(fd, &out) == 0) {
        struct pollfd p[2] = { { .fd = c->fd, .events = POLLIN }, { .fd = fd, .events = POLLIN } };
        char chunk[RBUF_SIZE];
        for (bool open = true; open;) {
            if (poll(p, 2, -1) < 0) {
                if (errno == EINTR) continue;
                break;
            }
            for (int i = 0; i < 2 && open; i++) {
                if (!p[i].revents) continue;
                ssize_t n = recv(p[i].fd, chunk, sizeof chunk, 0);
                open = n > 0 && send_all(p[1 - i].fd, chunk, (size_t)n) == 0;
            }
        }
    }
    close(fd);
    return 0;
}

/* /_peer/arm?path=P&times=N: the next N requests for path P get the drop (default 1). */
static int route_arm(struct conn *c)
{
    char path[ID_MAX];
    query_str(c->rq.query, "path", path, sizeof path);
    pthread_mutex_lock(&ev_lock);
    ev_get(path)->armed = clamp(query_num(c->rq.query, "times", 1), 0, 1000000);
    pthread_mutex_unlock(&ev_lock);
    return reply_text(c, 200, "armed");
}

/* /_peer/count?path=P: how many requests for path P have arrived. */
static int route_count(struct conn *c)
{
    char path[ID_MAX], body[32];
    query_str(c->rq.query, "path", path, sizeof path);
    pthread_mutex_lock(&ev_lock);
    snprintf(body, sizeof body, "%ld", ev_get(path)->arrivals);
    pthread_mutex_unlock(&ev_lock);
    return reply_text(c, 200, body);
}

struct route {
    const char *path;
    int (*fn)(struct conn *c);   /* returns 1 to keep the connection open */
    bool streams_body;           /* reads the request body itself */
};

static const struct route routes[] = {
    { "/hello", route_hello, false },     { "/echo", route_echo, false },
    { "/status", route_status, false },   { "/id", route_id, false },
    { "/slow", route_slow, false },       { "/stall", route_stall, false },
    { "/closed", route_closed, false },   { "/truncate", route_truncate, false },
    { "/garbage", route_garbage, false }, { "/reset", route_reset, false },
    { "/lines-split", route_lines_split, false },
    { "/flood", route_flood, false },     { "/blocked", route_blocked, false },
    { "/duplex", route_duplex, true },    { "/stats", route_stats, false },
    { "/seen", route_seen, false },
    { "/_peer/arm", route_arm, false },   { "/_peer/count", route_count, false },
};

/* ----------------------------------------------------------- connection */

static int handle_request(struct conn *c)
{
    const struct route *rt = NULL;
    bool control = strncmp(c->rq.path, "/_peer/", 7) == 0;
    for (size_t i = 0; i < sizeof routes / sizeof *routes; i++)
        if (strcmp(routes[i].path, c->rq.path) == 0 && (control || !upstream_port)) rt = &routes[i];
    if (!rt && upstream_port && !control && c->rq.chunked && c->rq.expect_continue) return route_tunnel(c);
    if (!rt || !rt->streams_body) {
        int r = read_body(c, sink_store, NULL);
        if (r == BODY_BIG || r == BODY_BAD) {
            c->rq.keep_alive = false;
            reply_text(c, r == BODY_BIG ? 413 : 400, "bad request body");
        }
        if (r < 0) return 0;
    }
    if (!rt && upstream_port && !control) return route_proxy(c);
    return rt ? rt->fn(c) : reply_text(c, 404, "no route");
}

static void serve(struct conn *c)
{
    for (int keep = 1; keep;) {
        free(c->rq.body.p);
        memset(&c->rq, 0, sizeof c->rq);
        c->rq.length = -1;
        int st = parse_head(c);
        if (st < 0) return;
        if (st > 0) {
            c->rq.keep_alive = c->rq.head_only = false;
            reply_text(c, st, "bad request");
            return;
        }
        atomic_fetch_add(&stat_requests, 1);
        keep = handle_request(c);
    }
}

static void close_conn(struct conn *c)
{
    if (c->reset) {
        struct linger lg = { .l_onoff = 1, .l_linger = 0 };
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    } else if (shutdown(c->fd, SHUT_WR) == 0) {
        /* Drain for up to a second until the client closes too: closing
         * with unread input sends an RST, which can destroy our last reply. */
        long long deadline = now_ms() + 1000;
        struct pollfd p = { .fd = c->fd, .events = POLLIN };
        while (now_ms() < deadline && poll(&p, 1, 100) >= 0) {
            if (p.revents & (POLLERR | POLLHUP)) break;
            if ((p.revents & POLLIN) && recv(c->fd, c->rbuf, RBUF_SIZE, 0) <= 0) break;
        }
    }
    close(c->fd);
}

static void *conn_thread(void *arg)
{
    struct conn *c = arg;
    serve(c);
    close_conn(c);
    free(c->rq.body.p);
    free(c);
    atomic_fetch_sub(&stat_open, 1);
    return NULL;
}

static void start_conn(int fd, const pthread_attr_t *attr)
{
    int one = 1, err, tries = 0;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct conn *c = malloc(sizeof *c);    /* big buffers stay uninitialised */
    if (!c) abort();
    c->fd = fd;
    c->reset = false;
    c->rpos = c->rlen = 0;
    memset(&c->rq, 0, sizeof c->rq);
    atomic_fetch_add(&stat_connections, 1);
    atomic_fetch_add(&stat_open, 1);
    pthread_t t;
    while ((err = pthread_create(&t, attr, conn_thread, c)) == EAGAIN && ++tries < 100)
        msleep(10);
    if (err) {
        fprintf(stderr, "peer: pthread_create: %s\n", strerror(err));
        close(fd);
        free(c);
        atomic_fetch_sub(&stat_open, 1);
    }
}

/* Accepts one connection; false when there is nothing more to accept now. */
static bool accept_one(int lfd, const pthread_attr_t *attr)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd >= 0) {
        start_conn(fd, attr);
        return true;
    }
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
        msleep(10);     /* out of descriptors: give connections time to end */
    return errno == EINTR || errno == ECONNABORTED;
}

/* ------------------------------------------------------------ lifecycle */

static void wake(char why)
{
    while (write(wake_pipe[1], &why, 1) < 0 && errno == EINTR) {}
}

static void *stdin_watch(void *arg)
{
    char b[512];
    ssize_t r;
    (void)arg;
    do r = read(STDIN_FILENO, b, sizeof b);
    while (r > 0 || (r < 0 && errno == EINTR));
    wake('e');
    return NULL;
}

static void *signal_watch(void *arg)
{
    int sig;
    while (sigwait(arg, &sig) != 0) {}
    wake('s');
    return NULL;
}

/* 1,500 concurrent connections need more than the usual 1024 descriptors. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int listen_on(int port)
{
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, LISTEN_BACKLOG) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Accept loop; returns why it stopped. */
static const char *run(int lfd, long long max_seconds)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, THREAD_STACK);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    long long deadline = now_ms() + max_seconds * 1000;
    struct pollfd pf[2] = { { .fd = lfd, .events = POLLIN },
                            { .fd = wake_pipe[0], .events = POLLIN } };
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0) return "time limit reached";
        int n = poll(pf, 2, (int)clamp(left, 1, 1000));
        if (n < 0 && errno != EINTR) return "poll failed";
        if (n <= 0) continue;
        if (pf[1].revents) {
            char why = 0;
            return read(wake_pipe[0], &why, 1) == 1 && why == 'e' ? "stdin closed" : "signal";
        }
        while (accept_one(lfd, &attr)) {}
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: peer [--port N] [--max-seconds S] [--upstream PORT [--strip PREFIX]]\n");
    exit(2);
}

static long long parse_arg(const char *s, long long lo, long long hi)
{
    char *end;
    errno = 0;
    long long v = s ? strtoll(s, &end, 10) : 0;
    if (!s || !*s || *end || errno || v < lo || v > hi) usage();
    return v;
}

int main(int argc, char **argv)
{
    long long port = 0, max_seconds = 600;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0)
            port = parse_arg(argv[++i], 0, 65535);
        else if (strcmp(argv[i], "--upstream") == 0)
            upstream_port = (int)parse_arg(argv[++i], 1, 65535);
        else if (strcmp(argv[i], "--strip") == 0 && argv[i + 1] && argv[i + 1][0] == '/')
            strip_prefix = argv[++i];
        else if (strcmp(argv[i], "--max-seconds") == 0)
            max_seconds = parse_arg(argv[++i], 1, 86400LL * 365);
        else
            usage();
    }

    /* SIGTERM/SIGINT stay blocked in every thread; signal_watch takes them. */
    static sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ev_cond, &ca);

    if (strip_prefix && !upstream_port) usage();
    int lfd = listen_on((int)port);
    if (lfd < 0 || pipe2(wake_pipe, O_CLOEXEC) < 0) {
        perror("peer: listen");
        return 1;
    }
    struct sockaddr_in sa;
    socklen_t salen = sizeof sa;
    getsockname(lfd, (struct sockaddr *)&sa, &salen);
    printf("PORT %d\n", ntohs(sa.sin_port));
    fflush(stdout);

    pthread_t t;
    if (pthread_create(&t, NULL, signal_watch, &sigs) != 0 ||
        pthread_create(&t, NULL, stdin_watch, NULL) != 0) {
        perror("peer: pthread_create");
        return 1;
    }
    const char *why = run(lfd, max_seconds);
    fprintf(stderr, "peer: exiting (%s)\n", why);
    close(lfd);
    return 0;
}
