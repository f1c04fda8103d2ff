
/*
 * Copyright (C) Ahava
 *
 * Unit test of ngx_ahava_ws_frame (the RFC 6455 codec), TAP output.
 *
 * Every parser case runs with its input whole, cut in two at every byte
 * (in three pieces too when short) and delivered one byte at a time, each
 * piece in its own exactly sized heap block so that ASan sees any read
 * past a chunk; the events, written as a line such as
 * "ping(78) text(Hello) error(1007)", must be the same every time.
 */


#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_ahava_ws_frame.h"


#define WS_STREAM_MAX  (2 * 65536 + 4096)
#define WS_LOG_MAX     8192

#define S(s)           (const unsigned char *) (s), (sizeof(s) - 1)


typedef struct {
    const char  *name;
    const char  *bytes;
    size_t       len;
    int          valid;         /* 1 valid, 0 not */
    int          fail_at;       /* byte feed() fails on, -1 none */
} ws_utf8_case_t;


static int             tests;
static int             failures;

/* the client bytes of the case at hand, built by put_*() */
static unsigned char   stream[WS_STREAM_MAX];
static size_t          slen;
static uint32_t        mask_seed = 1;

/* the events of one run */
static char            log_buf[WS_LOG_MAX];
static size_t          log_len;


static void
ok(int cond, const char *fmt, ...)
{
    va_list  args;

    tests++;

    if (!cond) {
        failures++;
    }

    printf("%sok %d - ", cond ? "" : "not ", tests);

    va_start(args, fmt);
    vprintf(fmt, args);
    va_end(args);

    printf("\n");
}


/* a TAP comment showing a log, bytes outside ASCII escaped */

static void
diag(const char *what, const char *s)
{
    printf("# %s: '", what);

    for ( /* void */ ; *s; s++) {
        if (*s >= 0x20 && *s < 0x7f) {
            putchar(*s);

        } else {
            printf("\\x%02x", (unsigned char) *s);
        }
    }

    printf("'\n");
}


static uint32_t
fnv(const unsigned char *p, size_t n)
{
    size_t    i;
    uint32_t  h;

    h = 2166136261u;

    for (i = 0; i < n; i++) {
        h = (h ^ p[i]) * 16777619u;
    }

    return h;
}


/* how a payload over 32 bytes is logged: kind[length:hash] */

static const char *
summary(const char *kind, const unsigned char *p, size_t n)
{
    static char  buf[64];

    snprintf(buf, sizeof(buf), "%s[%zu:%08x]", kind, n, fnv(p, n));

    return buf;
}


static void
log_add(const char *fmt, ...)
{
    int      n;
    va_list  args;

    if (log_len >= WS_LOG_MAX - 1) {
        return;
    }

    va_start(args, fmt);
    n = vsnprintf(log_buf + log_len, WS_LOG_MAX - log_len, fmt, args);
    va_end(args);

    if (n > 0) {
        log_len += (size_t) n;

        if (log_len > WS_LOG_MAX - 1) {
            log_len = WS_LOG_MAX - 1;
        }
    }
}


static void
log_event(const ngx_ahava_ws_event_t *ev, const unsigned char *msg,
    size_t max_message)
{
    size_t       i;
    const char  *kind;

    if (log_len) {
        log_add(" ");
    }

    switch (ev->opcode) {
    case NGX_AHAVA_WS_OP_TEXT:
        kind = "text";
        break;
    case NGX_AHAVA_WS_OP_BINARY:
        kind = "bin";
        break;
    case NGX_AHAVA_WS_OP_PING:
        kind = "ping";
        break;
    case NGX_AHAVA_WS_OP_PONG:
        kind = "pong";
        break;
    case NGX_AHAVA_WS_OP_CLOSE:
        kind = "close";
        break;
    default:
        log_add("?%d", ev->opcode);
        return;
    }

    /* where the payload must be, and how big it may be */

    if (ev->opcode & 0x08) {
        if (ev->data != ev->payload || ev->len > NGX_AHAVA_WS_MAX_CONTROL) {
            log_add("!ptr ");
        }

    } else if (ev->data != msg || ev->len > max_message) {
        log_add("!ptr ");
    }

    if (ev->opcode == NGX_AHAVA_WS_OP_CLOSE) {

        if (ev->close_code == NGX_AHAVA_WS_CLOSE_NO_STATUS) {
            if (ev->len != 0 || ev->reason_len != 0) {
                log_add("!close ");
            }

            log_add("close()");
            return;
        }

        if (ev->len < 2
            || ev->close_code != ((unsigned) ev->payload[0] << 8
                                  | ev->payload[1])
            || ev->reason != ev->payload + 2
            || ev->reason_len != ev->len - 2)
        {
            log_add("!close ");
        }

        log_add("close(%u,%.*s)", ev->close_code, (int) ev->reason_len,
                (const char *) ev->reason);
        return;
    }

    if (ev->len > 32) {
        log_add("%s", summary(kind, ev->data, ev->len));
        return;
    }

    if (ev->opcode == NGX_AHAVA_WS_OP_TEXT) {
        log_add("text(%.*s)", (int) ev->len, (const char *) ev->data);
        return;
    }

    log_add("%s(", kind);

    for (i = 0; i < ev->len; i++) {
        log_add("%02x", ev->data[i]);
    }

    log_add(")");
}


/*
 * Parses in[0..n) cut at cuts[0..ncuts) (increasing, in [0, n]) and
 * returns the log of the events.  Each chunk is copied into its own heap
 * block of exactly its size; msg holds exactly max_message bytes.
 */

