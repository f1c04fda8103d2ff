
/*
 * Copyright (C) Ahava
 */


#ifndef _NGX_AHAVA_WS_FRAME_H_INCLUDED_
#define _NGX_AHAVA_WS_FRAME_H_INCLUDED_


/*
 * The RFC 6455 frame codec of the /ws endpoint, server side.  Deliberately
 * free of nginx headers (plain C99, libc, libcrypto for the handshake) so
 * that the parser of hostile client bytes is unit-tested and fuzzed alone.
 *
 *   - a resumable parser of client frames, fed arbitrary chunks, that
 *     reassembles fragmented messages into a caller-provided bounded buffer
 *     and enforces every MUST of RFC 6455 §5 that a server can check;
 *   - the encoder of (unmasked) server frame headers and close payloads;
 *   - the Sec-WebSocket-Key check and the Sec-WebSocket-Accept value;
 *   - an incremental, fail-fast UTF-8 validator (RFC 3629), public so the
 *     JSON layer can reuse it.
 *
 * Choices where the RFC leaves room (a violation is a close with 1002):
 *   - non-minimal length encodings (126 + a length < 126, 127 + a length
 *     < 65536) are rejected: RFC 6455 §5.2 says the minimal form MUST be
 *     used, browsers always do, and one encoding per length leaves nothing
 *     for a proxy and us to disagree about;
 *   - close codes accepted on the wire: 1000-1003, 1007-1014 (1012 service
 *     restart, 1013 try again later and 1014 bad gateway are registered
 *     with IANA and sent by real servers and proxies), 3000-4999;
 *   - max_frame limits the payload of every frame, control frames
 *     included (those are at most 125 bytes anyway).
 */


#include <stddef.h>
#include <stdint.h>

#include "ngx_ahava_utf8.h"


#define NGX_AHAVA_WS_OP_CONT          0x0
#define NGX_AHAVA_WS_OP_TEXT          0x1
#define NGX_AHAVA_WS_OP_BINARY        0x2
#define NGX_AHAVA_WS_OP_CLOSE         0x8
#define NGX_AHAVA_WS_OP_PING          0x9
#define NGX_AHAVA_WS_OP_PONG          0xa

#define NGX_AHAVA_WS_CLOSE_NORMAL     1000
#define NGX_AHAVA_WS_CLOSE_GOING_AWAY 1001
#define NGX_AHAVA_WS_CLOSE_PROTOCOL   1002
#define NGX_AHAVA_WS_CLOSE_NO_STATUS  1005  /* a close frame without code */
#define NGX_AHAVA_WS_CLOSE_BAD_DATA   1007  /* invalid UTF-8 */
#define NGX_AHAVA_WS_CLOSE_POLICY     1008
#define NGX_AHAVA_WS_CLOSE_TOO_BIG    1009
#define NGX_AHAVA_WS_CLOSE_INTERNAL   1011
#define NGX_AHAVA_WS_CLOSE_TRY_AGAIN  1013

#define NGX_AHAVA_WS_MAX_CONTROL      125   /* control frame payload */
#define NGX_AHAVA_WS_MAX_HEADER       10    /* server frame header */
#define NGX_AHAVA_WS_DEFAULT_MAX      65536 /* max_frame, max_message */
#define NGX_AHAVA_WS_KEY_LEN          24    /* Sec-WebSocket-Key */
#define NGX_AHAVA_WS_ACCEPT_LEN       28    /* Sec-WebSocket-Accept */

/* ngx_ahava_ws_parse() results */
#define NGX_AHAVA_WS_NEED_MORE        0
#define NGX_AHAVA_WS_EVENT            1
#define NGX_AHAVA_WS_ERROR            -1


/* text frames and close reasons are validated by ngx_ahava_utf8.h */


/*
 * What ngx_ahava_ws_parse() reports.
 *
 * NGX_AHAVA_WS_EVENT:
 *   opcode      TEXT or BINARY (a whole message, reassembled), or CLOSE,
 *               PING, PONG (control frames, delivered as soon as they are
 *               complete, even between the fragments of a message);
 *   data, len   the payload: for TEXT and BINARY it points into the
 *               parser's msg_buf and stays valid until the next call of
 *               ngx_ahava_ws_parse(); for control frames it points to
 *               ev->payload, a copy;
 *   close_code  CLOSE only: the peer's code, NGX_AHAVA_WS_CLOSE_NO_STATUS
 *               (1005) if the frame had none;
 *   reason      CLOSE only: the reason (valid UTF-8, in ev->payload).
 *
 * NGX_AHAVA_WS_ERROR:
 *   close_code  the code to close the connection with (1002, 1007, 1009);
 *   error       a short static description, for the log.
 */

