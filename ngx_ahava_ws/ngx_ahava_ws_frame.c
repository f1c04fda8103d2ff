
/*
 * Copyright (C) Ahava
 *
 * RFC 6455 frame codec, server side, without nginx: see the header for the
 * contract and the choices.  The parser is a byte-driven state machine, so
 * a frame split anywhere (inside the header, the extended length, the mask
 * key or the payload) parses exactly as if it had come whole; every check
 * is made as soon as the bytes it needs are in, so oversize frames are
 * refused from their header and bad UTF-8 from its first bad byte.
 */


#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <openssl/evp.h>

#include "ngx_ahava_ws_frame.h"


/* parser states */
#define NGX_AHAVA_WS_ST_HDR0     0      /* FIN, RSV, opcode */
#define NGX_AHAVA_WS_ST_HDR1     1      /* MASK, 7-bit length */
#define NGX_AHAVA_WS_ST_EXTLEN   2      /* 16- or 64-bit length */
#define NGX_AHAVA_WS_ST_MASK     3      /* masking key */
#define NGX_AHAVA_WS_ST_PAYLOAD  4
#define NGX_AHAVA_WS_ST_ERROR    5

#define NGX_AHAVA_WS_GUID        "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


static int ngx_ahava_ws_frame_done(ngx_ahava_ws_parser_t *p,
    ngx_ahava_ws_event_t *ev, unsigned *code, const char **reason);
static int ngx_ahava_ws_b64_value(unsigned char c);


static const unsigned char  ngx_ahava_ws_b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";


void
ngx_ahava_ws_parser_init(ngx_ahava_ws_parser_t *p, size_t max_frame,
    size_t max_message, unsigned char *msg_buf)
{
    memset(p, 0, sizeof(ngx_ahava_ws_parser_t));

    p->max_frame = max_frame ? max_frame : NGX_AHAVA_WS_DEFAULT_MAX;
    p->max_message = max_message ? max_message : NGX_AHAVA_WS_DEFAULT_MAX;
    p->msg_buf = msg_buf;

    p->state = NGX_AHAVA_WS_ST_HDR0;
    ngx_ahava_utf8_init(&p->utf8);
}