static const char *
run(const unsigned char *in, size_t n, const size_t *cuts, size_t ncuts,
    size_t max_frame, size_t max_message, unsigned char *msg)
{
    int                    rc, rc2, done;
    size_t                 k, start, end, len, events, size;
    unsigned char         *chunk;
    const unsigned char   *pos, *prev;
    ngx_ahava_ws_event_t   ev, ev2;
    ngx_ahava_ws_parser_t  p;

    log_len = 0;
    log_buf[0] = '\0';

    size = max_message ? max_message : NGX_AHAVA_WS_DEFAULT_MAX;

    ngx_ahava_ws_parser_init(&p, max_frame, max_message, msg);

    start = 0;
    events = 0;
    done = 0;

    for (k = 0; k <= ncuts && !done; k++) {
        end = (k < ncuts) ? cuts[k] : n;
        len = end - start;

        chunk = malloc(len ? len : 1);
        if (chunk == NULL) {
            printf("Bail out! malloc\n");
            exit(1);
        }

        memcpy(chunk, in + start, len);
        pos = chunk;

        for ( ;; ) {
            prev = pos;
            rc = ngx_ahava_ws_parse(&p, &pos, chunk + len, &ev);

            if (pos < prev || pos > chunk + len) {
                log_add(" !pos");
                done = 1;
                break;
            }

            if (rc == NGX_AHAVA_WS_EVENT) {
                log_event(&ev, msg, size);

                /* every event consumes bytes: no endless loop */

                if (++events > n) {
                    log_add(" !loop");
                    done = 1;
                    break;
                }

                continue;
            }

            if (rc == NGX_AHAVA_WS_ERROR) {
                log_add("%serror(%u)", log_len ? " " : "", ev.close_code);

                if (ev.error == NULL) {
                    log_add(" !reason");
                }

                /* the error sticks, whatever comes next */

                rc2 = ngx_ahava_ws_parse(&p, &pos, chunk + len, &ev2);

                if (rc2 != NGX_AHAVA_WS_ERROR
                    || ev2.close_code != ev.close_code
                    || ev2.error != ev.error)
                {
                    log_add(" !sticky");
                }

                done = 1;
                break;
            }

            if (rc != NGX_AHAVA_WS_NEED_MORE || pos != chunk + len) {
                log_add(" !need_more");
                done = 1;
            }

            break;
        }

        free(chunk);
        start = end;
    }

    return log_buf;
}


/*
 * Runs stream[0..slen) whole, cut in two at every byte (at the first and
 * last 64 and every 257th of a long one), in three pieces at every pair
 * of bytes when short, and one byte at a time.
 */

static void
check_lim(const char *desc, size_t max_frame, size_t max_message,
    const char *expect)
{
    int             good;
    size_t          i, j, n, *cuts;
    const char     *got;
    unsigned char  *msg;
    char            bad[WS_LOG_MAX];

    n = slen;

    msg = malloc(max_message ? max_message : NGX_AHAVA_WS_DEFAULT_MAX);
    cuts = malloc((n + 1) * sizeof(size_t));

    if (msg == NULL || cuts == NULL) {
        printf("Bail out! malloc\n");
        exit(1);
    }

    got = run(stream, n, NULL, 0, max_frame, max_message, msg);
    good = (strcmp(got, expect) == 0);
    ok(good, "%s: whole", desc);

    if (!good) {
        diag("got", got);
        diag("expected", expect);
    }

    good = 1;

    for (i = 0; i <= n && good; i++) {
        if (n > 600 && i > 64 && i < n - 64 && i % 257) {
            continue;
        }

        cuts[0] = i;
        got = run(stream, n, cuts, 1, max_frame, max_message, msg);

        if (strcmp(got, expect) != 0) {
            good = 0;
            snprintf(bad, sizeof(bad), "cut at %zu: %s", i, got);
        }
    }

    ok(good, "%s: cut in two at every byte", desc);

    if (!good) {
        diag("got", bad);
        diag("expected", expect);
    }

    if (n <= 48) {
        good = 1;

        for (i = 0; i <= n && good; i++) {
            for (j = i; j <= n && good; j++) {
                cuts[0] = i;
                cuts[1] = j;
                got = run(stream, n, cuts, 2, max_frame, max_message, msg);

                if (strcmp(got, expect) != 0) {
                    good = 0;
                    snprintf(bad, sizeof(bad), "cut at %zu, %zu: %s", i, j,
                             got);
                }
            }
        }

        ok(good, "%s: in three pieces, every way", desc);

        if (!good) {
            diag("got", bad);
            diag("expected", expect);
        }
    }

    for (i = 1; i < n; i++) {
        cuts[i - 1] = i;
    }

    got = run(stream, n, cuts, n ? n - 1 : 0, max_frame, max_message, msg);
    good = (strcmp(got, expect) == 0);
    ok(good, "%s: one byte at a time", desc);

    if (!good) {
        diag("got", got);
        diag("expected", expect);
    }

    free(cuts);
    free(msg);
}


static void
check(const char *desc, const char *expect)
{
    check_lim(desc, 0, 0, expect);
}


static void
reset(void)
{
    slen = 0;
}


static void
put_raw(const void *bytes, size_t n)
{
    if (slen + n > WS_STREAM_MAX) {
        printf("Bail out! stream overflow\n");
        exit(1);
    }

    memcpy(stream + slen, bytes, n);
    slen += n;
}


/*
 * Appends a client frame: b0 is the first byte (FIN, RSV, opcode);
 * lenform 0 is the minimal length encoding, 7, 126 or 127 forces one.
 * Each masked frame gets a new masking key.
 */

static void
put_frame(int b0, int lenform, int masked, const void *payload, size_t len)
{
    size_t                i, h;
    unsigned char        *d, key[4];
    const unsigned char  *pl;

    if (slen + 14 + len > WS_STREAM_MAX) {
        printf("Bail out! stream overflow\n");
        exit(1);
    }

    pl = payload;
    d = stream + slen;
    d[0] = (unsigned char) b0;

    if (lenform == 0) {
        lenform = (len < 126) ? 7 : (len < 65536) ? 126 : 127;
    }

    if (lenform == 7) {
        d[1] = (unsigned char) len;
        h = 2;

    } else if (lenform == 126) {
        d[1] = 126;
        d[2] = (unsigned char) (len >> 8);
        d[3] = (unsigned char) len;
        h = 4;

    } else {
        d[1] = 127;

        for (i = 0; i < 8; i++) {
            d[2 + i] = (unsigned char) ((uint64_t) len >> (56 - 8 * i));
        }

        h = 10;
    }

    memset(key, 0, 4);

    if (masked) {
        mask_seed = mask_seed * 1103515245u + 12345u;

        key[0] = (unsigned char) (mask_seed >> 24);
        key[1] = (unsigned char) (mask_seed >> 16);
        key[2] = (unsigned char) (mask_seed >> 8);
        key[3] = (unsigned char) (mask_seed ^ 0x5a);

        d[1] |= 0x80;
        memcpy(d + h, key, 4);
        h += 4;
    }

    for (i = 0; i < len; i++) {
        d[h + i] = pl[i] ^ key[i & 3];
    }

    slen += h + len;
}


static void
put(int b0, const void *payload, size_t len)
{
    put_frame(b0, 0, 1, payload, len);
}


static void
put_str(int b0, const char *s)
{
    put_frame(b0, 0, 1, s, strlen(s));
}