typedef struct {
    int                   opcode;
    const unsigned char  *data;
    size_t                len;
    unsigned              close_code;
    const unsigned char  *reason;
    size_t                reason_len;
    const char           *error;
    unsigned char         payload[NGX_AHAVA_WS_MAX_CONTROL];
} ngx_ahava_ws_event_t;


/*
 * The parser state the caller embeds (e.g. in its session).  Only the
 * first three fields are for the caller to read; they are set by
 * ngx_ahava_ws_parser_init().
 */

typedef struct {
    size_t                max_frame;    /* payload bytes of one frame */
    size_t                max_message;  /* bytes of a reassembled message */
    unsigned char        *msg_buf;      /* max_message bytes */

    /* private */
    int                   state;
    unsigned char         fin;
    unsigned char         opcode;
    unsigned char         ext_need;     /* extended length bytes to read */
    unsigned char         ext_size;     /* 2 or 8 */
    unsigned char         mask_got;
    unsigned char         mask[4];
    uint64_t              frame_len;
    uint64_t              frame_got;    /* also the mask offset, mod 4 */
    int                   msg_opcode;   /* 0: no data message in progress */
    size_t                msg_len;
    ngx_ahava_utf8_t   utf8;
    unsigned              err_code;
    const char           *err_reason;
    unsigned char         ctl[NGX_AHAVA_WS_MAX_CONTROL];
} ngx_ahava_ws_parser_t;


/*
 * max_frame or max_message 0 means NGX_AHAVA_WS_DEFAULT_MAX.  msg_buf must
 * hold max_message bytes (after that substitution): the parser unmasks the
 * payloads of data frames into it and allocates nothing itself.  The
 * parser needs no cleanup.
 */
void ngx_ahava_ws_parser_init(ngx_ahava_ws_parser_t *p, size_t max_frame,
    size_t max_message, unsigned char *msg_buf);

/*
 * Consumes bytes from *pos up to last, advancing *pos, and returns
 *
 *   NGX_AHAVA_WS_NEED_MORE  every byte was consumed (*pos == last) and no
 *                           event is complete yet: call again with more;
 *   NGX_AHAVA_WS_EVENT      ev is filled; *pos is just past the frame that
 *                           completed it, the rest is still to be parsed:
 *                           call again with the same *pos and last;
 *   NGX_AHAVA_WS_ERROR      ev->close_code and ev->error are set; the
 *                           parser stays in this state and every later
 *                           call returns the same error.
 *
 * Typical use:
 *
 *     while ((rc = ngx_ahava_ws_parse(p, &pos, last, &ev))
 *            == NGX_AHAVA_WS_EVENT)
 *     {
 *         handle(&ev);
 *     }
 *
 * The chunks may be split anywhere; the events and the error are the same
 * as if all the bytes had come at once.
 */
int ngx_ahava_ws_parse(ngx_ahava_ws_parser_t *p, const unsigned char **pos,
    const unsigned char *last, ngx_ahava_ws_event_t *ev);


/*
 * Writes the header of a server frame (unmasked, minimal length encoding,
 * payload_len < 2^63) to buf, which must hold NGX_AHAVA_WS_MAX_HEADER
 * bytes, and returns its length: 2, 4 or 10.
 */
size_t ngx_ahava_ws_frame_header(unsigned char *buf, int opcode, int fin,
    uint64_t payload_len);

/*
 * Writes the payload of a close frame to buf, which must hold
 * NGX_AHAVA_WS_MAX_CONTROL bytes, and returns its length.  Code 0 gives
 * the empty payload (no code, the reason is ignored); otherwise the code
 * and as much of the reason as fits, cut on a UTF-8 character boundary.
 */
size_t ngx_ahava_ws_close_payload(unsigned char *buf, unsigned code,
    const unsigned char *reason, size_t reason_len);

/* 1 if a peer may send this close code (see the choices above), else 0 */
int ngx_ahava_ws_close_code_valid(unsigned code);


/*
 * 1 if key is a valid Sec-WebSocket-Key: the canonical base64 of exactly
 * 16 bytes (24 characters ending in "==", no stray bits), else 0.
 */
int ngx_ahava_ws_key_valid(const unsigned char *key, size_t len);

/*
 * Sec-WebSocket-Accept of a key: base64(SHA-1(key + RFC 6455's GUID)),
 * NGX_AHAVA_WS_ACCEPT_LEN characters, not NUL-terminated.  0, or -1 if
 * libcrypto failed.
 */
int ngx_ahava_ws_accept_key(const unsigned char *key, size_t key_len,
    unsigned char out[NGX_AHAVA_WS_ACCEPT_LEN]);


#endif /* _NGX_AHAVA_WS_FRAME_H_INCLUDED_ */