int
ngx_ahava_ws_parse(ngx_ahava_ws_parser_t *p, const unsigned char **pos,
    const unsigned char *last, ngx_ahava_ws_event_t *ev)
{
    int                   rc;
    size_t                i, n, off;
    unsigned              code;
    const char           *reason;
    unsigned char         c, *d;
    const unsigned char  *s;

    if (p->state == NGX_AHAVA_WS_ST_ERROR) {
        code = p->err_code;
        reason = p->err_reason;
        s = *pos;
        goto failed;
    }

    s = *pos;

    for ( ;; ) {

        switch (p->state) {

        case NGX_AHAVA_WS_ST_HDR0:

            if (s == last) {
                goto need_more;
            }

            c = *s++;

            if (c & 0x70) {
                code = NGX_AHAVA_WS_CLOSE_PROTOCOL;
                reason = "reserved bits set";
                goto failed;
            }

            p->fin = c >> 7;
            p->opcode = c & 0x0f;

            switch (p->opcode) {

            case NGX_AHAVA_WS_OP_CONT:
                if (p->msg_opcode == 0) {
                    code = NGX_AHAVA_WS_CLOSE_PROTOCOL;
                    reason = "continuation frame without a message";
                    goto failed;
                }

                break;

            case NGX_AHAVA_WS_OP_TEXT:
            case NGX_AHAVA_WS_OP_BINARY:
                if (p->msg_opcode != 0) {
                    code = NGX_AHAVA_WS_CLOSE_PROTOCOL;
                    reason = "data frame inside a fragmented message";
                    goto failed;
                }

                /* the previous message's bytes are dropped only now */

                p->msg_opcode = p->opcode;
                p->msg_len = 0;
                ngx_ahava_utf8_init(&p->utf8);
                break;

            case NGX_AHAVA_WS_OP_CLOSE:
            case NGX_AHAVA_WS_OP_PING:
            case NGX_AHAVA_WS_OP_PONG:
                if (!p->fin) {
                    code = NGX_AHAVA_WS_CLOSE_PROTOCOL;
                    reason = "fragmented control frame";
                    goto failed;
                }

                break;

            default:
                code = NGX_AHAVA_WS_CLOSE_PROTOCOL;
                reason = "unknown opcode";
                goto failed;
            }

            p->state = NGX_AHAVA_WS_ST_HDR1;

            /* fall through */

        case NGX_AHAVA_WS_ST_HDR1:

            if (s == last) {
                goto need_more;
            }

            c = *s++;

            if (!(c & 0x80)) {
                code = NGX_AHAVA_WS_CLOSE_PROTOCOL;
                reason = "unmasked client frame";
                goto failed;
            }

            c &= 0x7f;

            if ((p->opcode & 0x08) && c > NGX_AHAVA_WS_MAX_CONTROL) {
                code = NGX_AHAVA_WS_CLOSE_PROTOCOL;
                reason = "control frame over 125 bytes";
                goto failed;
            }

            p->frame_len = 0;

            if (c >= 126) {
                p->ext_size = (c == 126) ? 2 : 8;
                p->ext_need = p->ext_size;
                p->state = NGX_AHAVA_WS_ST_EXTLEN;
                break;
            }

            p->frame_len = c;
            goto length;

        case NGX_AHAVA_WS_ST_EXTLEN:

            while (p->ext_need && s < last) {
                p->frame_len = (p->frame_len << 8) | *s++;
                p->ext_need--;
            }

            if (p->ext_need) {
                goto need_more;
            }

            if (p->frame_len >> 63) {
                code = NGX_AHAVA_WS_CLOSE_PROTOCOL;
                reason = "64-bit length with the high bit set";
                goto failed;
            }

            if (p->frame_len < ((p->ext_size == 2) ? 126 : 65536)) {
                code = NGX_AHAVA_WS_CLOSE_PROTOCOL;
                reason = "non-minimal length encoding";
                goto failed;
            }

        length:

            /* refused from the header: the payload is never read */

            if (p->frame_len > p->max_frame) {
                code = NGX_AHAVA_WS_CLOSE_TOO_BIG;
                reason = "frame too big";
                goto failed;
            }

            if (!(p->opcode & 0x08)
                && p->frame_len > p->max_message - p->msg_len)
            {
                code = NGX_AHAVA_WS_CLOSE_TOO_BIG;
                reason = "message too big";
                goto failed;
            }

            p->mask_got = 0;
            p->state = NGX_AHAVA_WS_ST_MASK;

            /* fall through */

        case NGX_AHAVA_WS_ST_MASK:

            while (p->mask_got < 4 && s < last) {
                p->mask[p->mask_got++] = *s++;
            }

            if (p->mask_got < 4) {
                goto need_more;
            }

            p->frame_got = 0;
            p->state = NGX_AHAVA_WS_ST_PAYLOAD;

            /* fall through */

        case NGX_AHAVA_WS_ST_PAYLOAD:

            n = (size_t) (last - s);

            if ((uint64_t) n > p->frame_len - p->frame_got) {
                n = (size_t) (p->frame_len - p->frame_got);
            }

            if (n) {
                /* the length checks above keep both within their buffer */

                if (p->opcode & 0x08) {
                    d = p->ctl + p->frame_got;

                } else {
                    d = p->msg_buf + p->msg_len;
                }

                off = (size_t) (p->frame_got & 3);

                for (i = 0; i < n; i++) {
                    d[i] = s[i] ^ p->mask[(off + i) & 3];
                }

                s += n;
                p->frame_got += n;

                if (!(p->opcode & 0x08)) {
                    p->msg_len += n;

                    if (p->msg_opcode == NGX_AHAVA_WS_OP_TEXT
                        && ngx_ahava_utf8_feed(&p->utf8, d, n) != 0)
                    {
                        code = NGX_AHAVA_WS_CLOSE_BAD_DATA;
                        reason = "invalid UTF-8 in a text message";
                        goto failed;
                    }
                }
            }

            if (p->frame_got < p->frame_len) {
                goto need_more;
            }

            p->state = NGX_AHAVA_WS_ST_HDR0;

            rc = ngx_ahava_ws_frame_done(p, ev, &code, &reason);

            if (rc == NGX_AHAVA_WS_ERROR) {
                goto failed;
            }

            if (rc == NGX_AHAVA_WS_EVENT) {
                *pos = s;
                return NGX_AHAVA_WS_EVENT;
            }

            /* a non-final fragment: on to the next frame */

            break;

        default: /* unreachable: the error state is handled above */
            code = NGX_AHAVA_WS_CLOSE_INTERNAL;
            reason = "parser state corrupted";
            goto failed;
        }
    }

need_more:

    *pos = s;

    return NGX_AHAVA_WS_NEED_MORE;

failed:

    p->state = NGX_AHAVA_WS_ST_ERROR;
    p->err_code = code;
    p->err_reason = reason;

    *pos = s;

    ev->opcode = 0;
    ev->data = NULL;
    ev->len = 0;
    ev->close_code = code;
    ev->reason = NULL;
    ev->reason_len = 0;
    ev->error = reason;

    return NGX_AHAVA_WS_ERROR;
}


