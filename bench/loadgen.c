/*
 * loadgen: a websocket load generator for the lexicons benchmark suite.
 *
 * One thread, one epoll loop, no libraries beyond libc. Every connection does a
 * real RFC 6455 handshake (random Sec-WebSocket-Key, Sec-WebSocket-Accept checked)
 * and sends masked client frames; server frames are parsed in place.
 *
 * Modes
 *   fanout   N subscribers (each sends --init and, with --init-reply, waits for a
 *            reply), plus one publisher connection that sends --msgs publish calls
 *            built from --pub; each carries a marker "#S<seq>:T<ns>#" (sequence and
 *            CLOCK_MONOTONIC send time). Subscribers count every marker they receive:
 *            deliveries/s, latency p50/p99, and per connection loss, duplicates and
 *            out-of-order arrivals (a bitmap of sequences per subscriber).
 *            --rate R sends R calls/s from a timer; --rate 0 sends as fast as the
 *            server delivers: at most --window broadcasts in flight (a broadcast is
 *            in flight until every subscriber has it).
 *   calls    N clients doing request/response round trips with --call for
 *            --warmup + --duration seconds; a reply is the frame carrying the
 *            client's current marker. calls/s, p50, p99 over the measured window.
 *   connect  open N connections (at most --inflight handshakes at a time) and report
 *            the time it took on one JSON line; then hold them (answering pings)
 *            until stdin reaches end of file or reads a line, then close them all.
 *
 * Templates (--init, --pub, --call) are text with placeholders: @DATA@ becomes the
 * marker padded with 'x' to --size bytes, @SEQ@ the sequence number, @CONN@ the
 * connection index.
 *
 * Output: one JSON object on stdout (connect mode: a "ready" object first). Exit
 * status 0 when the run completed, 1 on bad usage, 2 when connections failed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
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

/* ------------------------------------------------------------------ utilities */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n);
    if (!q && n)
        die("out of memory (%zu bytes)", n);
    return q;
}

static uint64_t rng_state = 88172645463325252ull;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* ------------------------------------------------------------- sha1 + base64 */

typedef struct {
    uint32_t h[5];
    uint64_t len;
    uint8_t buf[64];
    size_t n;
} sha1_ctx;

#define ROL(x, k) (((x) << (k)) | ((x) >> (32 - (k))))

