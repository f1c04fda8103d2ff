
/*
 * Copyright (C) Ahava
 *
 * libFuzzer target: arbitrary bytes as the client side of a WebSocket
 * connection, through ngx_ahava_ws_parse().
 *
 * Input layout: byte 0 picks the parser's limits (the defaults, or small
 * ones that make 1009 reachable), byte 1 seeds the chunking, the rest is
 * the stream.  The stream is parsed three times: whole, cut into chunks
 * of lengths drawn from the seed (empty chunks included), and one byte at
 * a time; every chunk sits in its own exactly sized heap block, so ASan
 * sees a read past it.  The three runs must give the same events, byte
 * for byte, and the same error.  Beyond that it checks the contract: a
 * NEED_MORE consumed everything, payloads stay within their buffers, text
 * messages and close reasons are valid UTF-8 by an independent decoder,
 * close codes are ones a peer may send, errors are sticky.
 *
 * The same stream also goes through the UTF-8 validator, which must agree
 * with the decoder and fail exactly on the first byte that no valid text
 * can continue.
 */


#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_ahava_ws_frame.h"


typedef struct {
    unsigned char  *buf;
    size_t          len;
    size_t          cap;
} ws_fuzz_log_t;


static void
log_add(ws_fuzz_log_t *log, const void *p, size_t n)
{
    size_t          cap;
    unsigned char  *buf;

    if (log->len + n > log->cap) {
        cap = (log->cap ? log->cap * 2 : 1024) + n;

        buf = realloc(log->buf, cap);
        if (buf == NULL) {
            abort();
        }

        log->buf = buf;
        log->cap = cap;
    }

    if (n) {
        memcpy(log->buf + log->len, p, n);
        log->len += n;
    }
}


/* RFC 3629 by decoding, written apart from the validator under test */

static int
ref_utf8_valid(const unsigned char *p, size_t n)
{
    size_t    i, k, len;
    uint32_t  cp, min;

    i = 0;

    while (i < n) {

        if (p[i] < 0x80) {
            i++;
            continue;
        }

        if ((p[i] & 0xe0) == 0xc0) {
            len = 2;
            cp = p[i] & 0x1f;
            min = 0x80;

        } else if ((p[i] & 0xf0) == 0xe0) {
            len = 3;
            cp = p[i] & 0x0f;
            min = 0x800;

        } else if ((p[i] & 0xf8) == 0xf0) {
            len = 4;
            cp = p[i] & 0x07;
            min = 0x10000;

        } else {
            return 0;
        }

        if (n - i < len) {
            return 0;
        }

        for (k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80) {
                return 0;
            }

            cp = (cp << 6) | (p[i + k] & 0x3f);
        }

        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            return 0;
        }

        i += len;
    }

    return 1;
}


/*
 * 1 if p[0..n) is the start of some valid text.  Only the last character
 * can be incomplete; up to 3 bytes complete it, and the first missing one
 * is at either end of a range (80 for ED and F4, BF for E0 and F0), the
 * others can be 80: so 7 candidates decide it.
 */

static int
ref_utf8_prefix(const unsigned char *p, size_t n, unsigned char *tmp)
{
    size_t  r, k;
    int     first;

    memcpy(tmp, p, n);

    for (r = 0; r <= 3; r++) {
        for (first = 0; first < (r ? 2 : 1); first++) {

            for (k = 0; k < r; k++) {
                tmp[n + k] = (k == 0 && first) ? 0xbf : 0x80;
            }

            if (ref_utf8_valid(tmp, n + r)) {
                return 1;
            }
        }
    }

    return 0;
}


static int
ref_close_code(unsigned code)
{
    return (code >= 1000 && code <= 1003)
           || (code >= 1007 && code <= 1014)
           || (code >= 3000 && code <= 4999);
}