static void
put_close(unsigned code, const char *reason)
{
    size_t         n;
    unsigned char  buf[256];

    buf[0] = (unsigned char) (code >> 8);
    buf[1] = (unsigned char) code;
    n = strlen(reason);
    memcpy(buf + 2, reason, n);

    put(0x88, buf, 2 + n);
}


/* the UTF-8 validator fed in the three ways, then the parser on it */

static void
utf8_case(const ws_utf8_case_t *c)
{
    int                   rc, good, first_fail;
    size_t                i;
    const unsigned char  *b;
    ngx_ahava_utf8_t   u;
    char                  desc[128], expect[256];

    b = (const unsigned char *) c->bytes;

    ngx_ahava_utf8_init(&u);
    rc = ngx_ahava_utf8_feed(&u, b, c->len);

    ok(rc == (c->fail_at >= 0 ? -1 : 0)
       && ngx_ahava_utf8_finished(&u) == c->valid
       && ngx_ahava_utf8_valid(b, c->len) == c->valid,
       "utf8 %s: whole", c->name);

    good = 1;

    for (i = 0; i <= c->len; i++) {
        ngx_ahava_utf8_init(&u);

        rc = ngx_ahava_utf8_feed(&u, b, i);

        if (rc == 0) {
            rc = ngx_ahava_utf8_feed(&u, b + i, c->len - i);
        }

        if (rc != (c->fail_at >= 0 ? -1 : 0)
            || ngx_ahava_utf8_finished(&u) != c->valid)
        {
            good = 0;
        }
    }

    ok(good, "utf8 %s: cut in two at every byte", c->name);

    ngx_ahava_utf8_init(&u);
    first_fail = -1;

    for (i = 0; i < c->len; i++) {
        if (ngx_ahava_utf8_feed(&u, b + i, 1) != 0 && first_fail < 0) {
            first_fail = (int) i;
        }
    }

    /* once failed, failed for good */

    if (c->fail_at >= 0) {
        snprintf(desc, sizeof(desc), "fails on byte %d", c->fail_at);

    } else {
        snprintf(desc, sizeof(desc), "no failure before the end");
    }

    ok(first_fail == c->fail_at
       && ngx_ahava_utf8_finished(&u) == c->valid
       && (first_fail < 0
           || ngx_ahava_utf8_feed(&u, (const unsigned char *) "a", 1)
              == -1),
       "utf8 %s: one byte at a time, %s", c->name, desc);

    /* the same bytes as a text message, then as one fragment per byte */

    if (c->valid) {
        snprintf(expect, sizeof(expect), "text(%.*s)", (int) c->len,
                 c->bytes);

    } else {
        snprintf(expect, sizeof(expect), "error(1007)");
    }

    reset();
    put(0x81, b, c->len);
    snprintf(desc, sizeof(desc), "text frame of utf8 %s", c->name);
    check(desc, expect);

    if (c->len > 1) {
        reset();

        for (i = 0; i < c->len; i++) {
            put(i == 0 ? 0x01 : (i == c->len - 1) ? 0x80 : 0x00, b + i, 1);
        }

        snprintf(desc, sizeof(desc), "utf8 %s in 1-byte fragments", c->name);
        check(desc, expect);
    }
}


static const ws_utf8_case_t  utf8_cases[] = {

    /* valid, Markus Kuhn's sections 1 and 2 */

    { "empty", "", 0, 1, -1 },
    { "ASCII", "Hello, world", 12, 1, -1 },
    { "kosme", "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", 11, 1, -1 },
    { "U+0080", "\xc2\x80", 2, 1, -1 },
    { "U+07FF", "\xdf\xbf", 2, 1, -1 },
    { "U+0800", "\xe0\xa0\x80", 3, 1, -1 },
    { "U+D7FF", "\xed\x9f\xbf", 3, 1, -1 },
    { "U+E000", "\xee\x80\x80", 3, 1, -1 },
    { "U+FFFD", "\xef\xbf\xbd", 3, 1, -1 },
    { "U+FFFF", "\xef\xbf\xbf", 3, 1, -1 },
    { "U+10000", "\xf0\x90\x80\x80", 4, 1, -1 },
    { "U+10FFFF", "\xf4\x8f\xbf\xbf", 4, 1, -1 },
    { "emoji U+1F600", "\xf0\x9f\x98\x80", 4, 1, -1 },
    { "mixed", "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80" "z", 11, 1, -1 },
    { "ASCII run then 2 bytes", "abcdefghijklmnopq\xc3\xa9" "rstuvwxyz",
      28, 1, -1 },

    /* unexpected continuation bytes (3.1) */

    { "lone 80", "\x80", 1, 0, 0 },
    { "lone BF", "\xbf", 1, 0, 0 },
    { "a then 80", "a\x80", 2, 0, 1 },
    { "80 BF 80", "\x80\xbf\x80", 3, 0, 0 },

    /* impossible bytes (3.5) */

    { "FE", "\xfe", 1, 0, 0 },
    { "FF", "\xff", 1, 0, 0 },
    { "FE FE FF FF", "\xfe\xfe\xff\xff", 4, 0, 0 },
    { "F5 lead", "\xf5\x80\x80\x80", 4, 0, 0 },
    { "5-byte F8", "\xf8\x88\x80\x80\x80", 5, 0, 0 },
    { "6-byte FC", "\xfc\x84\x80\x80\x80\x80", 6, 0, 0 },

    /* overlongs (4.1, 4.2) */

    { "overlong C0 80", "\xc0\x80", 2, 0, 0 },
    { "overlong C1 BF", "\xc1\xbf", 2, 0, 0 },
    { "overlong E0 80 80", "\xe0\x80\x80", 3, 0, 1 },
    { "overlong E0 9F BF", "\xe0\x9f\xbf", 3, 0, 1 },
    { "overlong F0 80 80 80", "\xf0\x80\x80\x80", 4, 0, 1 },
    { "overlong F0 8F BF BF", "\xf0\x8f\xbf\xbf", 4, 0, 1 },

    /* surrogates (5.1, 5.2) and beyond U+10FFFF */

    { "surrogate ED A0 80", "\xed\xa0\x80", 3, 0, 1 },
    { "surrogate ED BF BF", "\xed\xbf\xbf", 3, 0, 1 },
    { "surrogate pair", "\xed\xa0\x80\xed\xb0\x80", 6, 0, 1 },
    { "U+110000 F4 90 80 80", "\xf4\x90\x80\x80", 4, 0, 1 },

    /* a continuation missing (3.3) */

    { "C2 41", "\xc2\x41", 2, 0, 1 },
    { "E2 28 A1", "\xe2\x28\xa1", 3, 0, 1 },
    { "C2 C2 80", "\xc2\xc2\x80", 3, 0, 1 },
    { "E2 82 41", "\xe2\x82\x41", 3, 0, 2 },
    { "F0 9F 98 41", "\xf0\x9f\x98\x41", 4, 0, 3 },
    { "ASCII run then FF", "abcdefghijklmnop\xff", 17, 0, 16 },
    { "FFFD then C0", "\xef\xbf\xbd\xc0", 4, 0, 3 },

    /* truncated at the end: only finished() can tell */

    { "truncated C2", "\xc2", 1, 0, -1 },
    { "truncated E0 A0", "\xe0\xa0", 2, 0, -1 },
    { "truncated E2 82", "\xe2\x82", 2, 0, -1 },
    { "truncated F0 90 80", "\xf0\x90\x80", 3, 0, -1 },
    { "truncated F4 8F BF", "\xf4\x8f\xbf", 3, 0, -1 },
    { "truncated emoji after ASCII", "abc\xf0\x9f\x98", 6, 0, -1 }
};


