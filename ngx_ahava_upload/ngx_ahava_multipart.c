
/*
 * Copyright (C) Ahava
 *
 * Streaming multipart/form-data parser (see ngx_ahava_multipart.h).
 *
 * The body is a sequence of states driven byte by byte, except the part
 * data (and the ignored preamble), which is scanned for the delimiter
 * CRLF "--" boundary with memchr() for its CR and then compared in place.
 * A boundary is made of bchars, which never include CR, so the CR occurs
 * in the delimiter only at its start: no proper prefix of the delimiter
 * ends with a non-empty prefix of it, and on a mismatch the bytes matched
 * so far are simply data and the mismatching byte is looked at again from
 * the start.  Every byte is thus looked at no more than twice, whatever the
 * input (think of "\r\n--" repeated).
 *
 * A delimiter cut by the end of a chunk is remembered by its length only:
 * its bytes are those of mp->delim, from where they are handed on as data
 * if the next chunk shows it was no delimiter.  The body is parsed as if it
 * were preceded by a CRLF, so that a first "--boundary" at its very start
 * is found by the same search as the others (RFC 2046: the CRLF before a
 * delimiter belongs to the delimiter, and a preamble is followed by one).
 */


#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ngx_ahava_multipart.h"


enum {
    sw_preamble = 0,
    sw_boundary,            /* after CRLF "--" boundary */
    sw_close,               /* after its first "-" */
    sw_padding,             /* transport padding (spaces, tabs) */
    sw_boundary_lf,         /* the CR ending the delimiter line seen */
    sw_header,
    sw_body,
    sw_epilogue
};


/* a parameter of a header value, as it is in the input (still quoted) */

typedef struct {
    const unsigned char  *name;
    size_t                name_len;
    const unsigned char  *value;      /* inside the quotes if quoted */
    size_t                value_len;
    unsigned              quoted;
} ngx_ahava_multipart_param_t;


static int ngx_ahava_multipart_tchar(unsigned c);
static int ngx_ahava_multipart_bchar(unsigned c);
static int ngx_ahava_multipart_ieq(const unsigned char *p, size_t len,
    const char *lower);
static int ngx_ahava_multipart_hex(unsigned c);
static const unsigned char *ngx_ahava_multipart_ows(const unsigned char *p,
    const unsigned char *end);
static int ngx_ahava_multipart_next_param(const unsigned char **pos,
    const unsigned char *end, ngx_ahava_multipart_param_t *param);
static size_t ngx_ahava_multipart_unquote(unsigned char *dst,
    const unsigned char *src, size_t len, size_t max);
static int ngx_ahava_multipart_ext_value(unsigned char *dst,
    const unsigned char *src, size_t len, size_t *out_len);
static int ngx_ahava_multipart_emit(ngx_ahava_multipart_t *mp,
    const unsigned char *p, size_t n);
static int ngx_ahava_multipart_search(ngx_ahava_multipart_t *mp,
    const unsigned char **pos, const unsigned char *end, unsigned *found);
static int ngx_ahava_multipart_header(ngx_ahava_multipart_t *mp,
    const unsigned char **pos, const unsigned char *end, unsigned *done);
static int ngx_ahava_multipart_disposition(ngx_ahava_multipart_t *mp,
    const unsigned char *p, const unsigned char *end,
    ngx_ahava_multipart_part_t *part);
static int ngx_ahava_multipart_part(ngx_ahava_multipart_t *mp,
    ngx_ahava_multipart_part_t *part);
static int ngx_ahava_multipart_step(ngx_ahava_multipart_t *mp,
    const unsigned char **pos, const unsigned char *end);


/* RFC 9110 tchar */

static int
ngx_ahava_multipart_tchar(unsigned c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z')
        || (c >= 'A' && c <= 'Z'))
    {
        return 1;
    }

    return c != '\0' && strchr("!#$%&'*+-.^_`|~", (int) c) != NULL;
}


/* RFC 2046 bchars */

static int
ngx_ahava_multipart_bchar(unsigned c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z')
        || (c >= 'A' && c <= 'Z'))
    {
        return 1;
    }

    return c != '\0' && strchr("'()+_,-./:=? ", (int) c) != NULL;
}


/* ASCII case-insensitive comparison with a lowercase literal */