static void sha1_block(sha1_ctx *c, const uint8_t *p)
{
    uint32_t w[80], a, b, d, e, f, k, t, cc;
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = ROL(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    a = c->h[0]; b = c->h[1]; cc = c->h[2]; d = c->h[3]; e = c->h[4];
    for (int i = 0; i < 80; i++) {
        if (i < 20) { f = (b & cc) | (~b & d); k = 0x5A827999; }
        else if (i < 40) { f = b ^ cc ^ d; k = 0x6ED9EBA1; }
        else if (i < 60) { f = (b & cc) | (b & d) | (cc & d); k = 0x8F1BBCDC; }
        else { f = b ^ cc ^ d; k = 0xCA62C1D6; }
        t = ROL(a, 5) + f + e + k + w[i];
        e = d; d = cc; cc = ROL(b, 30); b = a; a = t;
    }
    c->h[0] += a; c->h[1] += b; c->h[2] += cc; c->h[3] += d; c->h[4] += e;
}

static void sha1(const uint8_t *data, size_t len, uint8_t out[20])
{
    sha1_ctx c = {{0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0}, 0, {0}, 0};
    c.len = len;
    while (len >= 64) {
        sha1_block(&c, data);
        data += 64;
        len -= 64;
    }
    uint8_t tail[128] = {0};
    memcpy(tail, data, len);
    tail[len] = 0x80;
    size_t total = len + 1 + 8 <= 64 ? 64 : 128;
    uint64_t bits = c.len * 8;
    for (int i = 0; i < 8; i++)
        tail[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    sha1_block(&c, tail);
    if (total == 128)
        sha1_block(&c, tail + 64);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (uint8_t)(c.h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(c.h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(c.h[i] >> 8);
        out[4 * i + 3] = (uint8_t)c.h[i];
    }
}

static void base64(const uint8_t *in, size_t n, char *out)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i, o = 0;
    for (i = 0; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = tab[v >> 18]; out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63]; out[o++] = tab[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        out[o++] = tab[v >> 18]; out[o++] = tab[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = 0;
}

static double secs(uint64_t ns) { return (double)ns / 1e9; }

/* ----------------------------------------------------------------- histogram */

/* Log-linear buckets over nanoseconds: exact below 1024 ns, then 512 buckets per
 * power of two (relative error under 0.2%). */
#define HIST_BUCKETS (1024 + 40 * 512)

typedef struct {
    uint64_t count[HIST_BUCKETS];
    uint64_t n, max, sum;
} hist;

static int hist_bucket(uint64_t v)
{
    if (v < 1024)
        return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int e = msb - 9;
    if (e > 40)
        return HIST_BUCKETS - 1;
    return 1024 + (e - 1) * 512 + (int)((v >> e) - 512);
}

static uint64_t hist_value(int b)
{
    if (b < 1024)
        return (uint64_t)b;
    int e = (b - 1024) / 512 + 1;
    uint64_t m = (uint64_t)((b - 1024) % 512 + 512);
    return (m << e) + ((1ull << e) >> 1);
}

static void hist_add(hist *h, uint64_t v)
{
    h->count[hist_bucket(v)]++;
    h->n++;
    h->sum += v;
    if (v > h->max)
        h->max = v;
}

static double hist_pct(const hist *h, double p)
{
    if (!h->n)
        return 0;
    uint64_t want = (uint64_t)(p / 100.0 * (double)h->n);
    if (want >= h->n)
        want = h->n - 1;
    uint64_t seen = 0;
    for (int b = 0; b < HIST_BUCKETS; b++) {
        seen += h->count[b];
        if (seen > want)
            return (double)hist_value(b);
    }
    return (double)h->max;
}

/* ---------------------------------------------------------------- options */

enum { MODE_FANOUT, MODE_CALLS, MODE_CONNECT };

static struct {
    int mode;
    const char *host;
    int port;
    const char *path;
    long conns;
    const char *init;
    int init_reply;
    const char *pub;
    const char *call;
    long msgs;
    double rate;
    long window;
    int size;
    long warmup_msgs;
    double duration;
    double warmup;
    long inflight;
    double quiet;
    double timeout;
    int cpu;
} opt = {
    .host = "127.0.0.1", .path = "/", .conns = 1000, .init_reply = 0,
    .msgs = 20000, .rate = 0, .window = 16, .size = 64, .warmup_msgs = 0,
    .duration = 5, .warmup = 1, .inflight = 100, .quiet = 3, .timeout = 120, .cpu = -1,
};

static void usage(void)
{
    fprintf(stderr,
        "usage: loadgen fanout|calls|connect --port P [options]\n"
        "  --host H --path P --conns N --init TEXT --init-reply\n"
        "  fanout:  --pub TEXT --msgs M --rate R (0: windowed) --window W --size B\n"
        "           --warmup-msgs K --quiet S\n"
        "  calls:   --call TEXT --duration S --warmup S --size B\n"
        "  connect: --inflight N (also used by the other modes when opening)\n"
        "  --timeout S (whole run) --cpu C (pin to core C)\n");
    exit(1);
}

static void parse_args(int argc, char **argv)
{
    if (argc < 2)
        usage();
    if (!strcmp(argv[1], "fanout")) opt.mode = MODE_FANOUT;
    else if (!strcmp(argv[1], "calls")) opt.mode = MODE_CALLS;
    else if (!strcmp(argv[1], "connect")) opt.mode = MODE_CONNECT;
    else usage();
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (!strcmp(a, name) && (v || (usage(), 0)) && ++i)
        if (!strcmp(a, "--init-reply")) opt.init_reply = 1;
        else if (ARG("--host")) opt.host = v;
        else if (ARG("--port")) opt.port = atoi(v);
        else if (ARG("--path")) opt.path = v;
        else if (ARG("--conns")) opt.conns = atol(v);
        else if (ARG("--init")) opt.init = v;
        else if (ARG("--pub")) opt.pub = v;
        else if (ARG("--call")) opt.call = v;
        else if (ARG("--msgs")) opt.msgs = atol(v);
        else if (ARG("--rate")) opt.rate = atof(v);
        else if (ARG("--window")) opt.window = atol(v);
        else if (ARG("--size")) opt.size = atoi(v);
        else if (ARG("--warmup-msgs")) opt.warmup_msgs = atol(v);
        else if (ARG("--duration")) opt.duration = atof(v);
        else if (ARG("--warmup")) opt.warmup = atof(v);
        else if (ARG("--inflight")) opt.inflight = atol(v);
        else if (ARG("--quiet")) opt.quiet = atof(v);
        else if (ARG("--timeout")) opt.timeout = atof(v);
        else if (ARG("--cpu")) opt.cpu = atoi(v);
        else usage();
#undef ARG
    }
    if (opt.port <= 0 || opt.conns <= 0 || opt.window <= 0 || opt.inflight <= 0)
        usage();
    if (opt.mode == MODE_FANOUT && !opt.pub)
        die("fanout needs --pub");
    if (opt.mode == MODE_CALLS && !opt.call)
        die("calls needs --call");
    if (opt.size < 32)
        opt.size = 32;
}

/* --------------------------------------------------------------- connections */

enum { ST_CONNECTING, ST_HANDSHAKE, ST_INIT, ST_READY, ST_CLOSING, ST_CLOSED };
enum { ROLE_SUB, ROLE_PUB, ROLE_CLIENT, ROLE_IDLE };

typedef struct conn {
    int fd, idx, state, role, want_out;
    char accept[32];
    uint8_t *in;
    size_t inlen, incap;
    uint8_t *out;
    size_t outlen, outoff, outcap;
    /* fanout subscriber */
    uint8_t *seen;
    int64_t maxseq;
    uint64_t got, dup, ooo;
    /* calls client */
    uint64_t cseq, sent_ts;
    int waiting;
} conn;

static conn *conns;
static long nconns;
static int epfd;
static struct sockaddr_in server_addr;
static uint8_t *rbuf;
#define RBUF_SIZE (1 << 20)

/* counters */
static long n_started, n_open, n_ready, n_failed, n_closed_by_server, n_live;
static long n_other_frames, n_error_frames, n_binary_frames;
static uint64_t bytes_in, frames_in, marker_bytes, marker_frames, reads_in;
static char first_failure[256], sample_other[256];

static void set_failure(const char *fmt, ...)
{
    if (first_failure[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(first_failure, sizeof first_failure, fmt, ap);
    va_end(ap);
}

static void ep_mod(conn *c, int out)
{
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    c->want_out = out;
}

static void conn_close(conn *c, int failed)
{
    if (c->state == ST_CLOSED)
        return;
    if (failed && c->state < ST_READY)
        n_failed++;
    if (c->state >= ST_HANDSHAKE && c->state <= ST_READY)
        n_live--;
    close(c->fd);
    c->fd = -1;
    c->state = ST_CLOSED;
    free(c->in);
    free(c->out);
    c->in = c->out = NULL;
    c->inlen = c->incap = c->outlen = c->outoff = c->outcap = 0;
}

static void conn_flush(conn *c)
{
    while (c->outoff < c->outlen) {
        ssize_t w = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                if (errno == EAGAIN)
                    break;
                continue;
            }
            set_failure("send: %s", strerror(errno));
            conn_close(c, 1);
            return;
        }
        c->outoff += (size_t)w;
    }
    if (c->outoff == c->outlen) {
        c->outoff = c->outlen = 0;
        if (c->want_out)
            ep_mod(c, 0);
    } else if (!c->want_out) {
        ep_mod(c, 1);
    }
}

static void out_reserve(conn *c, size_t n)
{
    if (c->outlen + n > c->outcap) {
        if (c->outoff) {
            memmove(c->out, c->out + c->outoff, c->outlen - c->outoff);
            c->outlen -= c->outoff;
            c->outoff = 0;
        }
        if (c->outlen + n > c->outcap) {
            c->outcap = (c->outlen + n) * 2;
            c->out = xrealloc(c->out, c->outcap);
        }
    }
}

/* Queue one masked client frame; conn_flush() sends it. */
static void queue_frame(conn *c, int opcode, const uint8_t *data, size_t len)
{
    if (c->state == ST_CLOSED)
        return;
    out_reserve(c, len + 14);
    uint8_t *p = c->out + c->outlen;
    size_t h = 0;
    p[h++] = (uint8_t)(0x80 | opcode);
    if (len < 126) {
        p[h++] = (uint8_t)(0x80 | len);
    } else if (len < 65536) {
        p[h++] = 0x80 | 126;
        p[h++] = (uint8_t)(len >> 8);
        p[h++] = (uint8_t)len;
    } else {
        p[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            p[h++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    uint32_t key = (uint32_t)rng();
    uint8_t mask[4] = {(uint8_t)key, (uint8_t)(key >> 8), (uint8_t)(key >> 16),
                       (uint8_t)(key >> 24)};
    memcpy(p + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < len; i++)
        p[h + i] = data[i] ^ mask[i & 3];
    c->outlen += h + len;
}

static void queue_raw(conn *c, const char *data, size_t len)
{
    out_reserve(c, len);
    memcpy(c->out + c->outlen, data, len);
    c->outlen += len;
}

/* ----------------------------------------------------------------- templates */

static char *msgbuf;
static size_t msgcap;

/* Expand a template; returns its length (in msgbuf). */
static size_t expand(const char *tpl, uint64_t seq, uint64_t ts, long connidx)
{
    char data[65536], num[32];
    int dn = snprintf(data, sizeof data, "#S%llu:T%llu#", (unsigned long long)seq,
                      (unsigned long long)ts);
    int want = opt.size < (int)sizeof data - 1 ? opt.size : (int)sizeof data - 1;
    while (dn < want)
        data[dn++] = 'x';
    data[dn] = 0;
    size_t need = strlen(tpl) + (size_t)dn * 4 + 64, o = 0;
    if (need > msgcap) {
        msgcap = need * 2;
        msgbuf = xrealloc(msgbuf, msgcap);
    }
    for (const char *p = tpl; *p;) {
        const char *rep = NULL;
        size_t skip = 0, rl = 0;
        if (*p == '@') {
            if (!strncmp(p, "@DATA@", 6)) { rep = data; rl = (size_t)dn; skip = 6; }
            else if (!strncmp(p, "@SEQ@", 5)) {
                rl = (size_t)snprintf(num, sizeof num, "%llu", (unsigned long long)seq);
                rep = num; skip = 5;
            } else if (!strncmp(p, "@CONN@", 6)) {
                rl = (size_t)snprintf(num, sizeof num, "%ld", connidx);
                rep = num; skip = 6;
            }
        }
        if (rep) {
            memcpy(msgbuf + o, rep, rl);
            o += rl;
            p += skip;
        } else {
            msgbuf[o++] = *p++;
        }
    }
    msgbuf[o] = 0;
    return o;
}

/* ------------------------------------------------------------------ run state */

static uint64_t t_begin;              /* program start */
static uint64_t t_open_first, t_ready_last;
static int phase_running;             /* connections ready, traffic flowing */
static int phase_closing;

/* fanout */
static conn *pub;
static long n_subs;
static uint64_t pub_sent, delivered, delivered_measured, dups, ooos;
static uint64_t t_pub_first, t_pub_warm, t_deliv_last, t_last_progress;
static uint64_t *per_second;
static long per_second_len;
static hist lat;

/* calls */
static uint64_t calls_done, calls_measured, t_calls_start, t_measure_from, t_measure_to;
static int calls_stop;

static void start_call(conn *c)
{
    c->cseq++;
    c->sent_ts = now_ns();
    size_t n = expand(opt.call, c->cseq, c->sent_ts, c->idx);
    queue_frame(c, 1, (uint8_t *)msgbuf, n);
    c->waiting = 1;
    conn_flush(c);
}

static void became_ready(conn *c)
{
    c->state = ST_READY;
    n_ready++;
    t_ready_last = now_ns();
}

static void note_other(const uint8_t *p, size_t len)
{
    n_other_frames++;
    if (memmem(p, len, "\"Errors\"", 8))
        n_error_frames++;
    if (!sample_other[0]) {
        size_t k = len < sizeof sample_other - 1 ? len : sizeof sample_other - 1;
        memcpy(sample_other, p, k);
        sample_other[k] = 0;
    }
}

/* Parse a marker at p ("#S<seq>:T<ts>#"); returns 1 and fills seq/ts if valid. */
static int parse_marker(const uint8_t *p, const uint8_t *end, uint64_t *seq, uint64_t *ts,
                        const uint8_t **next)
{
    const uint8_t *q = p + 2;
    uint64_t s = 0, t = 0;
    if (q >= end || *q < '0' || *q > '9')
        return 0;
    while (q < end && *q >= '0' && *q <= '9')
        s = s * 10 + (uint64_t)(*q++ - '0');
    if (end - q < 3 || q[0] != ':' || q[1] != 'T')
        return 0;
    q += 2;
    while (q < end && *q >= '0' && *q <= '9')
        t = t * 10 + (uint64_t)(*q++ - '0');
    if (q >= end || *q != '#')
        return 0;
    *seq = s;
    *ts = t;
    *next = q + 1;
    return 1;
}

static void on_delivery(conn *c, uint64_t seq, uint64_t ts, uint64_t now)
{
    if (seq == 0 || seq > (uint64_t)opt.msgs)
        return;
    uint64_t i = seq - 1;
    if (c->seen[i >> 3] & (1u << (i & 7))) {
        c->dup++;
        dups++;
        return;
    }
    c->seen[i >> 3] |= (uint8_t)(1u << (i & 7));
    if ((int64_t)seq < c->maxseq) {
        c->ooo++;
        ooos++;
    } else {
        c->maxseq = (int64_t)seq;
    }
    c->got++;
    delivered++;
    t_deliv_last = t_last_progress = now;
    long sec = (long)((now - t_pub_first) / 1000000000ull);
    if (sec >= 0 && sec < per_second_len)
        per_second[sec]++;
    if (seq > (uint64_t)opt.warmup_msgs) {
        delivered_measured++;
        hist_add(&lat, now - ts);
    }
}

static void on_text(conn *c, const uint8_t *p, size_t len)
{
    uint64_t now = 0;
    int markers = 0;
    const uint8_t *end = p + len, *q = p;
    frames_in++;
    if (c->state == ST_INIT) {
        /* the reply to the initial message (e.g. the subscribe acknowledgement) */
        became_ready(c);
        return;
    }
    while ((q = memmem(q, (size_t)(end - q), "#S", 2)) != NULL) {
        uint64_t seq, ts;
        const uint8_t *next;
        if (!parse_marker(q, end, &seq, &ts, &next)) {
            q += 2;
            continue;
        }
        markers++;
        if (!now)
            now = now_ns();
        if (c->role == ROLE_SUB) {
            on_delivery(c, seq, ts, now);
        } else if (c->role == ROLE_CLIENT && c->waiting && seq == c->cseq) {
            c->waiting = 0;
            calls_done++;
            if (c->sent_ts >= t_measure_from && now <= t_measure_to) {
                calls_measured++;
                hist_add(&lat, now - c->sent_ts);
            }
            if (!calls_stop)
                start_call(c);
        }
        q = next;
    }
    if (markers && c->role != ROLE_PUB) {
        marker_frames++;
        marker_bytes += len;
    } else if (!markers) {
        note_other(p, len);
        /* an error reply ends the call: count it and go on */
        if (c->role == ROLE_CLIENT && c->waiting && memmem(p, len, "\"Errors\"", 8)) {
            c->waiting = 0;
            if (!calls_stop)
                start_call(c);
        }
    }
}

static void on_frame(conn *c, int opcode, const uint8_t *p, size_t len)
{
    switch (opcode) {
    case 0: /* continuation: scanned like text */
    case 1:
        on_text(c, p, len);
        break;
    case 2:
        n_binary_frames++;
        break;
    case 8: /* close */
        if (c->state != ST_CLOSING) {
            n_closed_by_server++;
            if (len >= 2)
                set_failure("server closed connection %d with code %d: %.*s", c->idx,
                            p[0] << 8 | p[1], (int)(len - 2 > 100 ? 100 : len - 2), p + 2);
            else
                set_failure("server closed connection %d", c->idx);
            queue_frame(c, 8, p, len >= 2 ? 2 : 0);
            conn_flush(c);
        }
        conn_close(c, c->state != ST_CLOSING);
        break;
    case 9: /* ping */
        queue_frame(c, 10, p, len);
        conn_flush(c);
        break;
    default:
        break;
    }
}

/* Parse complete frames in p[0..n); returns the bytes consumed. */
static size_t parse_frames(conn *c, uint8_t *p, size_t n)
{
    size_t off = 0;
    while (n - off >= 2 && c->state != ST_CLOSED) {
        uint8_t b0 = p[off], b1 = p[off + 1];
        uint64_t len = b1 & 0x7f;
        size_t h = 2;
        if (len == 126) {
            if (n - off < 4)
                break;
            len = (uint64_t)p[off + 2] << 8 | p[off + 3];
            h = 4;
        } else if (len == 127) {
            if (n - off < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | p[off + 2 + i];
            h = 10;
        }
        if (b1 & 0x80) {
            set_failure("server sent a masked frame");
            conn_close(c, 1);
            break;
        }
        if (len > (64u << 20)) {
            set_failure("server frame of %llu bytes", (unsigned long long)len);
            conn_close(c, 1);
            break;
        }
        if (n - off < h + len)
            break;
        bytes_in += h + len;
        on_frame(c, b0 & 0x0f, p + off + h, (size_t)len);
        off += h + (size_t)len;
    }
    return off;
}

static void in_append(conn *c, const uint8_t *p, size_t n)
{
    if (c->inlen + n > c->incap) {
        c->incap = (c->inlen + n) * 2 + 256;
        c->in = xrealloc(c->in, c->incap);
    }
    memcpy(c->in + c->inlen, p, n);
    c->inlen += n;
}

static void send_initial(conn *c)
{
    const char *init = c->role == ROLE_PUB ? NULL : opt.init;
    if (!init) {
        became_ready(c);
        return;
    }
    size_t n = expand(init, 0, 0, c->idx);
    queue_frame(c, 1, (uint8_t *)msgbuf, n);
    conn_flush(c);
    if (c->state == ST_CLOSED)
        return;
    if (opt.init_reply)
        c->state = ST_INIT;
    else
        became_ready(c);
}

/* Check the 101 response once its header is complete; returns bytes of header. */
static size_t check_handshake(conn *c)
{
    uint8_t *end = memmem(c->in, c->inlen, "\r\n\r\n", 4);
    if (!end) {
        if (c->inlen > 16384) {
            set_failure("handshake response too long");
            conn_close(c, 1);
        }
        return 0;
    }
    size_t hlen = (size_t)(end - c->in) + 4;
    char *hdr = malloc(hlen + 1);
    memcpy(hdr, c->in, hlen);
    hdr[hlen] = 0;
    int ok = !strncmp(hdr, "HTTP/1.1 101", 12);
    if (!ok) {
        char *eol = strstr(hdr, "\r\n");
        set_failure("handshake refused: %.*s", (int)(eol ? eol - hdr : 60), hdr);
    } else {
        ok = 0;
        for (char *line = strstr(hdr, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
            if (!strncasecmp(line + 2, "Sec-WebSocket-Accept:", 21)) {
                char *v = line + 23;
                while (*v == ' ' || *v == '\t')
                    v++;
                ok = !strncmp(v, c->accept, strlen(c->accept));
                break;
            }
        }
        if (!ok)
            set_failure("bad or missing Sec-WebSocket-Accept");
    }
    free(hdr);
    if (!ok) {
        conn_close(c, 1);
        return 0;
    }
    n_open++;
    send_initial(c);
    return hlen;
}

static void on_readable(conn *c)
{
    for (int rounds = 0; rounds < 4 && c->state != ST_CLOSED; rounds++) {
        ssize_t r = recv(c->fd, rbuf, RBUF_SIZE, 0);
        if (r == 0) {
            if (c->state != ST_CLOSING) {
                n_closed_by_server++;
                set_failure("server closed the TCP connection %d", c->idx);
            }
            conn_close(c, c->state != ST_CLOSING);
            return;
        }
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            if (c->state != ST_CLOSING)
                set_failure("recv: %s", strerror(errno));
            conn_close(c, c->state != ST_CLOSING);
            return;
        }
        reads_in++;
        if (c->state == ST_HANDSHAKE) {
            in_append(c, rbuf, (size_t)r);
            size_t h = check_handshake(c);
            if (!h || c->state == ST_CLOSED)
                return;
            c->inlen -= h;
            memmove(c->in, c->in + h, c->inlen);
            size_t used = parse_frames(c, c->in, c->inlen);
            if (c->state != ST_CLOSED) {
                c->inlen -= used;
                memmove(c->in, c->in + used, c->inlen);
            }
        } else if (c->inlen == 0) {
            size_t used = parse_frames(c, rbuf, (size_t)r);
            if (c->state != ST_CLOSED && used < (size_t)r)
                in_append(c, rbuf + used, (size_t)r - used);
        } else {
            in_append(c, rbuf, (size_t)r);
            size_t used = parse_frames(c, c->in, c->inlen);
            if (c->state != ST_CLOSED) {
                c->inlen -= used;
                memmove(c->in, c->in + used, c->inlen);
            }
        }
        if (r < RBUF_SIZE)
            return;
    }
}

static void start_handshake(conn *c)
{
    uint8_t raw[16], digest[20];
    char key[32], req[1024], both[128];
    for (int i = 0; i < 16; i++)
        raw[i] = (uint8_t)rng();
    base64(raw, 16, key);
    snprintf(both, sizeof both, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    sha1((uint8_t *)both, strlen(both), digest);
    base64(digest, 20, c->accept);
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\nUser-Agent: lexicons-loadgen\r\n\r\n",
                     opt.path, opt.host, opt.port, key);
    c->state = ST_HANDSHAKE;
    n_live++;
    queue_raw(c, req, (size_t)n);
    conn_flush(c);
}

static void on_writable(conn *c)
{
    if (c->state == ST_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            set_failure("connect: %s", strerror(err));
            conn_close(c, 1);
            return;
        }
        start_handshake(c);
        return;
    }
    conn_flush(c);
}

static void start_connect(conn *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        set_failure("socket: %s", strerror(errno));
        c->fd = -1;
        c->state = ST_CLOSED;
        n_failed++;
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->state = ST_CONNECTING;
    c->want_out = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl add: %s", strerror(errno));
    if (!t_open_first)
        t_open_first = now_ns();
    if (connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0 &&
        errno != EINPROGRESS) {
        set_failure("connect: %s", strerror(errno));
        conn_close(c, 1);
    }
}

/* ------------------------------------------------------------------- the loop */

static volatile sig_atomic_t got_signal;
static int timer_tag, stdin_tag; /* epoll data for the timer and stdin */

static void on_signal(int sig)
{
    (void)sig;
    got_signal = 1;
}

static long pending_handshakes(void)
{
    return n_started - n_ready - n_failed;
}

static void open_more(void)
{
    while (n_started < nconns && pending_handshakes() < opt.inflight)
        start_connect(&conns[n_started++]);
}

static int poll_once(int timeout_ms, int timer_fd, int *timer_fired, int *stdin_event)
{
    struct epoll_event evs[512];
    int n = epoll_wait(epfd, evs, 512, timeout_ms);
    if (n < 0) {
        if (errno == EINTR)
            return 0;
        die("epoll_wait: %s", strerror(errno));
    }
    for (int i = 0; i < n; i++) {
        void *ptr = evs[i].data.ptr;
        if (ptr == &timer_tag) {
            uint64_t x;
            if (read(timer_fd, &x, sizeof x) > 0 && timer_fired)
                *timer_fired = 1;
            continue;
        }
        if (ptr == &stdin_tag) {
            if (stdin_event)
                *stdin_event = 1;
            continue;
        }
        conn *c = ptr;
        if (c->state == ST_CLOSED)
            continue;
        if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
            on_readable(c);
        if (c->state != ST_CLOSED && (evs[i].events & EPOLLOUT))
            on_writable(c);
    }
    return n;
}


static int over_time(void)
{
    return got_signal || now_ns() - t_begin > (uint64_t)(opt.timeout * 1e9);
}

/* Open every connection; returns when all are ready or failed. */
static void open_all(void)
{
    while (n_ready + n_failed < nconns && !over_time()) {
        open_more();
        poll_once(100, -1, NULL, NULL);
    }
}

/* Send a close frame on every live connection and wait (bounded) for the closes. */
/* connections the server had not closed when close_all() gave up waiting */
static long close_pending;

static double close_all(double limit)
{
    uint64_t t0 = now_ns();
    phase_closing = 1;
    for (long i = 0; i < nconns; i++) {
        conn *c = &conns[i];
        if (c->state == ST_CLOSED)
            continue;
        if (c->state == ST_CONNECTING) {
            conn_close(c, 0);
            continue;
        }
        uint8_t code[2] = {0x03, 0xe8};
        queue_frame(c, 8, code, 2);
        c->state = ST_CLOSING;
        conn_flush(c);
    }
    for (;;) {
        long open_left = 0;
        for (long i = 0; i < nconns; i++)
            open_left += conns[i].state != ST_CLOSED;
        close_pending = open_left;
        if (!open_left || now_ns() - t0 > (uint64_t)(limit * 1e9))
            break;
        poll_once(50, -1, NULL, NULL);
    }
    for (long i = 0; i < nconns; i++)
        conn_close(&conns[i], 0);
    return secs(now_ns() - t0);
}

static double cpu_now(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double run_cpu0;
static uint64_t run_end;
static double run_cpu_s;
static uint64_t run_t0;

/* Say traffic starts (the driver samples the server's CPU time there). */
static void say_running(void)
{
    run_cpu0 = cpu_now();
    run_t0 = now_ns();
    printf("{\"event\": \"running\"}\n");
    fflush(stdout);
}

static void print_common(FILE *f)
{
    fprintf(f, "\"close_pending\": %ld, ", close_pending);
    fprintf(f, "\"conns\": %ld, \"ready\": %ld, \"failed\": %ld, \"closed_by_server\": %ld, "
               "\"other_frames\": %ld, \"error_frames\": %ld, \"binary_frames\": %ld, "
               "\"frames_in\": %llu, \"bytes_in\": %llu, \"reads\": %llu",
            nconns, n_ready, n_failed, n_closed_by_server, n_other_frames, n_error_frames,
            n_binary_frames, (unsigned long long)frames_in, (unsigned long long)bytes_in,
            (unsigned long long)reads_in);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
    double sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    fprintf(f, ", \"loadgen_cpu_s\": %.3f, \"loadgen_user_s\": %.3f, \"loadgen_wall_s\": %.3f",
            user + sys, user, secs(now_ns() - t_begin));
    /* share of its core the load generator used while traffic ran: near 1.0 means the
     * figures measure the load generator, not the server */
    if (run_t0 && run_end > run_t0)
        fprintf(f, ", \"loadgen_busy\": %.3f", run_cpu_s / secs(run_end - run_t0));
    fprintf(f, ", \"first_failure\": \"");
    for (const char *p = first_failure; *p; p++)
        fprintf(f, (*p == '"' || *p == '\\') ? "\\%c" : (*p < 32 ? "?" : "%c"), *p);
    fprintf(f, "\", \"sample_other\": \"");
    for (const char *p = sample_other; *p; p++)
        fprintf(f, (*p == '"' || *p == '\\') ? "\\%c" : ((unsigned char)*p < 32 ? "?" : "%c"),
                *p);
    fprintf(f, "\"");
}

/* ------------------------------------------------------------------- fanout */

static void pub_send(uint64_t count)
{
    for (uint64_t k = 0; k < count && pub_sent < (uint64_t)opt.msgs; k++) {
        uint64_t now = now_ns();
        pub_sent++;
        if (pub_sent == 1)
            t_pub_first = t_last_progress = now;
        if (pub_sent == (uint64_t)opt.warmup_msgs + 1)
            t_pub_warm = now;
        size_t n = expand(opt.pub, pub_sent, now, pub->idx);
        queue_frame(pub, 1, (uint8_t *)msgbuf, n);
    }
    conn_flush(pub);
}

static int run_fanout(void)
{
    n_subs = opt.conns;
    nconns = n_subs + 1;
    conns = calloc((size_t)nconns, sizeof *conns);
    size_t bitmap = (size_t)(opt.msgs + 7) / 8;
    for (long i = 0; i < nconns; i++) {
        conns[i].idx = (int)i;
        conns[i].fd = -1;
        conns[i].role = i < n_subs ? ROLE_SUB : ROLE_PUB;
        conns[i].maxseq = 0;
        if (i < n_subs) {
            conns[i].seen = calloc(bitmap, 1);
            if (!conns[i].seen)
                die("out of memory for sequence bitmaps");
        }
    }
    pub = &conns[n_subs];
    per_second_len = (long)opt.timeout + 2;
    per_second = calloc((size_t)per_second_len, sizeof *per_second);

    open_all();
    if (n_ready < nconns) {
        printf("{\"mode\": \"fanout\", \"ok\": false, ");
        print_common(stdout);
        printf("}\n");
        return 2;
    }
    double open_secs = secs(t_ready_last - t_open_first);

    int tfd = -1;
    if (opt.rate > 0) {
        tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        double period = 1.0 / opt.rate;
        if (period < 100e-6)
            period = 100e-6;
        long ns = (long)(period * 1e9);
        struct itimerspec its = {{ns / 1000000000, ns % 1000000000},
                                 {0, 1000}};
        timerfd_settime(tfd, 0, &its, NULL);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &timer_tag};
        epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &ev);
    }
    phase_running = 1;
    say_running();
    uint64_t total = (uint64_t)opt.msgs * (uint64_t)n_subs;
    uint64_t t_start = now_ns();
    int stalled = 0;
    if (opt.rate <= 0)
        pub_send((uint64_t)opt.window);
    while (delivered < total && !over_time()) {
        int fired = 0;
        poll_once(opt.rate > 0 ? 50 : 20, tfd, &fired, NULL);
        uint64_t now = now_ns();
        if (pub->state == ST_CLOSED)
            break;
        if (opt.rate > 0) {
            uint64_t due = (uint64_t)((double)(now - t_start) / 1e9 * opt.rate) + 1;
            if (due > pub_sent)
                pub_send(due - pub_sent);
        } else {
            uint64_t budget = (uint64_t)opt.window * (uint64_t)n_subs;
            uint64_t inflight = pub_sent * (uint64_t)n_subs - delivered;
            if (inflight < budget) {
                uint64_t room = (budget - inflight) / (uint64_t)n_subs;
                if (room)
                    pub_send(room);
            }
        }
        now = now_ns();
        if (now > t_last_progress && now - t_last_progress > (uint64_t)(opt.quiet * 1e9)) {
            stalled = 1;
            break;
        }
    }
    uint64_t t_end = now_ns();
    run_end = t_end;
    run_cpu_s = cpu_now() - run_cpu0;
    double close_secs = close_all(2.0);

    uint64_t lost = total - delivered, conns_with_loss = 0, conns_ooo = 0, conns_dup = 0;
    uint64_t min_got = UINT64_MAX, max_got = 0;
    for (long i = 0; i < n_subs; i++) {
        conn *c = &conns[i];
        conns_with_loss += c->got < (uint64_t)opt.msgs;
        conns_ooo += c->ooo > 0;
        conns_dup += c->dup > 0;
        if (c->got < min_got) min_got = c->got;
        if (c->got > max_got) max_got = c->got;
    }
    uint64_t t_from = opt.warmup_msgs > 0 && t_pub_warm ? t_pub_warm : t_pub_first;
    double span = t_deliv_last > t_from ? secs(t_deliv_last - t_from) : 0;
    double rate = span > 0 ? (double)delivered_measured / span : 0;
    long nsec = t_deliv_last > t_pub_first
                    ? (long)((t_deliv_last - t_pub_first) / 1000000000ull) + 1 : 0;
    if (nsec > per_second_len)
        nsec = per_second_len;

    printf("{\"mode\": \"fanout\", \"ok\": %s, \"subscribers\": %ld, \"msgs\": %ld, "
           "\"sent\": %llu, \"rate_target\": %g, \"window\": %ld, "
           "\"deliveries\": %llu, \"expected\": %llu, \"lost\": %llu, \"duplicates\": %llu, "
           "\"out_of_order\": %llu, \"conns_with_loss\": %llu, \"conns_with_dup\": %llu, "
           "\"conns_out_of_order\": %llu, \"min_per_conn\": %llu, \"max_per_conn\": %llu, "
           "\"stalled\": %s, \"deliveries_per_s\": %.1f, \"measured_deliveries\": %llu, "
           "\"measured_secs\": %.4f, \"run_secs\": %.4f, \"open_secs\": %.4f, "
           "\"close_secs\": %.4f, "
           "\"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, "
           "\"max_us\": %.1f, \"mean_us\": %.1f, \"avg_frame_bytes\": %.1f, \"per_second\": [",
           (!stalled && lost == 0 && dups == 0) ? "true" : "false", n_subs, opt.msgs,
           (unsigned long long)pub_sent, opt.rate, opt.window,
           (unsigned long long)delivered, (unsigned long long)total,
           (unsigned long long)lost, (unsigned long long)dups, (unsigned long long)ooos,
           (unsigned long long)conns_with_loss, (unsigned long long)conns_dup,
           (unsigned long long)conns_ooo, (unsigned long long)min_got,
           (unsigned long long)max_got, stalled ? "true" : "false", rate,
           (unsigned long long)delivered_measured, span, secs(t_end - t_start), open_secs,
           close_secs, hist_pct(&lat, 50) / 1e3, hist_pct(&lat, 90) / 1e3,
           hist_pct(&lat, 99) / 1e3, hist_pct(&lat, 99.9) / 1e3, (double)lat.max / 1e3,
           lat.n ? (double)lat.sum / (double)lat.n / 1e3 : 0,
           marker_frames ? (double)marker_bytes / (double)marker_frames : 0);
    for (long s = 0; s < nsec; s++)
        printf("%s%llu", s ? ", " : "", (unsigned long long)per_second[s]);
    printf("], ");
    print_common(stdout);
    printf("}\n");
    return 0;
}

/* -------------------------------------------------------------------- calls */

static int run_calls(void)
{
    nconns = opt.conns;
    conns = calloc((size_t)nconns, sizeof *conns);
    for (long i = 0; i < nconns; i++) {
        conns[i].idx = (int)i;
        conns[i].fd = -1;
        conns[i].role = ROLE_CLIENT;
    }
    open_all();
    if (n_ready < nconns) {
        printf("{\"mode\": \"calls\", \"ok\": false, ");
        print_common(stdout);
        printf("}\n");
        return 2;
    }
    double open_secs = secs(t_ready_last - t_open_first);
    phase_running = 1;
    say_running();
    t_calls_start = now_ns();
    t_measure_from = t_calls_start + (uint64_t)(opt.warmup * 1e9);
    t_measure_to = t_measure_from + (uint64_t)(opt.duration * 1e9);
    for (long i = 0; i < nconns; i++)
        start_call(&conns[i]);
    while (now_ns() < t_measure_to && !over_time())
        poll_once(20, -1, NULL, NULL);
    calls_stop = 1;
    uint64_t drain_from = now_ns();
    run_end = drain_from;
    run_cpu_s = cpu_now() - run_cpu0;
    for (;;) {
        long waiting = 0;
        for (long i = 0; i < nconns; i++)
            waiting += conns[i].state == ST_READY && conns[i].waiting;
        if (!waiting || now_ns() - drain_from > 2000000000ull)
            break;
        poll_once(20, -1, NULL, NULL);
    }
    long live = 0;
    for (long i = 0; i < nconns; i++)
        live += conns[i].state == ST_READY;
    double close_secs = close_all(2.0);
    double rate = (double)calls_measured / opt.duration;
    printf("{\"mode\": \"calls\", \"ok\": %s, \"clients\": %ld, \"calls\": %llu, "
           "\"measured_calls\": %llu, \"duration\": %g, \"warmup\": %g, "
           "\"calls_per_s\": %.1f, \"open_secs\": %.4f, \"close_secs\": %.4f, "
           "\"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, "
           "\"max_us\": %.1f, \"mean_us\": %.1f, \"avg_frame_bytes\": %.1f, ",
           live == nconns && !n_error_frames ? "true" : "false", nconns,
           (unsigned long long)calls_done, (unsigned long long)calls_measured, opt.duration,
           opt.warmup, rate, open_secs, close_secs, hist_pct(&lat, 50) / 1e3,
           hist_pct(&lat, 90) / 1e3, hist_pct(&lat, 99) / 1e3, hist_pct(&lat, 99.9) / 1e3,
           (double)lat.max / 1e3, lat.n ? (double)lat.sum / (double)lat.n / 1e3 : 0,
           marker_frames ? (double)marker_bytes / (double)marker_frames : 0);
    print_common(stdout);
    printf("}\n");
    return 0;
}

/* ------------------------------------------------------------------ connect */

static int run_connect(void)
{
    nconns = opt.conns;
    conns = calloc((size_t)nconns, sizeof *conns);
    for (long i = 0; i < nconns; i++) {
        conns[i].idx = (int)i;
        conns[i].fd = -1;
        conns[i].role = ROLE_IDLE;
    }
    open_all();
    double open_secs = n_ready ? secs(t_ready_last - t_open_first) : 0;
    printf("{\"mode\": \"connect\", \"event\": \"ready\", \"ok\": %s, \"open_secs\": %.4f, "
           "\"per_s\": %.1f, ",
           n_ready == nconns ? "true" : "false", open_secs,
           open_secs > 0 ? (double)n_ready / open_secs : 0);
    print_common(stdout);
    printf("}\n");
    fflush(stdout);

    /* hold until stdin says so (a line or end of file) */
    int stdin_event = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &stdin_tag};
    int watch = epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev) == 0;
    uint64_t t_hold = now_ns();
    long live_before = n_live;
    while (!got_signal && !stdin_event) {
        if (!watch) {
            /* stdin cannot be polled (a regular file): hold briefly */
            if (now_ns() - t_hold > 1000000000ull)
                break;
        }
        poll_once(200, -1, NULL, &stdin_event);
    }
    if (watch)
        epoll_ctl(epfd, EPOLL_CTL_DEL, 0, NULL);
    double held = secs(now_ns() - t_hold);
    long dropped = live_before - n_live;
    double close_secs = close_all(10.0);
    printf("{\"mode\": \"connect\", \"event\": \"closed\", \"ok\": %s, \"held_secs\": %.3f, "
           "\"dropped_while_held\": %ld, \"close_secs\": %.4f, ",
           n_ready == nconns && dropped == 0 ? "true" : "false", held, dropped, close_secs);
    print_common(stdout);
    printf("}\n");
    return n_ready == nconns ? 0 : 2;
}

/* --------------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    t_begin = now_ns();
    uint64_t seed = t_begin ^ ((uint64_t)getpid() << 32);
    int ufd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (ufd >= 0) {
        if (read(ufd, &seed, sizeof seed) != sizeof seed)
            seed ^= 0x9E3779B97F4A7C15ull;
        close(ufd);
    }
    rng_state = seed ? seed : 1;

    if (opt.cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(opt.cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0)
            fprintf(stderr, "loadgen: cannot pin to cpu %d: %s\n", opt.cpu, strerror(errno));
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    if ((rlim_t)opt.conns + 16 > rl.rlim_cur)
        die("%ld connections need more file descriptors than RLIMIT_NOFILE (%llu)",
            opt.conns, (unsigned long long)rl.rlim_cur);

    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    memset(&server_addr, 0, sizeof server_addr);
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &server_addr.sin_addr) != 1) {
        struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res;
        if (getaddrinfo(opt.host, NULL, &hints, &res) != 0)
            die("cannot resolve %s", opt.host);
        server_addr.sin_addr = ((struct sockaddr_in *)res->ai_addr)->sin_addr;
        freeaddrinfo(res);
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    rbuf = malloc(RBUF_SIZE);
    if (epfd < 0 || !rbuf)
        die("setup failed");

    int rc;
    switch (opt.mode) {
    case MODE_FANOUT: rc = run_fanout(); break;
    case MODE_CALLS: rc = run_calls(); break;
    default: rc = run_connect(); break;
    }
    fflush(stdout);
    return rc;
}