static void
test_valid_frames(void)
{
    size_t         i;
    unsigned char  big[65536 + 1];
    char           desc[64], expect[256];

    static const unsigned char  rfc_hello[] = {
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
    };
    static const unsigned char  rfc_pong[] = {
        0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
    };
    static const unsigned char  bin4[] = { 0x00, 0xff, 0x80, 0x7f };

    for (i = 0; i < sizeof(big); i++) {
        big[i] = (unsigned char) (i * 7 + (i >> 8));
    }

    reset();
    put_raw(rfc_hello, sizeof(rfc_hello));
    check("RFC 6455 5.7 masked text Hello", "text(Hello)");

    reset();
    put_raw(rfc_pong, sizeof(rfc_pong));
    check("RFC 6455 5.7 masked pong Hello", "pong(48656c6c6f)");

    reset();
    put_str(0x01, "Hel");
    put_str(0x80, "lo");
    check("fragmented text 01 + 80", "text(Hello)");

    reset();
    put_str(0x01, "He");
    put_str(0x00, "");
    put_str(0x00, "ll");
    put_str(0x80, "o");
    check("text in four fragments, one empty", "text(Hello)");

    reset();
    put_str(0x89, "ping!");
    check("ping with payload", "ping(70696e6721)");

    reset();
    put(0x89, "", 0);
    put(0x8a, "", 0);
    check("empty ping and pong", "ping() pong()");

    reset();
    put(0x82, bin4, sizeof(bin4));
    check("binary", "bin(00ff807f)");

    reset();
    put(0x81, "", 0);
    check("empty text", "text()");

    reset();
    put(0x82, "", 0);
    check("empty binary", "bin()");

    reset();
    put(0x82, big, 126);
    check("126 bytes: first 16-bit length", summary("bin", big, 126));

    reset();
    put(0x82, big, 256);
    check("256 bytes: 16-bit length", summary("bin", big, 256));

    reset();
    put(0x82, big, 65535);
    check("65535 bytes: last 16-bit length", summary("bin", big, 65535));

    reset();
    put(0x82, big, 65536);
    check("65536 bytes: 64-bit length, at max_frame",
          summary("bin", big, 65536));

    reset();
    put(0x81, "abcdefghijklmnopqrstuvwxyz0123456789ABC", 39);
    check("39-byte text, unmasked at every offset",
          summary("text", (const unsigned char *)
                  "abcdefghijklmnopqrstuvwxyz0123456789ABC", 39));

    reset();
    put_close(1000, "bye");
    check("close 1000 with a reason", "close(1000,bye)");

    reset();
    put(0x88, "", 0);
    check("close without a code", "close()");

    reset();
    put_close(1001, "");
    check("close 1001 without a reason", "close(1001,)");

    reset();
    put_close(4999, "Shalom \xd7\xa9\xd7\x9c\xd7\x95\xd7\x9d");
    check("close 4999 with a UTF-8 reason",
          "close(4999,Shalom \xd7\xa9\xd7\x9c\xd7\x95\xd7\x9d)");

    memset(big, 'x', 125);
    reset();
    put(0x89, big, 125);
    check("ping of 125 bytes", summary("ping", big, 125));

    reset();
    memcpy(big, "\x03\xe8", 2);
    put(0x88, big, 125);
    snprintf(expect, sizeof(expect), "close(1000,%.123s)", big + 2);
    check("close of 125 bytes", expect);

    /* several frames in one buffer */

    reset();
    put_str(0x81, "a");
    put_str(0x89, "p");
    put_str(0x02, "12");
    put_str(0x80, "34");
    put_str(0x8a, "");
    put_str(0x81, "b");
    put_close(1001, "");
    check("seven frames in one buffer",
          "text(a) ping(70) bin(31323334) pong() text(b) close(1001,)");

    /* control frames between the fragments of a message */

    reset();
    put_str(0x01, "Hel");
    put_str(0x89, "x");
    put_str(0x00, "l");
    put_str(0x8a, "y");
    put_str(0x80, "o");
    check("ping and pong inside a fragmented text",
          "ping(78) pong(79) text(Hello)");

    reset();
    put_str(0x02, "ab");
    put_close(1000, "");
    put_str(0x80, "cd");
    check("close inside a fragmented binary",
          "close(1000,) bin(61626364)");

    reset();
    put_str(0x01, "a\xe2\x82");
    put_str(0x89, "");
    put_str(0x80, "\xac");
    check("euro sign split across fragments around a ping",
          "ping() text(a\xe2\x82\xac)");

    /* a frame after one that completed a message reuses the buffer */

    reset();
    put_str(0x81, "first");
    put_str(0x01, "sec");
    put_str(0x80, "ond");
    put_str(0x82, "3");
    check("messages back to back", "text(first) text(second) bin(33)");

    /* a prefix of a valid stream: nothing yet, no error */

    reset();
    put_str(0x01, "Hel");
    put_str(0x80, "lo");
    slen -= 3;
    check("truncated fragmented text: no event yet", "");

    /* binary data is not UTF-8 checked */

    reset();
    put(0x82, "\xc0\x80\xff", 3);
    check("binary with invalid UTF-8 bytes", "bin(c080ff)");

    /* close codes a peer may send */

    {
        static const unsigned  codes[] = {
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011,
            1012, 1013, 1014, 3000, 3999, 4000, 4999
        };

        for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
            reset();
            put_close(codes[i], "r");
            snprintf(expect, sizeof(expect), "close(%u,r)", codes[i]);
            snprintf(desc, sizeof(desc), "close code %u accepted",
                     codes[i]);
            check(desc, expect);
        }
    }
}