static int
ngx_ahava_multipart_ieq(const unsigned char *p, size_t len, const char *lower)
{
    size_t    i;
    unsigned  c;

    if (len != strlen(lower)) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        c = p[i];

        if (c >= 'A' && c <= 'Z') {
            c |= 0x20;
        }

        if (c != (unsigned char) lower[i]) {
            return 0;
        }
    }

    return 1;
}


static int
ngx_ahava_multipart_hex(unsigned c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }

    c |= 0x20;

    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }

    return -1;
}


static const unsigned char *
ngx_ahava_multipart_ows(const unsigned char *p, const unsigned char *end)
{
    while (p < end && (*p == ' ' || *p == '\t')) {
        p++;
    }

    return p;
}


/*
 * The next of the parameters *( OWS ";" OWS [ token "=" value ] ) OWS,
 * value a token or a quoted-string (whose escapes are only checked here).
 * Returns 1 with a parameter, 0 at the end, -1 on a syntax error.
 */

static int
ngx_ahava_multipart_next_param(const unsigned char **pos,
    const unsigned char *end, ngx_ahava_multipart_param_t *param)
{
    unsigned              c;
    const unsigned char  *p;

    p = *pos;

    for ( ;; ) {
        p = ngx_ahava_multipart_ows(p, end);

        if (p == end) {
            *pos = p;
            return 0;
        }

        if (*p++ != ';') {
            return -1;
        }

        p = ngx_ahava_multipart_ows(p, end);

        if (p == end) {
            *pos = p;
            return 0;
        }

        /* an empty parameter, as in ";;", is skipped */

        if (*p != ';') {
            break;
        }
    }

    param->name = p;

    while (p < end && ngx_ahava_multipart_tchar(*p)) {
        p++;
    }

    param->name_len = p - param->name;

    if (param->name_len == 0 || p == end || *p++ != '=') {
        return -1;
    }

    if (p < end && *p == '"') {
        p++;
        param->value = p;
        param->quoted = 1;

        for ( ;; ) {
            if (p == end) {
                return -1;
            }

            c = *p;

            if (c == '"') {
                break;
            }

            if (c == '\\') {
                if (++p == end) {
                    return -1;
                }

                c = *p;
            }

            /* qdtext and quoted-pair: no control character but HTAB */

            if ((c < 0x20 && c != '\t') || c == 0x7f) {
                return -1;
            }

            p++;
        }

        param->value_len = p - param->value;
        p++;

    } else {
        param->value = p;
        param->quoted = 0;

        while (p < end && ngx_ahava_multipart_tchar(*p)) {
            p++;
        }

        param->value_len = p - param->value;

        if (param->value_len == 0) {
            return -1;
        }
    }

    *pos = p;

    return 1;
}


/*
 * Copies the inside of a checked quoted-string without its escapes; dst
 * may be src (the result is never longer).  Returns the length, or max + 1
 * if it would be longer than max (then max bytes were written).
 */

static size_t
ngx_ahava_multipart_unquote(unsigned char *dst, const unsigned char *src,
    size_t len, size_t max)
{
    size_t    i, n;
    unsigned  c;

    n = 0;

    for (i = 0; i < len; i++) {
        c = src[i];

        if (c == '\\') {
            c = src[++i];
        }

        if (n == max) {
            return max + 1;
        }

        dst[n++] = (unsigned char) c;
    }

    return n;
}


/*
 * RFC 5987 ext-value: charset "'" [ language ] "'" value-chars, decoded
 * into dst (which may be src).  Only the UTF-8 charset is accepted; the
 * language is ignored.  Returns 0 or -1.
 */

static int
ngx_ahava_multipart_ext_value(unsigned char *dst, const unsigned char *src,
    size_t len, size_t *out_len)
{
    int                   hi, lo;
    size_t                n;
    unsigned              c;
    const unsigned char  *p, *end, *q;

    p = src;
    end = src + len;

    q = memchr(p, '\'', len);
    if (q == NULL || !ngx_ahava_multipart_ieq(p, q - p, "utf-8")) {
        return -1;
    }

    p = q + 1;

    q = memchr(p, '\'', end - p);
    if (q == NULL) {
        return -1;
    }

    p = q + 1;
    n = 0;

    while (p < end) {
        c = *p++;

        if (c == '%') {
            if (end - p < 2) {
                return -1;
            }

            hi = ngx_ahava_multipart_hex(p[0]);
            lo = ngx_ahava_multipart_hex(p[1]);

            if (hi < 0 || lo < 0) {
                return -1;
            }

            c = (unsigned) (hi << 4 | lo);
            p += 2;

        } else if (c == '*' || c == '\'') {
            /* the tchars that are not attr-chars (besides "%") */
            return -1;
        }

        dst[n++] = (unsigned char) c;
    }

    *out_len = n;

    return 0;
}


