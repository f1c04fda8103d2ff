
/*
 * Copyright (C) Ahava
 */


#ifndef _NGX_AHAVA_MULTIPART_H_INCLUDED_
#define _NGX_AHAVA_MULTIPART_H_INCLUDED_


/*
 * A streaming parser of one multipart/form-data request body (RFC 7578,
 * RFC 2046 section 5.1), deliberately free of nginx headers so that it can
 * be unit-tested and fuzzed on its own.
 *
 * The body is fed in chunks of any size as they arrive; the part headers are
 * gathered in a buffer inside the parser, the part data is handed to the
 * caller as pointers into the fed chunks (zero copy), except for the few
 * bytes that looked like the start of a delimiter at the end of a chunk and
 * turned out not to be one: those come from the parser's copy of the
 * delimiter.  The work is O(1) per input byte and the memory this struct,
 * whatever the input.
 *
 * The body, strictly:
 *
 *   - a preamble (ignored, at most NGX_AHAVA_MULTIPART_JUNK_MAX bytes, as
 *     is the epilogue after the close delimiter, else an error);
 *   - CRLF "--" boundary is always a delimiter (RFC 2046: it must not occur
 *     in data): then come either "--" (the close delimiter) or transport
 *     padding (spaces, tabs; at most JUNK_MAX) and CRLF, anything else is
 *     ERR_DELIMITER;
 *   - part header lines end in CRLF (bare CR or LF, control characters but
 *     HTAB, folded lines, a space before the colon: ERR_HEADER); the names
 *     are case-insensitive; Content-Disposition must be form-data with a
 *     name; filename and filename* (RFC 5987, UTF-8 only, decoded; it wins
 *     over filename as in RFC 6266) are optional; Content-Type is given
 *     as it is (trimmed); other headers are ignored; duplicates refused.
 *   - quoted-strings are unescaped ("\x" is "x": an old browser's
 *     "C:\dir\a.jpg" comes out as "C:dira.jpg").
 *
 * Usage:
 *
 *     ngx_ahava_multipart_boundary(ct, ct_len, b, &b_len)   from the header
 *     ngx_ahava_multipart_init(mp, b, b_len, 8192, 8, 4096)
 *     mp->on_part_begin = ...; mp->on_part_data = ...;
 *     mp->on_part_end = ...; mp->data = ...;
 *     ngx_ahava_multipart_feed(mp, chunk, n)               any number of times
 *     ngx_ahava_multipart_finish(mp)                       at the end
 *
 * Every function returns NGX_AHAVA_MULTIPART_OK (0), one of the negative
 * NGX_AHAVA_MULTIPART_ERR_* codes below, or, when a callback aborted, the
 * callback's own non-zero return value unchanged (so callbacks had better
 * return positive values of their own).  An error is sticky: later calls
 * return it again without doing anything.
 */


#include <stddef.h>
#include <stdint.h>


#define NGX_AHAVA_MULTIPART_BOUNDARY_MAX     70
#define NGX_AHAVA_MULTIPART_DELIMITER_MAX                                    \
    (NGX_AHAVA_MULTIPART_BOUNDARY_MAX + 4)

/* the part header block buffer: the largest max_header accepted */
#define NGX_AHAVA_MULTIPART_HEADER_MAX       8192

/* defaults used for a limit given as 0 */
#define NGX_AHAVA_MULTIPART_DEFAULT_HEADER   8192
#define NGX_AHAVA_MULTIPART_DEFAULT_PARTS    8
#define NGX_AHAVA_MULTIPART_DEFAULT_FIELD    4096

/* preamble, epilogue and transport padding are ignored up to this size */
#define NGX_AHAVA_MULTIPART_JUNK_MAX         1024


#define NGX_AHAVA_MULTIPART_OK                        0
#define NGX_AHAVA_MULTIPART_ERR_NOT_FORM_DATA        -1
#define NGX_AHAVA_MULTIPART_ERR_BOUNDARY             -2
#define NGX_AHAVA_MULTIPART_ERR_PREAMBLE             -3
#define NGX_AHAVA_MULTIPART_ERR_DELIMITER            -4
#define NGX_AHAVA_MULTIPART_ERR_TOO_MANY_PARTS       -5
#define NGX_AHAVA_MULTIPART_ERR_HEADER_TOO_LARGE     -6
#define NGX_AHAVA_MULTIPART_ERR_HEADER               -7
#define NGX_AHAVA_MULTIPART_ERR_NO_DISPOSITION       -8
#define NGX_AHAVA_MULTIPART_ERR_DISPOSITION          -9
#define NGX_AHAVA_MULTIPART_ERR_FIELD_TOO_LARGE     -10
#define NGX_AHAVA_MULTIPART_ERR_EPILOGUE            -11
#define NGX_AHAVA_MULTIPART_ERR_TRUNCATED           -12
#define NGX_AHAVA_MULTIPART_ERR_NO_PARTS            -13