static void
test_errors(void)
{
    int            op;
    size_t         i;
    char           desc[128], expect[128];
    unsigned char  big[200];

    static const unsigned char  rfc_unmasked[] = {
        0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f
    };

    memset(big, 'z', sizeof(big));

    /* masking */

    reset();
    put_raw(rfc_unmasked, sizeof(rfc_unmasked));
    check("unmasked text (RFC 5.7) -> 1002", "error(1002)");

    reset();
    put_str(0x81, "ok");
    put_frame(0x89, 0, 0, "p", 1);
    check("unmasked ping after a good frame -> 1002",
          "text(ok) error(1002)");

    /* reserved bits */

    reset();
    put_str(0xc1, "x");
    check("RSV1 set -> 1002", "error(1002)");

    reset();
    put_str(0xa1, "x");
    check("RSV2 set -> 1002", "error(1002)");

    reset();
    put_str(0x91, "x");
    check("RSV3 set -> 1002", "error(1002)");

    reset();
    put_str(0x01, "x");
    put_str(0xc0, "y");
    check("RSV1 on a continuation -> 1002", "error(1002)");

    reset();
    put_str(0xc9, "");
    check("RSV1 on a ping -> 1002", "error(1002)");

    /* unknown opcodes */

    for (op = 3; op <= 0xf; op++) {
        if (op >= 8 && op <= 0xa) {
            continue;
        }

        reset();
        put_str(0x80 | op, "x");
        snprintf(desc, sizeof(desc), "opcode 0x%x -> 1002", op);
        check(desc, "error(1002)");
    }

    /* control frames */

    reset();
    put(0x89, big, 126);
    check("ping of 126 bytes -> 1002", "error(1002)");

    reset();
    put(0x8a, big, 126);
    check("pong of 126 bytes -> 1002", "error(1002)");

    reset();
    put(0x88, big, 126);
    check("close of 126 bytes -> 1002", "error(1002)");

    reset();
    put_frame(0x89, 127, 1, big, 5);
    check("ping with a 64-bit length -> 1002", "error(1002)");

    reset();
    put_str(0x09, "p");
    check("fragmented ping -> 1002", "error(1002)");

    reset();
    put_str(0x0a, "p");
    check("fragmented pong -> 1002", "error(1002)");

    reset();
    put(0x08, "\x03\xe8", 2);
    check("fragmented close -> 1002", "error(1002)");

    reset();
    put_str(0x01, "a");
    put_str(0x09, "p");
    put_str(0x80, "b");
    check("fragmented ping inside a message -> 1002", "error(1002)");

    /* lengths */

    reset();
    put_raw("\x82\xff\x80\x00\x00\x00\x00\x00\x00\x00", 10);
    check("64-bit length with the high bit -> 1002", "error(1002)");

    reset();
    put_raw("\x82\xff\xff\xff\xff\xff\xff\xff\xff\xff", 10);
    check("64-bit length of all ones -> 1002", "error(1002)");

    reset();
    put_frame(0x82, 126, 1, big, 125);
    check("non-minimal: 125 in 16 bits -> 1002", "error(1002)");

    reset();
    put_frame(0x82, 126, 1, big, 0);
    check("non-minimal: 0 in 16 bits -> 1002", "error(1002)");

    reset();
    put_frame(0x82, 127, 1, big, 126);
    check("non-minimal: 126 in 64 bits -> 1002", "error(1002)");

    reset();
    put_raw("\x82\xff\x00\x00\x00\x00\x00\x00\xff\xff", 10);
    check("non-minimal: 65535 in 64 bits -> 1002", "error(1002)");

    /* oversize: refused from the header alone */

    reset();
    put_raw("\x82\xff\x00\x00\x00\x00\x00\x01\x00\x01", 10);
    check("header says 65537: 1009 before mask and payload", "error(1009)");

    reset();
    put_raw("\x82\xff\x00\x00\x00\x00\x00\x01\x00\x01", 10);
    put_raw("\x01\x02\x03\x04zzzzzzzz", 12);
    check("header says 65537 with payload bytes -> 1009", "error(1009)");

    reset();
    put_raw("\x82\xff\x7f\xff\xff\xff\xff\xff\xff\xff", 10);
    check("header says 2^63-1 -> 1009", "error(1009)");

    reset();
    put_raw("\x81\xfe\x03\xe9", 4);
    check_lim("max_frame 1000, header says 1001 -> 1009", 1000, 0,
              "error(1009)");

    reset();
    put(0x82, big, 200);
    check_lim("max_frame 199, frame of 200 -> 1009", 199, 0, "error(1009)");

    reset();
    put(0x82, big, 200);
    check_lim("max_frame 200, frame of 200", 200, 0,
              summary("bin", big, 200));

    reset();
    put(0x89, big, 10);
    check_lim("max_frame 9 applies to a ping of 10 -> 1009", 9, 0,
              "error(1009)");

    reset();
    put_raw("\x82\xff\x00\x00\x00\x00\x00\x01\x00\x00", 10);
    check_lim("message of 65536 over max_message 1000 -> 1009", 131072,
              1000, "error(1009)");

    /* oversize message through fragments */

    reset();
    put(0x01, big, 60);
    put(0x80, big, 60);
    check_lim("60 + 60 over max_message 100 -> 1009", 100, 100,
              "error(1009)");

    reset();
    put(0x01, big, 60);
    put_raw("\x80\xbc", 2);
    check_lim("60 + header of 60: 1009 before that payload", 100, 100,
              "error(1009)");

    reset();
    put(0x01, big, 60);
    put(0x89, big, 60);
    put(0x80, big, 40);
    snprintf(expect, sizeof(expect), "%s ", summary("ping", big, 60));
    strcat(expect, summary("text", big, 100));
    check_lim("60 + ping 60 + 40 = max_message 100", 100, 100, expect);

    reset();
    put(0x02, big, 50);
    put(0x00, big, 50);
    put(0x00, big, 1);
    check_lim("50 + 50 + 1 over max_message 100 -> 1009", 100, 100,
              "error(1009)");

    /* fragmentation order */

    reset();
    put_str(0x80, "x");
    check("continuation without a message -> 1002", "error(1002)");

    reset();
    put_str(0x00, "x");
    check("non-final continuation without a message -> 1002",
          "error(1002)");

    reset();
    put_str(0x81, "a");
    put_str(0x80, "b");
    check("continuation after a complete message -> 1002",
          "text(a) error(1002)");

    reset();
    put_str(0x01, "a");
    put_str(0x81, "b");
    check("text while a text is in progress -> 1002", "error(1002)");

    reset();
    put_str(0x01, "a");
    put_str(0x02, "b");
    check("binary while a text is in progress -> 1002", "error(1002)");

    reset();
    put_str(0x02, "a");
    put_str(0x89, "");
    put_str(0x82, "b");
    check("binary while a binary is in progress, after a ping -> 1002",
          "ping() error(1002)");

    /* UTF-8 in text messages */

    reset();
    put_str(0x81, "\xc0\x80");
    check("overlong text -> 1007", "error(1007)");

    reset();
    put_str(0x81, "ok");
    put_str(0x81, "\xed\xa0\x80");
    check("surrogate text after a good one -> 1007", "text(ok) error(1007)");

    reset();
    put_str(0x01, "a\xe2\x82");
    put_str(0x80, "\x28");
    check("invalid sequence split across fragments -> 1007", "error(1007)");

    reset();
    put_str(0x01, "ok\xff");
    check("bad byte in a non-final fragment: 1007 at once", "error(1007)");

    reset();
    put_str(0x81, "ab\xc0" "cdefghi");
    slen -= 7;
    check("bad byte before the frame's end: 1007 at once", "error(1007)");

    reset();
    put_str(0x81, "\xe2\x82");
    check("text ends inside a sequence -> 1007", "error(1007)");

    reset();
    put_str(0x01, "\xe2\x82");
    put_str(0x80, "");
    check("fragmented text ends inside a sequence -> 1007", "error(1007)");

    reset();
    put_str(0x01, "\xf0\x9f");
    put_str(0x00, "\x98");
    put_str(0x80, "");
    check("emoji cut short by the last fragment -> 1007", "error(1007)");

    /* close frames */

    reset();
    put(0x88, "\x03", 1);
    check("close of 1 byte -> 1002", "error(1002)");

    {
        static const unsigned  codes[] = {
            0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999,
            5000, 65535
        };

        for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
            reset();
            put_close(codes[i], "");
            snprintf(desc, sizeof(desc), "close code %u -> 1002", codes[i]);
            check(desc, "error(1002)");
        }
    }

    reset();
    put_close(1000, "bad \xc0\x80");
    check("close reason with an overlong -> 1007", "error(1007)");

    reset();
    put_close(1000, "cut \xe2\x82");
    check("close reason ending inside a sequence -> 1007", "error(1007)");

    /* the error sticks: later good frames are not parsed */

    reset();
    put_str(0x81, "a");
    put_str(0xc1, "b");
    put_str(0x81, "c");
    put_str(0x89, "d");
    check("no event after an error", "text(a) error(1002)");
}