int
ngx_ahava_multipart_boundary(const unsigned char *content_type, size_t len,
    unsigned char *out, size_t *out_len)
{
    int                           rc;
    size_t                        n;
    unsigned                      found;
    const unsigned char          *p, *end, *type, *slash;
    ngx_ahava_multipart_param_t   param;

    p = content_type;
    end = content_type + len;

    /* type "/" subtype, with optional whitespace around */

    p = ngx_ahava_multipart_ows(p, end);
    type = p;

    while (p < end && ngx_ahava_multipart_tchar(*p)) {
        p++;
    }

    if (p == end || *p != '/') {
        return NGX_AHAVA_MULTIPART_ERR_NOT_FORM_DATA;
    }

    slash = p++;

    while (p < end && ngx_ahava_multipart_tchar(*p)) {
        p++;
    }

    if (!ngx_ahava_multipart_ieq(type, slash - type, "multipart")
        || !ngx_ahava_multipart_ieq(slash + 1, p - slash - 1, "form-data"))
    {
        return NGX_AHAVA_MULTIPART_ERR_NOT_FORM_DATA;
    }

    found = 0;
    n = 0;

    for ( ;; ) {
        rc = ngx_ahava_multipart_next_param(&p, end, &param);

        if (rc == 0) {
            break;
        }

        if (rc < 0) {
            return NGX_AHAVA_MULTIPART_ERR_BOUNDARY;
        }

        if (!ngx_ahava_multipart_ieq(param.name, param.name_len, "boundary"))
        {
            continue;
        }

        if (found) {
            return NGX_AHAVA_MULTIPART_ERR_BOUNDARY;
        }

        found = 1;

        if (param.quoted) {
            n = ngx_ahava_multipart_unquote(out, param.value,
                                            param.value_len,
                                            NGX_AHAVA_MULTIPART_BOUNDARY_MAX);

        } else {
            n = param.value_len;

            if (n <= NGX_AHAVA_MULTIPART_BOUNDARY_MAX) {
                memcpy(out, param.value, n);
            }
        }

        if (n == 0 || n > NGX_AHAVA_MULTIPART_BOUNDARY_MAX
            || out[n - 1] == ' ')
        {
            return NGX_AHAVA_MULTIPART_ERR_BOUNDARY;
        }
    }

    if (!found) {
        return NGX_AHAVA_MULTIPART_ERR_BOUNDARY;
    }

    /* checked by init too */

    if (ngx_ahava_multipart_init(NULL, out, n, 0, 0, 0) != 0) {
        return NGX_AHAVA_MULTIPART_ERR_BOUNDARY;
    }

    *out_len = n;

    return NGX_AHAVA_MULTIPART_OK;
}


/* mp may be NULL: then only the boundary is checked */

int
ngx_ahava_multipart_init(ngx_ahava_multipart_t *mp,
    const unsigned char *boundary, size_t len, size_t max_header,
    size_t max_parts, size_t max_field)
{
    size_t  i;

    if (len == 0 || len > NGX_AHAVA_MULTIPART_BOUNDARY_MAX
        || boundary[len - 1] == ' ')
    {
        return NGX_AHAVA_MULTIPART_ERR_BOUNDARY;
    }

    /* the linear search relies on the CR being only the delimiter's first */

    for (i = 0; i < len; i++) {
        if (!ngx_ahava_multipart_bchar(boundary[i])) {
            return NGX_AHAVA_MULTIPART_ERR_BOUNDARY;
        }
    }

    if (mp == NULL) {
        return NGX_AHAVA_MULTIPART_OK;
    }

    memset(mp, 0, offsetof(ngx_ahava_multipart_t, header));

    if (max_header == 0) {
        max_header = NGX_AHAVA_MULTIPART_DEFAULT_HEADER;
    }

    if (max_header > NGX_AHAVA_MULTIPART_HEADER_MAX) {
        max_header = NGX_AHAVA_MULTIPART_HEADER_MAX;
    }

    mp->max_header = max_header;
    mp->max_parts = max_parts ? max_parts : NGX_AHAVA_MULTIPART_DEFAULT_PARTS;
    mp->max_field = max_field ? max_field : NGX_AHAVA_MULTIPART_DEFAULT_FIELD;

    memcpy(mp->delim, "\r\n--", 4);
    memcpy(mp->delim + 4, boundary, len);
    mp->dlen = len + 4;

    /* as if the body were preceded by a CRLF: see the top of the file */
    mp->matched = 2;
    mp->state = sw_preamble;

    return NGX_AHAVA_MULTIPART_OK;
}