/*
 * The parsed headers of a part, given to on_part_begin.  The strings point
 * into the parser's header buffer: they are valid only during the call
 * (copy what you need), are already unquoted/unescaped and are followed by
 * a NUL byte (not counted in the length; they may contain NULs themselves
 * only through filename*'s %00, which the file name check refuses).
 */

typedef struct {
    const unsigned char  *name;            /* never NULL, may be empty */
    size_t                name_len;
    const unsigned char  *filename;        /* NULL if no filename parameter */
    size_t                filename_len;
    const unsigned char  *content_type;    /* NULL if no Content-Type */
    size_t                content_type_len;
    size_t                index;           /* 1 for the first part */
    unsigned              is_file;         /* filename or filename* given */
} ngx_ahava_multipart_part_t;


/* callbacks: 0 to go on, anything else aborts and is returned by feed */

typedef int (*ngx_ahava_multipart_begin_pt)(void *data,
    const ngx_ahava_multipart_part_t *part);
typedef int (*ngx_ahava_multipart_data_pt)(void *data,
    const unsigned char *p, size_t n);
typedef int (*ngx_ahava_multipart_end_pt)(void *data);


typedef struct {
    /* set by the caller after init; any of them may be NULL */
    ngx_ahava_multipart_begin_pt  on_part_begin;
    ngx_ahava_multipart_data_pt   on_part_data;
    ngx_ahava_multipart_end_pt    on_part_end;
    void                         *data;

    /* read only for the caller */
    int                           error;       /* the sticky error, or 0 */
    size_t                        parts;       /* parts begun so far */

    /* private */
    size_t                        max_header;
    size_t                        max_parts;
    size_t                        max_field;

    unsigned                      state;
    unsigned                      is_file;

    size_t                        dlen;        /* CRLF "--" boundary */
    size_t                        matched;     /* delimiter bytes held */
    size_t                        junk;        /* preamble/padding/epilogue */
    size_t                        field;       /* data bytes of this part */

    size_t                        hlen;
    size_t                        line;        /* current header line start */

    unsigned char                 delim[NGX_AHAVA_MULTIPART_DELIMITER_MAX];
    unsigned char                 header[NGX_AHAVA_MULTIPART_HEADER_MAX];
} ngx_ahava_multipart_t;


/*
 * Parses a Content-Type header value: "multipart/form-data" (any case) and
 * ";"-separated parameters, one of them "boundary" (any case), a token or a
 * quoted-string, 1..70 characters of RFC 2046 bchars not ending in a space.
 * No whitespace is allowed around "=" (RFC 9110); empty parameters (";;")
 * are.  out must hold NGX_AHAVA_MULTIPART_BOUNDARY_MAX bytes.
 * Returns 0, ERR_NOT_FORM_DATA (another media type: 415) or ERR_BOUNDARY
 * (syntax error, no, empty, bad or duplicate boundary: 400).
 */
int ngx_ahava_multipart_boundary(const unsigned char *content_type,
    size_t len, unsigned char *out, size_t *out_len);

/*
 * Zeroes mp (set the callbacks afterwards) and sets the boundary and the
 * limits: max_header bytes of a part's header block, counting every CRLF
 * and the empty line (at most NGX_AHAVA_MULTIPART_HEADER_MAX), max_parts
 * parts, max_field data bytes of a part without a filename (file parts are
 * not limited here: the data callback does that).  0 takes the default.
 * Returns 0 or ERR_BOUNDARY (length not 1..70, not bchars, ending in a
 * space).  mp may be NULL, to only check a boundary.
 */
int ngx_ahava_multipart_init(ngx_ahava_multipart_t *mp,
    const unsigned char *boundary, size_t len, size_t max_header,
    size_t max_parts, size_t max_field);

/* consumes all of data: 0, an ERR_* code or a callback's abort value */
int ngx_ahava_multipart_feed(ngx_ahava_multipart_t *mp,
    const unsigned char *data, size_t len);

/* the body is over: 0 if the close delimiter was seen after a part */
int ngx_ahava_multipart_finish(ngx_ahava_multipart_t *mp);

/* a short static description of a return code, for logs and 400 details */
const char *ngx_ahava_multipart_strerror(int rc);


#endif /* _NGX_AHAVA_MULTIPART_H_INCLUDED_ */