static void
test_api(void)
{
    int                    rc;
    size_t                 n;
    const char            *err;
    unsigned char          msg[64];
    const unsigned char   *pos, *last;
    ngx_ahava_ws_event_t   ev;
    ngx_ahava_ws_parser_t  p;

    ngx_ahava_ws_parser_init(&p, 0, 0, msg);
    ok(p.max_frame == 65536 && p.max_message == 65536 && p.msg_buf == msg,
       "api: 0 selects the 64 KiB defaults");

    ngx_ahava_ws_parser_init(&p, 32, 64, msg);
    ok(p.max_frame == 32 && p.max_message == 64,
       "api: explicit limits kept");

    pos = msg;
    rc = ngx_ahava_ws_parse(&p, &pos, msg, &ev);
    ok(rc == NGX_AHAVA_WS_NEED_MORE && pos == msg,
       "api: empty input is NEED_MORE");

    /* two frames in one buffer: the first event stops right after it */

    reset();
    put_str(0x81, "one");
    n = slen;
    put_str(0x89, "two");

    pos = stream;
    last = stream + slen;

    rc = ngx_ahava_ws_parse(&p, &pos, last, &ev);
    ok(rc == NGX_AHAVA_WS_EVENT && pos == stream + n
       && ev.opcode == NGX_AHAVA_WS_OP_TEXT && ev.len == 3
       && ev.data == msg && memcmp(msg, "one", 3) == 0,
       "api: first event, *pos just past its frame, data in msg_buf");

    rc = ngx_ahava_ws_parse(&p, &pos, last, &ev);
    ok(rc == NGX_AHAVA_WS_EVENT && pos == last
       && ev.opcode == NGX_AHAVA_WS_OP_PING && ev.len == 3
       && ev.data == ev.payload && memcmp(ev.payload, "two", 3) == 0,
       "api: second event, control payload copied into the event");

    ok(memcmp(msg, "one", 3) == 0,
       "api: a control frame leaves the message buffer alone");

    rc = ngx_ahava_ws_parse(&p, &pos, last, &ev);
    ok(rc == NGX_AHAVA_WS_NEED_MORE && pos == last,
       "api: then NEED_MORE");

    /* oversize: refused with only the header in hand */

    reset();
    put_raw("\x82\xff\x00\x00\x00\x00\x00\x01\x00\x01", 10);
    ngx_ahava_ws_parser_init(&p, 64, 64, msg);
    pos = stream;
    rc = ngx_ahava_ws_parse(&p, &pos, stream + slen, &ev);
    ok(rc == NGX_AHAVA_WS_ERROR && ev.close_code == 1009
       && pos == stream + slen && ev.error != NULL
       && strcmp(ev.error, "frame too big") == 0,
       "api: 65537 refused from the header, reason 'frame too big'");

    err = ev.error;
    pos = stream;
    rc = ngx_ahava_ws_parse(&p, &pos, stream + 2, &ev);
    ok(rc == NGX_AHAVA_WS_ERROR && ev.close_code == 1009 && ev.error == err,
       "api: the error is sticky");

    reset();
    put_str(0x81, "\xff");
    ngx_ahava_ws_parser_init(&p, 64, 64, msg);
    pos = stream;
    rc = ngx_ahava_ws_parse(&p, &pos, stream + slen, &ev);
    ok(rc == NGX_AHAVA_WS_ERROR && ev.close_code == 1007
       && strcmp(ev.error, "invalid UTF-8 in a text message") == 0,
       "api: 1007 with its reason");

    reset();
    put_close(1000, "fine");
    ngx_ahava_ws_parser_init(&p, 64, 64, msg);
    pos = stream;
    rc = ngx_ahava_ws_parse(&p, &pos, stream + slen, &ev);
    ok(rc == NGX_AHAVA_WS_EVENT && ev.opcode == NGX_AHAVA_WS_OP_CLOSE
       && ev.close_code == 1000 && ev.reason_len == 4
       && memcmp(ev.reason, "fine", 4) == 0 && ev.len == 6,
       "api: close event carries code and reason");
}