/* bytes that are not part of a delimiter: preamble or part data */

static int
ngx_ahava_multipart_emit(ngx_ahava_multipart_t *mp, const unsigned char *p,
    size_t n)
{
    if (n == 0) {
        return 0;
    }

    if (mp->state == sw_preamble) {
        /* this counts the 2 imaginary leading bytes too: harmless */

        if (n > NGX_AHAVA_MULTIPART_JUNK_MAX - mp->junk) {
            return NGX_AHAVA_MULTIPART_ERR_PREAMBLE;
        }

        mp->junk += n;

        return 0;
    }

    if (!mp->is_file) {
        if (n > mp->max_field - mp->field) {
            return NGX_AHAVA_MULTIPART_ERR_FIELD_TOO_LARGE;
        }

        mp->field += n;
    }

    if (mp->on_part_data) {
        return mp->on_part_data(mp->data, p, n);
    }

    return 0;
}


/*
 * Scans [*pos, end) for the delimiter, emitting what precedes it; *found is
 * set and *pos moved past the delimiter if it is complete, else all was
 * consumed and mp->matched bytes of a possible delimiter are held.
 */

static int
ngx_ahava_multipart_search(ngx_ahava_multipart_t *mp,
    const unsigned char **pos, const unsigned char *end, unsigned *found)
{
    int                   rc;
    size_t                q;
    const unsigned char  *p, *start, *mark, *cr;

    p = *pos;
    start = p;
    q = mp->matched;

    /* where the possible delimiter began, NULL if in an earlier chunk */
    mark = NULL;

    *found = 0;

    while (p < end) {

        if (q == 0) {
            cr = memchr(p, '\r', end - p);

            if (cr == NULL) {
                p = end;
                break;
            }

            mark = cr;
            p = cr + 1;
            q = 1;

            continue;
        }

        if (*p == mp->delim[q]) {
            p++;

            if (++q < mp->dlen) {
                continue;
            }

            /* only bytes of this chunk can precede the delimiter here */

            rc = ngx_ahava_multipart_emit(mp, start,
                                          mark ? (size_t) (mark - start) : 0);

            mp->matched = 0;
            *pos = p;
            *found = 1;

            return rc;
        }

        /*
         * No delimiter: the bytes held from an earlier chunk are data and
         * come first; those of this chunk stay in the run from start.
         */

        if (mark == NULL) {
            rc = ngx_ahava_multipart_emit(mp, mp->delim, mp->matched);
            if (rc != 0) {
                return rc;
            }
        }

        /* the byte that broke the match is looked at again */

        mark = NULL;
        q = 0;
    }

    *pos = end;
    mp->matched = q;

    if (q == 0) {
        return ngx_ahava_multipart_emit(mp, start, end - start);
    }

    if (mark != NULL) {
        return ngx_ahava_multipart_emit(mp, start, mark - start);
    }

    /* all of this chunk belongs to a possible delimiter */

    return 0;
}


/* gathers the header block up to its empty line; *done when complete */