static void
check_utf8(const unsigned char *p, size_t n)
{
    int                  rc;
    size_t               i, fail;
    unsigned char       *tmp;
    ngx_ahava_utf8_t  u, w;

    ngx_ahava_utf8_init(&w);
    rc = ngx_ahava_utf8_feed(&w, p, n);

    ngx_ahava_utf8_init(&u);
    fail = n;

    for (i = 0; i < n; i++) {
        if (ngx_ahava_utf8_feed(&u, p + i, 1) != 0) {
            fail = i;
            break;
        }
    }

    if ((rc != 0) != (fail < n)
        || ngx_ahava_utf8_finished(&w) != ngx_ahava_utf8_finished(&u)
        || ngx_ahava_utf8_valid(p, n) != ngx_ahava_utf8_finished(&w)
        || ngx_ahava_utf8_finished(&w) != ref_utf8_valid(p, n))
    {
        __builtin_trap();
    }

    tmp = malloc(n + 4);
    if (tmp == NULL) {
        abort();
    }

    /* fail fast, but not too fast */

    if (fail < n) {
        if (!ref_utf8_prefix(p, fail, tmp)
            || ref_utf8_prefix(p, fail + 1, tmp))
        {
            __builtin_trap();
        }

    } else if (!ref_utf8_prefix(p, n, tmp)) {
        __builtin_trap();
    }

    free(tmp);
}


/* the payload checks of one event, then its record in the log */

static void
log_event(ws_fuzz_log_t *log, const ngx_ahava_ws_event_t *ev,
    const unsigned char *msg, size_t max_message)
{
    unsigned char  rec[16];
    uint64_t       len;

    switch (ev->opcode) {

    case NGX_AHAVA_WS_OP_TEXT:
    case NGX_AHAVA_WS_OP_BINARY:
        if (ev->data != msg || ev->len > max_message) {
            __builtin_trap();
        }

        if (ev->opcode == NGX_AHAVA_WS_OP_TEXT
            && !ref_utf8_valid(ev->data, ev->len))
        {
            __builtin_trap();
        }

        break;

    case NGX_AHAVA_WS_OP_CLOSE:
        if (ev->close_code == NGX_AHAVA_WS_CLOSE_NO_STATUS) {
            if (ev->len != 0 || ev->reason_len != 0) {
                __builtin_trap();
            }

        } else if (ev->len < 2
                   || !ref_close_code(ev->close_code)
                   || ev->close_code != ((unsigned) ev->payload[0] << 8
                                         | ev->payload[1])
                   || ev->reason != ev->payload + 2
                   || ev->reason_len != ev->len - 2
                   || !ref_utf8_valid(ev->reason, ev->reason_len))
        {
            __builtin_trap();
        }

        /* fall through */

    case NGX_AHAVA_WS_OP_PING:
    case NGX_AHAVA_WS_OP_PONG:
        if (ev->data != ev->payload || ev->len > NGX_AHAVA_WS_MAX_CONTROL) {
            __builtin_trap();
        }

        break;

    default:
        __builtin_trap();
    }

    len = ev->len;

    rec[0] = 'E';
    rec[1] = (unsigned char) ev->opcode;
    rec[2] = (unsigned char) (ev->close_code >> 8);
    rec[3] = (unsigned char) ev->close_code;
    memcpy(rec + 4, &len, 8);

    log_add(log, rec, 12);
    log_add(log, ev->data, ev->len);
}


/*
 * mode 0: whole; 1: chunks drawn from seed; 2: one byte at a time.
 * Fills log with the events and the final state.
 */