/* the frame encoder: header bytes, then a round trip through the parser */

static void
test_encoder(void)
{
    int            good;
    size_t         i, n, h, lens[5];
    unsigned char  buf[NGX_AHAVA_WS_MAX_HEADER + 4], *big;
    unsigned char  pl[NGX_AHAVA_WS_MAX_CONTROL];
    char           desc[64];

    n = ngx_ahava_ws_frame_header(buf, NGX_AHAVA_WS_OP_TEXT, 1, 0);
    ok(n == 2 && memcmp(buf, "\x81\x00", 2) == 0, "encoder: text of 0");

    n = ngx_ahava_ws_frame_header(buf, NGX_AHAVA_WS_OP_TEXT, 1, 125);
    ok(n == 2 && memcmp(buf, "\x81\x7d", 2) == 0, "encoder: text of 125");

    n = ngx_ahava_ws_frame_header(buf, NGX_AHAVA_WS_OP_BINARY, 1, 126);
    ok(n == 4 && memcmp(buf, "\x82\x7e\x00\x7e", 4) == 0,
       "encoder: binary of 126, 16-bit length");

    n = ngx_ahava_ws_frame_header(buf, NGX_AHAVA_WS_OP_TEXT, 1, 65535);
    ok(n == 4 && memcmp(buf, "\x81\x7e\xff\xff", 4) == 0,
       "encoder: text of 65535, 16-bit length");

    n = ngx_ahava_ws_frame_header(buf, NGX_AHAVA_WS_OP_TEXT, 1, 65536);
    ok(n == 10
       && memcmp(buf, "\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00", 10) == 0,
       "encoder: text of 65536, 64-bit length");

    n = ngx_ahava_ws_frame_header(buf, NGX_AHAVA_WS_OP_BINARY, 1,
                                  0x0123456789abULL);
    ok(n == 10
       && memcmp(buf, "\x82\x7f\x00\x00\x01\x23\x45\x67\x89\xab", 10) == 0,
       "encoder: 48-bit length, big-endian");

    n = ngx_ahava_ws_frame_header(buf, NGX_AHAVA_WS_OP_TEXT, 0, 3);
    ok(n == 2 && memcmp(buf, "\x01\x03", 2) == 0,
       "encoder: non-final fragment");

    n = ngx_ahava_ws_frame_header(buf, NGX_AHAVA_WS_OP_CONT, 1, 3);
    ok(n == 2 && memcmp(buf, "\x80\x03", 2) == 0,
       "encoder: final continuation");

    n = ngx_ahava_ws_frame_header(buf, NGX_AHAVA_WS_OP_CLOSE, 1, 2);
    ok(n == 2 && memcmp(buf, "\x88\x02", 2) == 0, "encoder: close");

    n = ngx_ahava_ws_frame_header(buf, NGX_AHAVA_WS_OP_PING, 1, 0);
    ok(n == 2 && memcmp(buf, "\x89\x00", 2) == 0 && !(buf[1] & 0x80),
       "encoder: ping, unmasked");

    /*
     * Round trip: the encoder's header with the mask bit set and a key
     * appended is a client frame the parser must accept.
     */

    lens[0] = 0;
    lens[1] = 125;
    lens[2] = 126;
    lens[3] = 65535;
    lens[4] = 65536;

    big = malloc(65536);
    if (big == NULL) {
        printf("Bail out! malloc\n");
        exit(1);
    }

    for (i = 0; i < 65536; i++) {
        big[i] = (unsigned char) (i ^ (i >> 9));
    }

    for (i = 0; i < 5; i++) {
        h = ngx_ahava_ws_frame_header(buf, NGX_AHAVA_WS_OP_BINARY, 1,
                                      lens[i]);
        buf[1] |= 0x80;
        memcpy(buf + h, "\0\0\0\0", 4);

        reset();
        put_raw(buf, h + 4);
        put_raw(big, lens[i]);

        snprintf(desc, sizeof(desc), "encoder round trip of %zu", lens[i]);

        if (lens[i] > 32) {
            check(desc, summary("bin", big, lens[i]));

        } else {
            check(desc, "bin()");
        }
    }

    free(big);

    /* close payloads */

    n = ngx_ahava_ws_close_payload(pl, 1000, (const unsigned char *) "bye",
                                   3);
    ok(n == 5 && memcmp(pl, "\x03\xe8" "bye", 5) == 0,
       "close payload: 1000 + bye");

    n = ngx_ahava_ws_close_payload(pl, 1009, NULL, 0);
    ok(n == 2 && memcmp(pl, "\x03\xf1", 2) == 0,
       "close payload: 1009 without a reason");

    n = ngx_ahava_ws_close_payload(pl, 0, (const unsigned char *) "x", 1);
    ok(n == 0, "close payload: code 0 is the empty payload");

    {
        unsigned char  reason[300];

        memset(reason, 'r', sizeof(reason));
        n = ngx_ahava_ws_close_payload(pl, 1000, reason, sizeof(reason));
        ok(n == 125 && pl[124] == 'r', "close payload: ASCII reason cut "
           "to 123 bytes");

        /* 2-byte characters: 123 would split the 62nd */

        for (i = 0; i < sizeof(reason); i += 2) {
            reason[i] = 0xc3;
            reason[i + 1] = 0xa9;
        }

        n = ngx_ahava_ws_close_payload(pl, 1000, reason, sizeof(reason));
        ok(n == 124 && ngx_ahava_utf8_valid(pl + 2, n - 2),
           "close payload: 2-byte reason cut on a character boundary");

        /* 4-byte characters: 123 = 30 * 4 + 3, keep 120 */

        for (i = 0; i < 300; i += 4) {
            memcpy(reason + i, "\xf0\x9f\x98\x80", 4);
        }

        n = ngx_ahava_ws_close_payload(pl, 4000, reason, sizeof(reason));
        ok(n == 122 && ngx_ahava_utf8_valid(pl + 2, n - 2),
           "close payload: 4-byte reason cut on a character boundary");

        n = ngx_ahava_ws_close_payload(pl, 4000, reason, 120);
        ok(n == 122, "close payload: 120 bytes kept whole");
    }

    n = ngx_ahava_ws_close_payload(pl, 1001, (const unsigned char *) "gone",
                                   4);
    h = ngx_ahava_ws_frame_header(buf, NGX_AHAVA_WS_OP_CLOSE, 1, n);
    buf[1] |= 0x80;
    memcpy(buf + h, "\x11\x22\x33\x44", 4);

    for (i = 0; i < n; i++) {
        pl[i] ^= buf[h + (i & 3)];
    }

    reset();
    put_raw(buf, h + 4);
    put_raw(pl, n);
    check("close payload round trip", "close(1001,gone)");

    /* close code table */

    good = 1;

    for (i = 0; i < 70000; i++) {
        if (ngx_ahava_ws_close_code_valid((unsigned) i)
            != ((i >= 1000 && i <= 1003) || (i >= 1007 && i <= 1014)
                || (i >= 3000 && i <= 4999)))
        {
            good = 0;
        }
    }

    ok(good, "close_code_valid: 1000-1003, 1007-1014, 3000-4999 only");
}