static int
ngx_ahava_multipart_header(ngx_ahava_multipart_t *mp,
    const unsigned char **pos, const unsigned char *end, unsigned *done)
{
    unsigned              c;
    const unsigned char  *p;

    *done = 0;

    for (p = *pos; p < end; /* void */) {
        c = *p++;

        if (mp->hlen == mp->max_header) {
            return NGX_AHAVA_MULTIPART_ERR_HEADER_TOO_LARGE;
        }

        if (mp->hlen != 0 && mp->header[mp->hlen - 1] == '\r') {

            if (c != '\n') {
                return NGX_AHAVA_MULTIPART_ERR_HEADER;
            }

            mp->header[mp->hlen++] = (unsigned char) c;

            if (mp->hlen - mp->line == 2) {
                *done = 1;
                break;
            }

            mp->line = mp->hlen;

            continue;
        }

        /* no control characters, bare LF included; CR is checked above */

        if ((c < 0x20 && c != '\t' && c != '\r') || c == 0x7f) {
            return NGX_AHAVA_MULTIPART_ERR_HEADER;
        }

        mp->header[mp->hlen++] = (unsigned char) c;
    }

    *pos = p;

    return 0;
}


/* Content-Disposition: form-data; name="..."; filename="..." */

static int
ngx_ahava_multipart_disposition(ngx_ahava_multipart_t *mp,
    const unsigned char *p, const unsigned char *end,
    ngx_ahava_multipart_part_t *part)
{
    int                           rc;
    size_t                        n, name_len, filename_len, ext_len;
    unsigned char                *dst;
    const unsigned char          *type, *name, *filename, *ext;
    ngx_ahava_multipart_param_t   param;

    type = p;

    while (p < end && ngx_ahava_multipart_tchar(*p)) {
        p++;
    }

    if (p == type) {
        return NGX_AHAVA_MULTIPART_ERR_DISPOSITION;
    }

    if (!ngx_ahava_multipart_ieq(type, p - type, "form-data")) {
        return NGX_AHAVA_MULTIPART_ERR_NO_DISPOSITION;
    }

    name = NULL;
    filename = NULL;
    ext = NULL;
    name_len = 0;
    filename_len = 0;
    ext_len = 0;

    for ( ;; ) {
        rc = ngx_ahava_multipart_next_param(&p, end, &param);

        if (rc == 0) {
            break;
        }

        if (rc < 0) {
            return NGX_AHAVA_MULTIPART_ERR_DISPOSITION;
        }

        /* the values are decoded in place, in the header buffer */

        dst = mp->header + (param.value - mp->header);

        if (ngx_ahava_multipart_ieq(param.name, param.name_len, "name")) {
            if (name != NULL) {
                return NGX_AHAVA_MULTIPART_ERR_DISPOSITION;
            }

            n = param.value_len;

            if (param.quoted) {
                n = ngx_ahava_multipart_unquote(dst, param.value, n, n);
            }

            name = dst;
            name_len = n;

        } else if (ngx_ahava_multipart_ieq(param.name, param.name_len,
                                           "filename"))
        {
            if (filename != NULL) {
                return NGX_AHAVA_MULTIPART_ERR_DISPOSITION;
            }

            n = param.value_len;

            if (param.quoted) {
                n = ngx_ahava_multipart_unquote(dst, param.value, n, n);
            }

            filename = dst;
            filename_len = n;

        } else if (ngx_ahava_multipart_ieq(param.name, param.name_len,
                                           "filename*"))
        {
            if (ext != NULL || param.quoted
                || ngx_ahava_multipart_ext_value(dst, param.value,
                                                 param.value_len, &n)
                   != 0)
            {
                return NGX_AHAVA_MULTIPART_ERR_DISPOSITION;
            }

            ext = dst;
            ext_len = n;
        }

        /* other parameters are ignored */
    }

    if (name == NULL) {
        return NGX_AHAVA_MULTIPART_ERR_DISPOSITION;
    }

    part->name = name;
    part->name_len = name_len;

    /* RFC 6266 4.3: filename* wins over filename */

    if (ext != NULL) {
        part->filename = ext;
        part->filename_len = ext_len;

    } else {
        part->filename = filename;
        part->filename_len = filename_len;
    }

    part->is_file = (part->filename != NULL);

    return 0;
}


/* parses the gathered header block into part */