static void
run(const unsigned char *in, size_t n, int mode, uint32_t seed,
    size_t max_frame, size_t max_message, ws_fuzz_log_t *log)
{
    int                    rc;
    size_t                 start, len, size;
    uint32_t               x;
    unsigned char         *chunk, *msg, rec[4];
    const unsigned char   *pos, *prev, *last;
    const char            *err;
    ngx_ahava_ws_event_t   ev;
    ngx_ahava_ws_parser_t  p;

    /* chunk lengths up to 1, 4, 16 or 256 bytes, empty ones included */
    static const size_t    limits[4] = { 1, 4, 16, 256 };

    size = max_message ? max_message : NGX_AHAVA_WS_DEFAULT_MAX;

    /* exactly the promised size, so ASan flags any write past it */

    msg = malloc(size);
    if (msg == NULL) {
        abort();
    }

    ngx_ahava_ws_parser_init(&p, max_frame, max_message, msg);

    x = seed | 1;
    start = 0;

    do {
        if (mode == 0) {
            len = n;

        } else if (mode == 2) {
            len = 1;

        } else {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            len = x % (limits[seed & 3] + 1);
        }

        if (len > n - start) {
            len = n - start;
        }

        chunk = malloc(len ? len : 1);
        if (chunk == NULL) {
            abort();
        }

        memcpy(chunk, in + start, len);
        pos = chunk;
        last = chunk + len;

        for ( ;; ) {
            prev = pos;
            rc = ngx_ahava_ws_parse(&p, &pos, last, &ev);

            if (pos < prev || pos > last) {
                __builtin_trap();
            }

            if (rc != NGX_AHAVA_WS_EVENT) {
                break;
            }

            /* an event completes a frame read in this call: no loop */

            if (pos == prev) {
                __builtin_trap();
            }

            log_event(log, &ev, msg, size);
        }

        if (rc == NGX_AHAVA_WS_NEED_MORE && pos != last) {
            __builtin_trap();
        }

        if (rc == NGX_AHAVA_WS_ERROR) {
            if ((ev.close_code != NGX_AHAVA_WS_CLOSE_PROTOCOL
                 && ev.close_code != NGX_AHAVA_WS_CLOSE_BAD_DATA
                 && ev.close_code != NGX_AHAVA_WS_CLOSE_TOO_BIG)
                || ev.error == NULL)
            {
                __builtin_trap();
            }

            err = ev.error;
            rec[0] = 'X';
            rec[1] = (unsigned char) (ev.close_code >> 8);
            rec[2] = (unsigned char) ev.close_code;
            log_add(log, rec, 3);
            log_add(log, err, strlen(err));

            /* sticky, even when given the whole stream again */

            pos = in;

            if (ngx_ahava_ws_parse(&p, &pos, in + n, &ev)
                != NGX_AHAVA_WS_ERROR
                || ev.error != err)
            {
                __builtin_trap();
            }
        }

        free(chunk);
        start += len;

    } while (start < n && rc != NGX_AHAVA_WS_ERROR);

    log_add(log, rc == NGX_AHAVA_WS_ERROR ? "end-error" : "end-more", 9);

    free(msg);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t          n, max_frame, max_message;
    unsigned        cfg;
    const uint8_t  *in;
    ws_fuzz_log_t   whole, chunks, bytes;

    if (size < 2) {
        return 0;
    }

    cfg = data[0];
    in = data + 2;
    n = size - 2;

    switch (cfg & 3) {

    case 0:
        max_frame = 0;                  /* the 64 KiB defaults */
        max_message = 0;
        break;

    case 1:
        max_frame = 1 + (cfg >> 2);     /* 1..64, message twice that */
        max_message = 2 * max_frame;
        break;

    case 2:
        max_frame = 0;
        max_message = 1 + (cfg >> 2) * 4;
        break;

    default:
        max_frame = 1 + (cfg >> 2) * 2;
        max_message = 0;
        break;
    }

    memset(&whole, 0, sizeof(ws_fuzz_log_t));
    memset(&chunks, 0, sizeof(ws_fuzz_log_t));
    memset(&bytes, 0, sizeof(ws_fuzz_log_t));

    run(in, n, 0, 0, max_frame, max_message, &whole);
    run(in, n, 1, data[1] | (uint32_t) n << 8, max_frame, max_message,
        &chunks);
    run(in, n, 2, 0, max_frame, max_message, &bytes);

    if (whole.len != chunks.len || whole.len != bytes.len
        || memcmp(whole.buf, chunks.buf, whole.len) != 0
        || memcmp(whole.buf, bytes.buf, whole.len) != 0)
    {
        __builtin_trap();
    }

    free(whole.buf);
    free(chunks.buf);
    free(bytes.buf);

    check_utf8(in, n);

    return 0;
}