static void
test_handshake(void)
{
    size_t          i;
    unsigned char  *out;

    static const char  *bad_keys[] = {
        "",
        "dGhlIHNhbXBsZSBub25jZQ=",
        "dGhlIHNhbXBsZSBub25jZQ===",
        "dGhlIHNhbXBsZSBub25jZQAA",
        "dGhlIHNhbXBsZSBub25jZR==",
        "dGhlIHNhbXBsZSBub25jZf==",
        "dGhlIHNhbXBsZSBub25j!Q==",
        "dGhlIHNhbXBsZSBub25j-Q==",
        "dGhlIHNhbXBsZSBub25j_Q==",
        "dGhlIHNhbXBsZSBu b25jZQ==",
        "AAAAAAAAAAAAAAAAAAAAAAA=",
        "AAAAAAAAAAAAAAAAAAAA",
        "========================",
        "dGhlIHNhbXBsZSBub25jZQ==\r\n"
    };

    /* exactly 28 bytes, so ASan sees a NUL written past them */

    out = malloc(NGX_AHAVA_WS_ACCEPT_LEN);
    if (out == NULL) {
        printf("Bail out! malloc\n");
        exit(1);
    }

    /*
     * RFC 6455 section 1.3.  (The value is s3pPLMBiTxaQ9kYGzzhZRbK+xOo=;
     * a variant "...9kVGGzYxPk+xOo0=" circulates but is not SHA-1 of it.)
     */

    ok(ngx_ahava_ws_accept_key(S("dGhlIHNhbXBsZSBub25jZQ=="), out) == 0
       && memcmp(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", 28) == 0,
       "accept: RFC 6455 1.3 example");

    ok(ngx_ahava_ws_accept_key(S("x3JJHMbDL1EzLkh9GBhXDw=="), out) == 0
       && memcmp(out, "HSmrc0sMlYUkAGmm5OPpG2HaGWk=", 28) == 0,
       "accept: second known answer");

    ok(ngx_ahava_ws_accept_key(S("AQIDBAUGBwgJCgsMDQ4PEA=="), out) == 0
       && memcmp(out, "C/0nmHhBztSRGR1CwL6Tf4ZjwpY=", 28) == 0,
       "accept: third known answer (with / in it)");

    free(out);

    ok(ngx_ahava_ws_key_valid(S("dGhlIHNhbXBsZSBub25jZQ==")),
       "key: RFC example valid");

    ok(ngx_ahava_ws_key_valid(S("x3JJHMbDL1EzLkh9GBhXDw=="))
       && ngx_ahava_ws_key_valid(S("AQIDBAUGBwgJCgsMDQ4PEA=="))
       && ngx_ahava_ws_key_valid(S("/+/+/+/+/+/+/+/+/+/+/w=="))
       && ngx_ahava_ws_key_valid(S("AAAAAAAAAAAAAAAAAAAAAA==")),
       "key: other 16-byte keys valid");

    for (i = 0; i < sizeof(bad_keys) / sizeof(bad_keys[0]); i++) {
        ok(!ngx_ahava_ws_key_valid((const unsigned char *) bad_keys[i],
                                   strlen(bad_keys[i])),
           "key: '%.24s'%s rejected", bad_keys[i],
           strlen(bad_keys[i]) > 24 ? "..." : "");
    }

    ok(!ngx_ahava_ws_key_valid(S("dGhlIHNhbXBsZSBub25j\0Q==")),
       "key: embedded NUL rejected");
}


/* the 8-byte ASCII skip of the validator: a non-ASCII byte anywhere */

static void
test_utf8_words(void)
{
    int                  good;
    size_t               i;
    unsigned char        buf[40];
    ngx_ahava_utf8_t  u;

    good = 1;

    for (i = 0; i < 32; i++) {
        memset(buf, 'a', sizeof(buf));
        buf[i] = 0xff;

        ngx_ahava_utf8_init(&u);

        if (ngx_ahava_utf8_feed(&u, buf, sizeof(buf)) != -1
            || ngx_ahava_utf8_valid(buf, sizeof(buf)))
        {
            good = 0;
        }
    }

    ok(good, "utf8: FF at each of 32 offsets of an ASCII run rejected");

    good = 1;

    for (i = 0; i < 32; i++) {
        memset(buf, 'a', sizeof(buf));
        buf[i] = 0xc3;
        buf[i + 1] = 0xa9;

        if (!ngx_ahava_utf8_valid(buf, sizeof(buf))) {
            good = 0;
        }

        buf[i + 1] = 'a';

        if (ngx_ahava_utf8_valid(buf, sizeof(buf))) {
            good = 0;
        }
    }

    ok(good, "utf8: C3 A9 at each of 32 offsets valid, C3 alone not");
}


int
main(void)
{
    size_t  i;

    test_valid_frames();
    test_errors();
    test_api();
    test_encoder();
    test_handshake();
    test_utf8_words();

    for (i = 0; i < sizeof(utf8_cases) / sizeof(utf8_cases[0]); i++) {
        utf8_case(&utf8_cases[i]);
    }

    printf("1..%d\n", tests);

    return failures ? 1 : 0;
}