static int
ngx_ahava_multipart_part(ngx_ahava_multipart_t *mp,
    ngx_ahava_multipart_part_t *part)
{
    int                   rc;
    const unsigned char  *p, *end, *eol, *name, *v, *vend;
    const unsigned char  *cd, *cd_end, *ct, *ct_end;

    memset(part, 0, sizeof(ngx_ahava_multipart_part_t));

    cd = NULL;
    cd_end = NULL;
    ct = NULL;
    ct_end = NULL;

    /* every line ends in CRLF, the block in one more (the empty line) */

    p = mp->header;
    end = mp->header + mp->hlen - 2;

    while (p < end) {
        eol = memchr(p, '\r', end - p);
        if (eol == NULL) {
            return NGX_AHAVA_MULTIPART_ERR_HEADER;
        }

        /* a token and a colon: also refuses folded lines (leading space) */

        name = p;

        while (p < eol && ngx_ahava_multipart_tchar(*p)) {
            p++;
        }

        if (p == name || p == eol || *p != ':') {
            return NGX_AHAVA_MULTIPART_ERR_HEADER;
        }

        v = ngx_ahava_multipart_ows(p + 1, eol);
        vend = eol;

        while (vend > v && (vend[-1] == ' ' || vend[-1] == '\t')) {
            vend--;
        }

        if (ngx_ahava_multipart_ieq(name, p - name, "content-disposition")) {
            if (cd != NULL) {
                return NGX_AHAVA_MULTIPART_ERR_DISPOSITION;
            }

            cd = v;
            cd_end = vend;

        } else if (ngx_ahava_multipart_ieq(name, p - name, "content-type")) {
            if (ct != NULL || v == vend) {
                return NGX_AHAVA_MULTIPART_ERR_HEADER;
            }

            ct = v;
            ct_end = vend;
        }

        p = eol + 2;
    }

    if (cd == NULL) {
        return NGX_AHAVA_MULTIPART_ERR_NO_DISPOSITION;
    }

    rc = ngx_ahava_multipart_disposition(mp, cd, cd_end, part);
    if (rc != 0) {
        return rc;
    }

    if (ct != NULL) {
        part->content_type = ct;
        part->content_type_len = ct_end - ct;
    }

    /*
     * Now that nothing is parsed any more, NUL-terminate: the byte after
     * each value is a quote, separator, space or CR of its own.
     */

    mp->header[(part->name - mp->header) + part->name_len] = '\0';

    if (part->filename != NULL) {
        mp->header[(part->filename - mp->header) + part->filename_len] = '\0';
    }

    if (part->content_type != NULL) {
        mp->header[(part->content_type - mp->header)
                   + part->content_type_len] = '\0';
    }

    part->index = mp->parts;

    return 0;
}


/* one step of the state machine from *pos, which it moves on */

static int
ngx_ahava_multipart_step(ngx_ahava_multipart_t *mp,
    const unsigned char **pos, const unsigned char *end)
{
    int                          rc;
    size_t                       n;
    unsigned                     c, found;
    ngx_ahava_multipart_part_t   part;

    switch (mp->state) {

    case sw_preamble:
    case sw_body:
        rc = ngx_ahava_multipart_search(mp, pos, end, &found);
        if (rc != 0 || !found) {
            return rc;
        }

        if (mp->state == sw_body && mp->on_part_end) {
            rc = mp->on_part_end(mp->data);
            if (rc != 0) {
                return rc;
            }
        }

        mp->state = sw_boundary;
        mp->junk = 0;

        return 0;

    case sw_header:
        rc = ngx_ahava_multipart_header(mp, pos, end, &found);
        if (rc != 0 || !found) {
            return rc;
        }

        rc = ngx_ahava_multipart_part(mp, &part);
        if (rc != 0) {
            return rc;
        }

        mp->state = sw_body;
        mp->is_file = part.is_file;
        mp->field = 0;

        if (mp->on_part_begin) {
            return mp->on_part_begin(mp->data, &part);
        }

        return 0;

    case sw_epilogue:
        n = end - *pos;

        if (n > NGX_AHAVA_MULTIPART_JUNK_MAX - mp->junk) {
            return NGX_AHAVA_MULTIPART_ERR_EPILOGUE;
        }

        mp->junk += n;
        *pos = end;

        return 0;

    default:
        break;
    }

    /* the delimiter line, byte by byte */

    c = *(*pos)++;

    switch (mp->state) {

    case sw_boundary:
        if (c == '-') {
            mp->state = sw_close;
            return 0;
        }

        if (c == ' ' || c == '\t') {
            mp->state = sw_padding;
            mp->junk = 1;
            return 0;
        }

        if (c == '\r') {
            mp->state = sw_boundary_lf;
            return 0;
        }

        return NGX_AHAVA_MULTIPART_ERR_DELIMITER;

    case sw_close:
        if (c != '-') {
            return NGX_AHAVA_MULTIPART_ERR_DELIMITER;
        }

        if (mp->parts == 0) {
            return NGX_AHAVA_MULTIPART_ERR_NO_PARTS;
        }

        /* whatever follows the close delimiter is the epilogue */

        mp->state = sw_epilogue;
        mp->junk = 0;

        return 0;

    case sw_padding:
        if (c == ' ' || c == '\t') {
            if (++mp->junk > NGX_AHAVA_MULTIPART_JUNK_MAX) {
                return NGX_AHAVA_MULTIPART_ERR_DELIMITER;
            }

            return 0;
        }

        if (c == '\r') {
            mp->state = sw_boundary_lf;
            return 0;
        }

        return NGX_AHAVA_MULTIPART_ERR_DELIMITER;

    default: /* sw_boundary_lf */
        if (c != '\n') {
            return NGX_AHAVA_MULTIPART_ERR_DELIMITER;
        }

        if (mp->parts == mp->max_parts) {
            return NGX_AHAVA_MULTIPART_ERR_TOO_MANY_PARTS;
        }

        mp->parts++;
        mp->state = sw_header;
        mp->hlen = 0;
        mp->line = 0;

        return 0;
    }
}