/*
 * A frame's payload is in: fill ev for a control frame or a final
 * fragment, or return NEED_MORE (a non-final fragment), or ERROR with
 * *code and *reason.
 */

static int
ngx_ahava_ws_frame_done(ngx_ahava_ws_parser_t *p, ngx_ahava_ws_event_t *ev,
    unsigned *code, const char **reason)
{
    size_t  len;

    ev->close_code = 0;
    ev->reason = NULL;
    ev->reason_len = 0;
    ev->error = NULL;

    if (p->opcode & 0x08) {
        len = (size_t) p->frame_len;

        ev->opcode = p->opcode;
        ev->data = ev->payload;
        ev->len = len;

        memcpy(ev->payload, p->ctl, len);

        if (p->opcode != NGX_AHAVA_WS_OP_CLOSE) {
            return NGX_AHAVA_WS_EVENT;
        }

        if (len == 0) {
            ev->close_code = NGX_AHAVA_WS_CLOSE_NO_STATUS;
            ev->reason = ev->payload;
            return NGX_AHAVA_WS_EVENT;
        }

        if (len == 1) {
            *code = NGX_AHAVA_WS_CLOSE_PROTOCOL;
            *reason = "close frame of 1 byte";
            return NGX_AHAVA_WS_ERROR;
        }

        ev->close_code = (unsigned) p->ctl[0] << 8 | p->ctl[1];

        if (!ngx_ahava_ws_close_code_valid(ev->close_code)) {
            *code = NGX_AHAVA_WS_CLOSE_PROTOCOL;
            *reason = "invalid close code";
            return NGX_AHAVA_WS_ERROR;
        }

        if (!ngx_ahava_utf8_valid(p->ctl + 2, len - 2)) {
            *code = NGX_AHAVA_WS_CLOSE_BAD_DATA;
            *reason = "invalid UTF-8 in a close reason";
            return NGX_AHAVA_WS_ERROR;
        }

        ev->reason = ev->payload + 2;
        ev->reason_len = len - 2;

        return NGX_AHAVA_WS_EVENT;
    }

    if (!p->fin) {
        return NGX_AHAVA_WS_NEED_MORE;
    }

    if (p->msg_opcode == NGX_AHAVA_WS_OP_TEXT
        && !ngx_ahava_utf8_finished(&p->utf8))
    {
        *code = NGX_AHAVA_WS_CLOSE_BAD_DATA;
        *reason = "text message ends inside a UTF-8 sequence";
        return NGX_AHAVA_WS_ERROR;
    }

    ev->opcode = p->msg_opcode;
    ev->data = p->msg_buf;
    ev->len = p->msg_len;

    p->msg_opcode = 0;

    return NGX_AHAVA_WS_EVENT;
}


size_t
ngx_ahava_ws_frame_header(unsigned char *buf, int opcode, int fin,
    uint64_t payload_len)
{
    int  i;

    buf[0] = (unsigned char) ((fin ? 0x80 : 0) | (opcode & 0x0f));

    if (payload_len < 126) {
        buf[1] = (unsigned char) payload_len;
        return 2;
    }

    if (payload_len <= 0xffff) {
        buf[1] = 126;
        buf[2] = (unsigned char) (payload_len >> 8);
        buf[3] = (unsigned char) payload_len;
        return 4;
    }

    buf[1] = 127;

    for (i = 0; i < 8; i++) {
        buf[2 + i] = (unsigned char) (payload_len >> (56 - 8 * i));
    }

    return 10;
}