int
ngx_ahava_multipart_feed(ngx_ahava_multipart_t *mp, const unsigned char *data,
    size_t len)
{
    int                   rc;
    const unsigned char  *p, *end;

    if (mp->error != 0) {
        return mp->error;
    }

    p = data;
    end = data + len;

    while (p < end) {
        rc = ngx_ahava_multipart_step(mp, &p, end);

        if (rc != 0) {
            mp->error = rc;
            return rc;
        }
    }

    return NGX_AHAVA_MULTIPART_OK;
}


int
ngx_ahava_multipart_finish(ngx_ahava_multipart_t *mp)
{
    if (mp->error != 0) {
        return mp->error;
    }

    if (mp->state == sw_epilogue) {
        return NGX_AHAVA_MULTIPART_OK;
    }

    mp->error = (mp->state == sw_preamble) ? NGX_AHAVA_MULTIPART_ERR_NO_PARTS
                                           : NGX_AHAVA_MULTIPART_ERR_TRUNCATED;

    return mp->error;
}


const char *
ngx_ahava_multipart_strerror(int rc)
{
    switch (rc) {

    case NGX_AHAVA_MULTIPART_OK:
        return "ok";

    case NGX_AHAVA_MULTIPART_ERR_NOT_FORM_DATA:
        return "content type is not multipart/form-data";

    case NGX_AHAVA_MULTIPART_ERR_BOUNDARY:
        return "missing or invalid multipart boundary";

    case NGX_AHAVA_MULTIPART_ERR_PREAMBLE:
        return "multipart preamble too large";

    case NGX_AHAVA_MULTIPART_ERR_DELIMITER:
        return "malformed multipart boundary line";

    case NGX_AHAVA_MULTIPART_ERR_TOO_MANY_PARTS:
        return "too many multipart parts";

    case NGX_AHAVA_MULTIPART_ERR_HEADER_TOO_LARGE:
        return "multipart part header too large";

    case NGX_AHAVA_MULTIPART_ERR_HEADER:
        return "malformed multipart part header";

    case NGX_AHAVA_MULTIPART_ERR_NO_DISPOSITION:
        return "part without Content-Disposition: form-data";

    case NGX_AHAVA_MULTIPART_ERR_DISPOSITION:
        return "malformed Content-Disposition";

    case NGX_AHAVA_MULTIPART_ERR_FIELD_TOO_LARGE:
        return "form field too large";

    case NGX_AHAVA_MULTIPART_ERR_EPILOGUE:
        return "multipart epilogue too large";

    case NGX_AHAVA_MULTIPART_ERR_TRUNCATED:
        return "truncated multipart body";

    case NGX_AHAVA_MULTIPART_ERR_NO_PARTS:
        return "multipart body without parts";

    default:
        return "aborted";
    }
}