size_t
ngx_ahava_ws_close_payload(unsigned char *buf, unsigned code,
    const unsigned char *reason, size_t reason_len)
{
    size_t  n;

    if (code == 0) {
        return 0;
    }

    buf[0] = (unsigned char) (code >> 8);
    buf[1] = (unsigned char) code;

    n = reason_len;

    if (n > NGX_AHAVA_WS_MAX_CONTROL - 2) {
        n = NGX_AHAVA_WS_MAX_CONTROL - 2;

        /* never cut a character: the peer would fail us with 1007 */

        while (n > 0 && (reason[n] & 0xc0) == 0x80) {
            n--;
        }
    }

    if (n) {
        memcpy(buf + 2, reason, n);
    }

    return 2 + n;
}


int
ngx_ahava_ws_close_code_valid(unsigned code)
{
    if (code >= 1000 && code <= 1003) {
        return 1;
    }

    /* 1004 reserved, 1005 and 1006 never on the wire, 1015 neither */

    if (code >= 1007 && code <= 1014) {
        return 1;
    }

    /* 3000-3999 registered with IANA, 4000-4999 private use */

    return code >= 3000 && code <= 4999;
}


static int
ngx_ahava_ws_b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }

    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }

    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }

    if (c == '+') {
        return 62;
    }

    return (c == '/') ? 63 : -1;
}


int
ngx_ahava_ws_key_valid(const unsigned char *key, size_t len)
{
    int     v;
    size_t  i;

    if (len != NGX_AHAVA_WS_KEY_LEN || key[22] != '=' || key[23] != '=') {
        return 0;
    }

    v = 0;

    for (i = 0; i < 22; i++) {
        v = ngx_ahava_ws_b64_value(key[i]);

        if (v < 0) {
            return 0;
        }
    }

    /* the 22nd character holds 2 bits of the 16th byte and 4 zero bits */

    return (v & 0x0f) == 0;
}


int
ngx_ahava_ws_accept_key(const unsigned char *key, size_t key_len,
    unsigned char out[NGX_AHAVA_WS_ACCEPT_LEN])
{
    int            rc;
    size_t         i, j;
    uint32_t       v;
    unsigned int   md_len;
    EVP_MD_CTX    *ctx;
    unsigned char  md[EVP_MAX_MD_SIZE];

    ctx = EVP_MD_CTX_new();
    if (ctx == NULL) {
        return -1;
    }

    rc = EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) == 1
         && EVP_DigestUpdate(ctx, key, key_len) == 1
         && EVP_DigestUpdate(ctx, NGX_AHAVA_WS_GUID,
                             sizeof(NGX_AHAVA_WS_GUID) - 1) == 1
         && EVP_DigestFinal_ex(ctx, md, &md_len) == 1
         && md_len == 20;

    EVP_MD_CTX_free(ctx);

    if (!rc) {
        return -1;
    }

    /*
     * base64 by hand: EVP_EncodeBlock() would NUL-terminate, one byte past
     * out.  20 bytes are 6 groups of 3 and 2 bytes, padded with one '='.
     */

    for (i = 0, j = 0; i < 18; i += 3, j += 4) {
        v = (uint32_t) md[i] << 16 | (uint32_t) md[i + 1] << 8 | md[i + 2];

        out[j] = ngx_ahava_ws_b64[v >> 18];
        out[j + 1] = ngx_ahava_ws_b64[(v >> 12) & 0x3f];
        out[j + 2] = ngx_ahava_ws_b64[(v >> 6) & 0x3f];
        out[j + 3] = ngx_ahava_ws_b64[v & 0x3f];
    }

    v = (uint32_t) md[18] << 16 | (uint32_t) md[19] << 8;

    out[24] = ngx_ahava_ws_b64[v >> 18];
    out[25] = ngx_ahava_ws_b64[(v >> 12) & 0x3f];
    out[26] = ngx_ahava_ws_b64[(v >> 6) & 0x3f];
    out[27] = '=';

    return 0;
}
