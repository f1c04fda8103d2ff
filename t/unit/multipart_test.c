
/*
 * Copyright (C) Ahava
 *
 * Unit test of ngx_ahava_multipart, TAP output.  The callbacks are
 * recorded as a text log ({B:name|filename|type|is_file}, {D:data} with
 * consecutive data merged, {E}), so that a body fed whole, split at every
 * position and one byte at a time can be compared as a whole.
 */


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ngx_ahava_multipart.h"


#define B  "AaB03x"


typedef struct {
    unsigned char        *log;
    size_t                len;
    size_t                cap;
    unsigned              in_data;
    size_t                data_calls;
    size_t                outside;      /* data not pointing into buf */
    const unsigned char  *buf;
    size_t                buf_len;
    int                   abort_begin;
    int                   abort_data;
} rec_t;


static int  tests;
static int  failures;


static void
ok(int cond, const char *desc)
{
    tests++;

    if (!cond) {
        failures++;
    }

    printf("%sok %d - %s\n", cond ? "" : "not ", tests, desc);
}


static void
rec_add(rec_t *r, const void *p, size_t n)
{
    if (r->len + n + 1 > r->cap) {
        r->cap = (r->len + n + 1) * 2;
        r->log = realloc(r->log, r->cap);

        if (r->log == NULL) {
            abort();
        }
    }

    memcpy(r->log + r->len, p, n);
    r->len += n;
    r->log[r->len] = '\0';
}


static void
rec_str(rec_t *r, const char *s)
{
    rec_add(r, s, strlen(s));
}


static int
on_begin(void *data, const ngx_ahava_multipart_part_t *part)
{
    rec_t  *r = data;

    r->in_data = 0;

    rec_str(r, "{B:");
    rec_add(r, part->name, part->name_len);
    rec_str(r, "|");

    if (part->filename) {
        rec_add(r, part->filename, part->filename_len);

    } else {
        rec_str(r, "-");
    }

    rec_str(r, "|");

    if (part->content_type) {
        rec_add(r, part->content_type, part->content_type_len);

    } else {
        rec_str(r, "-");
    }

    rec_str(r, part->is_file ? "|1}" : "|0}");

    /* the values are NUL-terminated */

    if (part->name[part->name_len] != '\0'
        || (part->filename && part->filename[part->filename_len] != '\0')
        || (part->content_type
            && part->content_type[part->content_type_len] != '\0'))
    {
        rec_str(r, "{NUL missing}");
    }

    return r->abort_begin;
}


static int
on_data(void *data, const unsigned char *p, size_t n)
{
    rec_t  *r = data;

    if (n == 0) {
        rec_str(r, "{empty data call}");
    }

    if (r->in_data) {
        r->len--;               /* reopen the {D:...} record */

    } else {
        rec_str(r, "{D:");
    }

    rec_add(r, p, n);
    rec_str(r, "}");
    r->in_data = 1;
    r->data_calls++;

    if (r->buf == NULL || p < r->buf || p + n > r->buf + r->buf_len) {
        r->outside++;
    }

    return r->abort_data;
}


static int
on_end(void *data)
{
    rec_t  *r = data;

    r->in_data = 0;
    rec_str(r, "{E}");

    return 0;
}


typedef struct {
    size_t  max_header;
    size_t  max_parts;
    size_t  max_field;
} limits_t;


/*
 * Feeds body in chunks: step 0 whole, else the given cut (split != 0) or
 * chunks of step bytes.  Returns feed's first error or finish's result;
 * the log is in r (freed by the caller).
 */

static int
run(const char *boundary, const void *body, size_t len, size_t split,
    size_t step, const limits_t *lim, rec_t *r)
{
    int                     rc;
    size_t                  off, n;
    unsigned char          *chunk;
    const unsigned char    *p;
    ngx_ahava_multipart_t  *mp;

    mp = malloc(sizeof(ngx_ahava_multipart_t));
    if (mp == NULL) {
        abort();
    }

    /* garbage first: init must not depend on a zeroed struct */
    memset(mp, 0xa5, sizeof(ngx_ahava_multipart_t));

    rc = ngx_ahava_multipart_init(mp, (const unsigned char *) boundary,
                                  strlen(boundary),
                                  lim ? lim->max_header : 0,
                                  lim ? lim->max_parts : 0,
                                  lim ? lim->max_field : 0);
    if (rc != 0) {
        free(mp);
        return rc;
    }

    mp->on_part_begin = on_begin;
    mp->on_part_data = on_data;
    mp->on_part_end = on_end;
    mp->data = r;

    p = body;
    off = 0;

    while (off < len) {
        if (split) {
            n = (off == 0) ? split : len - off;

        } else if (step) {
            n = (len - off < step) ? len - off : step;

        } else {
            n = len;
        }

        /* a private copy of each chunk, so that ASan sees overreads */

        chunk = malloc(n ? n : 1);
        if (chunk == NULL) {
            abort();
        }

        memcpy(chunk, p + off, n);
        r->buf = chunk;
        r->buf_len = n;

        rc = ngx_ahava_multipart_feed(mp, chunk, n);

        free(chunk);
        r->buf = NULL;

        if (rc != 0) {
            if (ngx_ahava_multipart_feed(mp, (const unsigned char *) "x", 1)
                != rc
                || ngx_ahava_multipart_finish(mp) != rc)
            {
                rc = 999;   /* the error is not sticky */
            }

            free(mp);
            return rc;
        }

        off += n;
    }

    rc = ngx_ahava_multipart_finish(mp);

    free(mp);

    return rc;
}


static void
rec_init(rec_t *r)
{
    memset(r, 0, sizeof(rec_t));
}


/* whole: the result and the log; returns 1 if they are as expected */

static int
check(const char *boundary, const char *body, size_t len,
    const limits_t *lim, int want_rc, const char *want_log)
{
    int    rc, good;
    rec_t  r;

    rec_init(&r);

    rc = run(boundary, body, len, 0, 0, lim, &r);

    good = (rc == want_rc);

    if (want_log != NULL) {
        good = good && strlen(want_log) == r.len
               && (r.len == 0 || memcmp(r.log, want_log, r.len) == 0);
    }

    if (!good) {
        printf("# rc %d (want %d), log: %.*s\n", rc, want_rc, (int) r.len,
               r.log ? (char *) r.log : "");
    }

    free(r.log);

    return good;
}


/*
 * Logs of the same body fed differently: equal, or, after an error, the
 * data of the part being parsed may have got further in one of them (a
 * chunk's data is handed on before the next chunk exceeds max_field), so
 * one must be a prefix of the other, an open {D: record left open.
 */

static int
same_log(int rc, const rec_t *a, const rec_t *b)
{
    size_t  la, lb;

    if (a->len == b->len && (a->len == 0
                             || memcmp(a->log, b->log, a->len) == 0))
    {
        return 1;
    }

    if (rc == 0) {
        return 0;
    }

    la = a->len - (a->in_data ? 1 : 0);
    lb = b->len - (b->in_data ? 1 : 0);

    if (la > lb) {
        const rec_t  *t = a;

        a = b;
        b = t;
        la = lb;
    }

    return la == 0 || memcmp(a->log, b->log, la) == 0;
}


/*
 * The same body split at every position and fed one byte at a time (and
 * in chunks of 2, 3, 7) gives the same result and log as fed whole.
 */

static int
same_split(const char *boundary, const char *body, size_t len,
    const limits_t *lim)
{
    int     rc, rc0, good;
    size_t  i;
    rec_t   r0, r;

    static const size_t  steps[] = { 1, 2, 3, 7 };

    rec_init(&r0);
    rc0 = run(boundary, body, len, 0, 0, lim, &r0);

    good = 1;

    for (i = 1; i < len; i++) {
        rec_init(&r);
        rc = run(boundary, body, len, i, 0, lim, &r);

        if (rc != rc0 || !same_log(rc, &r, &r0)) {
            printf("# split at %zu: rc %d, log %.*s\n", i, rc, (int) r.len,
                   r.log ? (char *) r.log : "");
            good = 0;
        }

        free(r.log);
    }

    for (i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        rec_init(&r);
        rc = run(boundary, body, len, 0, steps[i], lim, &r);

        if (rc != rc0 || !same_log(rc, &r, &r0)) {
            printf("# step %zu: rc %d, log %.*s\n", steps[i], rc,
                   (int) r.len, r.log ? (char *) r.log : "");
            good = 0;
        }

        free(r.log);
    }

    free(r0.log);

    return good;
}


static int
bnd(const char *ct, int want_rc, const char *want)
{
    int            rc;
    size_t         n;
    unsigned char  out[NGX_AHAVA_MULTIPART_BOUNDARY_MAX + 1];

    memset(out, 0xa5, sizeof(out));
    n = 12345;

    rc = ngx_ahava_multipart_boundary((const unsigned char *) ct, strlen(ct),
                                      out, &n);

    if (rc != want_rc) {
        printf("# %s: rc %d\n", ct, rc);
        return 0;
    }

    if (want == NULL) {
        return 1;
    }

    /* never a byte written past the 70 promised */

    return n == strlen(want) && memcmp(out, want, n) == 0
           && out[NGX_AHAVA_MULTIPART_BOUNDARY_MAX] == 0xa5;
}


#define S(lit)  lit, sizeof(lit) - 1

#define FIELD(name, value)                                                    \
    "--" B "\r\nContent-Disposition: form-data; name=\"" name "\"\r\n\r\n"   \
    value "\r\n"

#define FILEPART(name, fn, ct, value)                                         \
    "--" B "\r\nContent-Disposition: form-data; name=\"" name                 \
    "\"; filename=\"" fn "\"\r\nContent-Type: " ct "\r\n\r\n" value "\r\n"

#define CLOSE  "--" B "--\r\n"


int
main(void)
{
    int            rc;
    char          *big, *p;
    size_t         i, n, len;
    rec_t          r;
    clock_t        t0;
    limits_t       lim;
    unsigned char  out[NGX_AHAVA_MULTIPART_BOUNDARY_MAX];

    static const char  simple[] =
        FIELD("title", "hello")
        FILEPART("file", "a.jpg", "image/jpeg", "\xff\xd8\xff\xe0 data")
        CLOSE;

    static const char  simple_log[] =
        "{B:title|-|-|0}{D:hello}{E}"
        "{B:file|a.jpg|image/jpeg|1}{D:\xff\xd8\xff\xe0 data}{E}";

    static const char  *near[] = {
        "\r\n--AaB03", "\r\n--AaB0", "\r\n--AaB03X", "\r\n--Aa", "\r\n--",
        "\r\n-", "\r\n", "\r", "\r\n--aab03x", "\r\r\n--AaB03\r",
        "\n--AaB03x", "--AaB03x", "\r\n-\r\n--\r\n--A\r\n--AaB03",
        "x\r\n--AaB03\r\n--AaB03"
    };

    /* --- Content-Type boundary parameter --- */

    ok(bnd("multipart/form-data; boundary=AaB03x", 0, "AaB03x"),
       "boundary: bare token");
    ok(bnd("multipart/form-data; boundary=\"AaB03x\"", 0, "AaB03x"),
       "boundary: quoted");
    ok(bnd("Multipart/Form-Data; BOUNDARY=x", 0, "x"),
       "boundary: case-insensitive type and parameter name");
    ok(bnd("  multipart/form-data ;  boundary=abc  ", 0, "abc"),
       "boundary: optional whitespace");
    ok(bnd("multipart/form-data;boundary=abc", 0, "abc"),
       "boundary: no whitespace at all");
    ok(bnd("multipart/form-data; charset=utf-8; boundary=abc; x=\"y;z\"", 0,
           "abc"),
       "boundary: among other parameters");
    ok(bnd("multipart/form-data; boundary=\"a b:c(d)e,f/g=h?i'j+k_l.m-n\"",
           0, "a b:c(d)e,f/g=h?i'j+k_l.m-n"),
       "boundary: every bchar in a quoted-string");
    ok(bnd("multipart/form-data; boundary=\"a\\bc\"", 0, "abc"),
       "boundary: quoted-pair escape");
    ok(bnd("multipart/form-data; boundary="
           "----WebKitFormBoundary7MA4YWxkTrZu0gW", 0,
           "----WebKitFormBoundary7MA4YWxkTrZu0gW"),
       "boundary: a browser's");
    ok(bnd("multipart/form-data; boundary="
           "1234567890123456789012345678901234567890123456789012345678901234"
           "567890", 0,
           "1234567890123456789012345678901234567890123456789012345678901234"
           "567890"),
       "boundary: 70 characters");
    ok(bnd("multipart/form-data;; boundary=abc;", 0, "abc"),
       "boundary: empty parameters");

    ok(bnd("multipart/form-data; boundary="
           "1234567890123456789012345678901234567890123456789012345678901234"
           "5678901", NGX_AHAVA_MULTIPART_ERR_BOUNDARY, NULL),
       "boundary: 71 characters refused");
    ok(bnd("multipart/form-data; boundary=\""
           "1234567890123456789012345678901234567890123456789012345678901234"
           "5678901\"", NGX_AHAVA_MULTIPART_ERR_BOUNDARY, NULL),
       "boundary: 71 quoted characters refused");
    ok(bnd("multipart/mixed; boundary=abc",
           NGX_AHAVA_MULTIPART_ERR_NOT_FORM_DATA, NULL),
       "boundary: multipart/mixed refused");
    ok(bnd("application/x-www-form-urlencoded",
           NGX_AHAVA_MULTIPART_ERR_NOT_FORM_DATA, NULL),
       "boundary: urlencoded refused");
    ok(bnd("multipart/form-dataX; boundary=abc",
           NGX_AHAVA_MULTIPART_ERR_NOT_FORM_DATA, NULL),
       "boundary: longer subtype refused");
    ok(bnd("multipart / form-data; boundary=abc",
           NGX_AHAVA_MULTIPART_ERR_NOT_FORM_DATA, NULL),
       "boundary: whitespace around / refused");
    ok(bnd("", NGX_AHAVA_MULTIPART_ERR_NOT_FORM_DATA, NULL),
       "boundary: empty header refused");
    ok(bnd("multipart/form-data", NGX_AHAVA_MULTIPART_ERR_BOUNDARY, NULL),
       "boundary: missing");
    ok(bnd("multipart/form-data; charset=utf-8",
           NGX_AHAVA_MULTIPART_ERR_BOUNDARY, NULL),
       "boundary: missing among other parameters");
    ok(bnd("multipart/form-data; boundary=",
           NGX_AHAVA_MULTIPART_ERR_BOUNDARY, NULL),
       "boundary: empty bare value");
    ok(bnd("multipart/form-data; boundary=\"\"",
           NGX_AHAVA_MULTIPART_ERR_BOUNDARY, NULL),
       "boundary: empty quoted value");
    ok(bnd("multipart/form-data; boundary=\"abc ",
           NGX_AHAVA_MULTIPART_ERR_BOUNDARY, NULL),
       "boundary: unterminated quoted-string");
    ok(bnd("multipart/form-data; boundary=\"abc \"",
           NGX_AHAVA_MULTIPART_ERR_BOUNDARY, NULL),
       "boundary: ending in a space");
    ok(bnd("multipart/form-data; boundary=a;boundary=a",
           NGX_AHAVA_MULTIPART_ERR_BOUNDARY, NULL),
       "boundary: duplicate parameter");
    ok(bnd("multipart/form-data; boundary=a; Boundary=\"b\"",
           NGX_AHAVA_MULTIPART_ERR_BOUNDARY, NULL),
       "boundary: duplicate parameter, other case");
    ok(bnd("multipart/form-data; boundary=a!b",
           NGX_AHAVA_MULTIPART_ERR_BOUNDARY, NULL),
       "boundary: token character that is no bchar");
    ok(bnd("multipart/form-data; boundary=\"a\\\"b\"",
           NGX_AHAVA_MULTIPART_ERR_BOUNDARY, NULL),
       "boundary: escaped quote is no bchar");
    ok(bnd("multipart/form-data; boundary=\"a\tb\"",
           NGX_AHAVA_MULTIPART_ERR_BOUNDARY, NULL),
       "boundary: tab is no bchar");
    ok(bnd("multipart/form-data; boundary=\"a\xc3\xa9\"",
           NGX_AHAVA_MULTIPART_ERR_BOUNDARY, NULL),
       "boundary: non-ASCII refused");
    ok(bnd("multipart/form-data; boundary = abc",
           NGX_AHAVA_MULTIPART_ERR_BOUNDARY, NULL),
       "boundary: whitespace around = refused");
    ok(bnd("multipart/form-data; boundary=abc def",
           NGX_AHAVA_MULTIPART_ERR_BOUNDARY, NULL),
       "boundary: bare value with a space");
    ok(bnd("multipart/form-data boundary=abc",
           NGX_AHAVA_MULTIPART_ERR_BOUNDARY, NULL),
       "boundary: missing ;");
    ok(bnd("multipart/form-data; boundary=abc, text/plain",
           NGX_AHAVA_MULTIPART_ERR_BOUNDARY, NULL),
       "boundary: trailing garbage");
    ok(bnd("multipart/form-data; =abc", NGX_AHAVA_MULTIPART_ERR_BOUNDARY,
           NULL),
       "boundary: parameter without a name");
    ok(bnd("multipart/form-data; boundary=\"abc\"x",
           NGX_AHAVA_MULTIPART_ERR_BOUNDARY, NULL),
       "boundary: bytes after the quoted-string");
    ok(bnd("multipart/form-data; boundary=\"a\\",
           NGX_AHAVA_MULTIPART_ERR_BOUNDARY, NULL),
       "boundary: escape at the end");
    ok(bnd("multipart/form-data; boundary=\"a\rb\"",
           NGX_AHAVA_MULTIPART_ERR_BOUNDARY, NULL),
       "boundary: CR in a quoted-string");

    {
        static const char  ct[] = "multipart/form-data; boundary=abc\0def";

        rc = ngx_ahava_multipart_boundary((const unsigned char *) ct,
                                          sizeof(ct) - 1, out, &n);
        ok(rc == NGX_AHAVA_MULTIPART_ERR_BOUNDARY, "boundary: embedded NUL");
    }

    /* --- init --- */

    {
        ngx_ahava_multipart_t  mp;

        ok(ngx_ahava_multipart_init(&mp, (const unsigned char *) "", 0,
                                    0, 0, 0)
           == NGX_AHAVA_MULTIPART_ERR_BOUNDARY
           && ngx_ahava_multipart_init(&mp, (const unsigned char *) "a\r", 2,
                                       0, 0, 0)
              == NGX_AHAVA_MULTIPART_ERR_BOUNDARY
           && ngx_ahava_multipart_init(&mp, (const unsigned char *) "a ", 2,
                                       0, 0, 0)
              == NGX_AHAVA_MULTIPART_ERR_BOUNDARY
           && ngx_ahava_multipart_init(&mp, (const unsigned char *) "a", 1,
                                       0, 0, 0) == 0,
           "init: checks the boundary");
    }

    /* --- bodies --- */

    ok(check(B, S(simple), NULL, 0, simple_log),
       "simple: one field, one file part");
    ok(same_split(B, S(simple), NULL),
       "simple: the same split at every byte and byte by byte");

    rec_init(&r);
    rc = run(B, S(simple), 0, 0, NULL, &r);
    ok(rc == 0 && r.outside == 0 && r.data_calls == 2,
       "simple: data passed without copy, one call per part when whole");
    free(r.log);

    rec_init(&r);
    rc = run(B, S(simple), 0, 1, NULL, &r);
    ok(rc == 0 && r.data_calls == 5 + 9,
       "simple: one byte at a time, one data call per data byte");
    free(r.log);

    /* near-boundary bytes inside data stay data */

    for (i = 0; i < sizeof(near) / sizeof(near[0]); i++) {
        char  body[512], want[512], desc[128];

        snprintf(body, sizeof(body),
                 FILEPART("f", "a.bin", "application/octet-stream", "x%sy")
                 FILEPART("g", "b.bin", "application/octet-stream", "%s")
                 CLOSE, near[i], near[i]);

        snprintf(want, sizeof(want),
                 "{B:f|a.bin|application/octet-stream|1}{D:x%sy}{E}"
                 "{B:g|b.bin|application/octet-stream|1}{D:%s}{E}",
                 near[i], near[i]);

        snprintf(desc, sizeof(desc), "data like a delimiter %zu stays data",
                 i);

        ok(check(B, body, strlen(body), NULL, 0, want), desc);

        snprintf(desc, sizeof(desc),
                 "data like a delimiter %zu: the same split anywhere", i);

        ok(same_split(B, body, strlen(body), NULL), desc);
    }

    ok(check(B, S(FILEPART("f", "a", "text/plain", "a\r\nb\r\n\r\nc\r")
                  CLOSE), NULL, 0,
             "{B:f|a|text/plain|1}{D:a\r\nb\r\n\r\nc\r}{E}"),
       "CR LF inside data, CR just before the delimiter");

    ok(check(B, S(FIELD("a", "") FILEPART("f", "e.txt", "text/plain", "")
                  CLOSE), NULL, 0,
             "{B:a|-|-|0}{E}{B:f|e.txt|text/plain|1}{E}"),
       "empty part data");
    ok(same_split(B, S(FIELD("a", "") FIELD("b", "") CLOSE), NULL),
       "empty part data: the same split anywhere");

    ok(check(B, S(FILEPART("f1", "a.jpg", "image/jpeg", "AAA")
                  FILEPART("f2", "b.png", "image/png", "BBB") CLOSE), NULL, 0,
             "{B:f1|a.jpg|image/jpeg|1}{D:AAA}{E}"
             "{B:f2|b.png|image/png|1}{D:BBB}{E}"),
       "two file parts are both reported");

    /* truncated */

    ok(check(B, S(FILEPART("f", "a.jpg", "image/jpeg", "AAA")), NULL,
             NGX_AHAVA_MULTIPART_ERR_TRUNCATED,
             "{B:f|a.jpg|image/jpeg|1}{D:AAA}"),
       "truncated: no close delimiter (its CRLF held back)");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; name=\"a\"\r\n"
                  "\r\nabc"), NULL, NGX_AHAVA_MULTIPART_ERR_TRUNCATED,
             "{B:a|-|-|0}{D:abc}"),
       "truncated: inside data");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; name=\"a\"\r\n"
                  "\r\nabc\r\n--" B), NULL, NGX_AHAVA_MULTIPART_ERR_TRUNCATED,
             "{B:a|-|-|0}{D:abc}{E}"),
       "truncated: after a delimiter");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; name=\"a\"\r\n"
                  "\r\nabc\r\n--" B "-"), NULL,
             NGX_AHAVA_MULTIPART_ERR_TRUNCATED, "{B:a|-|-|0}{D:abc}{E}"),
       "truncated: inside the close delimiter");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; na"), NULL,
             NGX_AHAVA_MULTIPART_ERR_TRUNCATED, ""),
       "truncated: inside a header");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; name=\"a\"\r\n"
                  "\r\nabc\r\n--" B "--"), NULL, 0, "{B:a|-|-|0}{D:abc}{E}"),
       "close delimiter without a final CRLF");

    ok(check(B, S(""), NULL, NGX_AHAVA_MULTIPART_ERR_NO_PARTS, ""),
       "empty body: no parts");
    ok(check(B, S(CLOSE), NULL, NGX_AHAVA_MULTIPART_ERR_NO_PARTS, ""),
       "only a close delimiter: no parts");
    ok(check(B, S("just some text"), NULL, NGX_AHAVA_MULTIPART_ERR_NO_PARTS,
             ""),
       "no delimiter at all: no parts");
    ok(check(B, S("x--" B "\r\nContent-Disposition: form-data; name=a\r\n"
                  "\r\n\r\n" CLOSE), NULL, NGX_AHAVA_MULTIPART_ERR_NO_PARTS,
             ""),
       "a first boundary not at the start nor after CRLF is preamble");

    /* headers */

    lim.max_header = 64;
    lim.max_parts = 0;
    lim.max_field = 0;

    /* exactly 64 bytes: 60 of the line, its CRLF and the empty line */
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; "
                  "name=\"abcdefghijklmnopqrstu\"\r\n\r\nv\r\n" CLOSE),
             &lim, 0, "{B:abcdefghijklmnopqrstu|-|-|0}{D:v}{E}"),
       "header block of exactly max_header bytes");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; "
                  "name=\"abcdefghijklmnopqrstuv\"\r\n\r\nv\r\n" CLOSE),
             &lim, NGX_AHAVA_MULTIPART_ERR_HEADER_TOO_LARGE, ""),
       "header block one byte too long");
    ok(same_split(B, S("--" B "\r\nContent-Disposition: form-data; "
                       "name=\"abcdefghijklmnopqrstuv\"\r\n\r\nv\r\n"
                       CLOSE), &lim),
       "header too long: the same split anywhere");

    len = 100000;
    big = malloc(len + 200);
    p = big + sprintf(big, "--" B "\r\nContent-Disposition: form-data; "
                      "name=a\r\nX-Long: ");
    memset(p, 'x', len);
    p += len;
    p += sprintf(p, "\r\n\r\nv\r\n" CLOSE);
    ok(check(B, big, p - big, NULL, NGX_AHAVA_MULTIPART_ERR_HEADER_TOO_LARGE,
             ""),
       "a 100 kB header line with the default limit");
    free(big);

    ok(check(B, S("--" B "\r\n\r\nv\r\n" CLOSE), NULL,
             NGX_AHAVA_MULTIPART_ERR_NO_DISPOSITION, ""),
       "part without headers: missing Content-Disposition");
    ok(check(B, S("--" B "\r\nContent-Type: text/plain\r\n\r\nv\r\n" CLOSE),
             NULL, NGX_AHAVA_MULTIPART_ERR_NO_DISPOSITION, ""),
       "missing Content-Disposition");
    ok(check(B, S(FIELD("a", "1") "--" B "\r\nContent-Type: text/plain\r\n"
                  "\r\nv\r\n" CLOSE),
             NULL, NGX_AHAVA_MULTIPART_ERR_NO_DISPOSITION,
             "{B:a|-|-|0}{D:1}{E}"),
       "missing Content-Disposition in the second part");
    ok(check(B, S("--" B "\r\nContent-Disposition: attachment; name=a\r\n"
                  "\r\nv\r\n" CLOSE),
             NULL, NGX_AHAVA_MULTIPART_ERR_NO_DISPOSITION, ""),
       "Content-Disposition not form-data");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data\r\n\r\nv\r\n"
                  CLOSE),
             NULL, NGX_AHAVA_MULTIPART_ERR_DISPOSITION, ""),
       "form-data without a name");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; name=a; "
                  "name=b\r\n\r\nv\r\n" CLOSE),
             NULL, NGX_AHAVA_MULTIPART_ERR_DISPOSITION, ""),
       "duplicate name parameter");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; name=a\r\n"
                  "Content-Disposition: form-data; name=a\r\n\r\nv\r\n"
                  CLOSE),
             NULL, NGX_AHAVA_MULTIPART_ERR_DISPOSITION, ""),
       "duplicate Content-Disposition");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; name=\"a\r\n"
                  "\r\nv\r\n" CLOSE),
             NULL, NGX_AHAVA_MULTIPART_ERR_DISPOSITION, ""),
       "unterminated quoted name");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; name=a b\r\n"
                  "\r\nv\r\n" CLOSE),
             NULL, NGX_AHAVA_MULTIPART_ERR_DISPOSITION, ""),
       "garbage after a parameter");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data;\r\n"
                  " name=a\r\n\r\nv\r\n" CLOSE),
             NULL, NGX_AHAVA_MULTIPART_ERR_HEADER, ""),
       "folded header line refused");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; name=a\n"
                  "\r\nv\r\n" CLOSE),
             NULL, NGX_AHAVA_MULTIPART_ERR_HEADER, ""),
       "bare LF in headers refused");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; name=a\r\r\n"
                  "\r\nv\r\n" CLOSE),
             NULL, NGX_AHAVA_MULTIPART_ERR_HEADER, ""),
       "bare CR in headers refused");
    ok(check(B, S("--" B "\r\nContent-Disposition : form-data; name=a\r\n"
                  "\r\nv\r\n" CLOSE),
             NULL, NGX_AHAVA_MULTIPART_ERR_HEADER, ""),
       "space before the colon refused");
    ok(check(B, S("--" B "\r\nno colon here\r\n\r\nv\r\n" CLOSE),
             NULL, NGX_AHAVA_MULTIPART_ERR_HEADER, ""),
       "header line without a colon refused");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; name=\"a\0\"\r\n"
                  "\r\nv\r\n" CLOSE),
             NULL, NGX_AHAVA_MULTIPART_ERR_HEADER, ""),
       "NUL in a header refused");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; name=a\r\n"
                  "Content-Type: a/b\r\nContent-Type: c/d\r\n\r\nv\r\n"
                  CLOSE),
             NULL, NGX_AHAVA_MULTIPART_ERR_HEADER, ""),
       "duplicate Content-Type refused");

    ok(check(B, S("--" B "\r\ncontent-disposition:form-data;NAME=x;"
                  "FileName=y.txt\r\nCONTENT-TYPE:   text/plain; charset=utf-8"
                  "  \r\nX-Other: whatever\r\n\r\nv\r\n" CLOSE),
             NULL, 0, "{B:x|y.txt|text/plain; charset=utf-8|1}{D:v}{E}"),
       "header and parameter names in any case, other headers ignored");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; name=\"a\\\"b\";"
                  " filename=\"x\\\"y\\\\z.jpg\"\r\n\r\nv\r\n" CLOSE),
             NULL, 0, "{B:a\"b|x\"y\\z.jpg|-|1}{D:v}{E}"),
       "escaped quote and backslash in name and filename");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; name=\"f\"; "
                  "filename=\"\"\r\n\r\n\r\n" CLOSE),
             NULL, 0, "{B:f||-|1}{E}"),
       "empty filename is still a file part");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; name=\"f\"; "
                  "filename=\"\xd7\xa9\xd7\x9c\xd7\x95\xd7\x9d.pdf\"\r\n\r\n"
                  "v\r\n" CLOSE),
             NULL, 0, "{B:f|\xd7\xa9\xd7\x9c\xd7\x95\xd7\x9d.pdf|-|1}{D:v}{E}"),
       "raw UTF-8 filename");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; name=\"f\"; "
                  "filename=\"fallback.pdf\"; filename*=UTF-8''%e2%82%ac%20"
                  "rates.pdf\r\n\r\nv\r\n" CLOSE),
             NULL, 0, "{B:f|\xe2\x82\xac rates.pdf|-|1}{D:v}{E}"),
       "filename* (RFC 5987) decoded, wins over filename");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; name=\"f\"; "
                  "filename*=utf-8'he'a.txt\r\n\r\nv\r\n" CLOSE),
             NULL, 0, "{B:f|a.txt|-|1}{D:v}{E}"),
       "filename* alone makes a file part");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; name=\"f\"; "
                  "filename*=ISO-8859-1''a%E9.txt\r\n\r\nv\r\n" CLOSE),
             NULL, NGX_AHAVA_MULTIPART_ERR_DISPOSITION, ""),
       "filename* in another charset refused");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; name=\"f\"; "
                  "filename*=UTF-8''a%2.txt\r\n\r\nv\r\n" CLOSE),
             NULL, NGX_AHAVA_MULTIPART_ERR_DISPOSITION, ""),
       "filename* with a bad escape refused");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; name=\"f\"; "
                  "filename*=\"UTF-8''a.txt\"\r\n\r\nv\r\n" CLOSE),
             NULL, NGX_AHAVA_MULTIPART_ERR_DISPOSITION, ""),
       "quoted filename* refused");
    ok(check(B, S("--" B "\r\nContent-Disposition: form-data; name=\"f\"; "
                  "filename=a; filename=b\r\n\r\nv\r\n" CLOSE),
             NULL, NGX_AHAVA_MULTIPART_ERR_DISPOSITION, ""),
       "duplicate filename refused");

    /* limits */

    lim.max_header = 0;
    lim.max_parts = 2;
    lim.max_field = 0;

    ok(check(B, S(FIELD("a", "1") FIELD("b", "2") CLOSE), &lim, 0,
             "{B:a|-|-|0}{D:1}{E}{B:b|-|-|0}{D:2}{E}"),
       "max_parts parts");
    ok(check(B, S(FIELD("a", "1") FIELD("b", "2") FIELD("c", "3") CLOSE),
             &lim, NGX_AHAVA_MULTIPART_ERR_TOO_MANY_PARTS,
             "{B:a|-|-|0}{D:1}{E}{B:b|-|-|0}{D:2}{E}"),
       "too many parts: refused before the extra part's headers");

    lim.max_parts = 0;
    lim.max_field = 4;

    ok(check(B, S(FIELD("a", "1234") CLOSE), &lim, 0, "{B:a|-|-|0}{D:1234}{E}"),
       "field of max_field bytes");
    ok(check(B, S(FIELD("a", "12345") CLOSE), &lim,
             NGX_AHAVA_MULTIPART_ERR_FIELD_TOO_LARGE, "{B:a|-|-|0}"),
       "field too large");
    ok(same_split(B, S(FIELD("a", "12\r\n--AaB03") CLOSE), &lim),
       "field too large: the same result split anywhere");
    ok(check(B, S(FILEPART("f", "a", "b/c", "123456789") CLOSE), &lim, 0,
             "{B:f|a|b/c|1}{D:123456789}{E}"),
       "file parts are not limited by max_field");

    /* preamble, epilogue, padding */

    ok(check(B, S("This is the preamble.\r\nIt is ignored.\r\n"
                  FIELD("a", "1") CLOSE "This is the epilogue.\r\n"), NULL, 0,
             "{B:a|-|-|0}{D:1}{E}"),
       "preamble and epilogue ignored");
    ok(same_split(B, S("pre\r\n--AaB0\r\n" FIELD("a", "1") CLOSE "epi"), NULL),
       "preamble and epilogue: the same split anywhere");
    ok(check(B, S("\r\n" FIELD("a", "1") CLOSE), NULL, 0,
             "{B:a|-|-|0}{D:1}{E}"),
       "empty preamble line");
    ok(check(B, S("--" B " \t \r\nContent-Disposition: form-data; name=a\r\n"
                  "\r\n1\r\n--" B "\t\r\nContent-Disposition: form-data; "
                  "name=b\r\n\r\n2\r\n--" B "--  \r\n"), NULL, 0,
             "{B:a|-|-|0}{D:1}{E}{B:b|-|-|0}{D:2}{E}"),
       "transport padding after the boundary");
    ok(check(B, S("--" B "x\r\nContent-Disposition: form-data; name=a\r\n"
                  "\r\n1\r\n" CLOSE), NULL, NGX_AHAVA_MULTIPART_ERR_DELIMITER,
             ""),
       "boundary followed by other bytes refused");
    ok(check(B, S("--" B " x\r\n"), NULL, NGX_AHAVA_MULTIPART_ERR_DELIMITER,
             ""),
       "padding followed by other bytes refused");
    ok(check(B, S("--" B "\r\r\n"), NULL, NGX_AHAVA_MULTIPART_ERR_DELIMITER,
             ""),
       "CR CR after the boundary refused");
    ok(check(B, S("--" B "-x"), NULL, NGX_AHAVA_MULTIPART_ERR_DELIMITER, ""),
       "a single dash after the boundary refused");

    len = 2000;
    big = malloc(len + 200);
    memset(big, 'p', len);
    p = big + len;
    p += sprintf(p, "\r\n" FIELD("a", "1") CLOSE);
    ok(check(B, big, p - big, NULL, NGX_AHAVA_MULTIPART_ERR_PREAMBLE, ""),
       "preamble of 2000 bytes refused");
    ok(check(B, big + 1100, p - big - 1100, NULL, 0, "{B:a|-|-|0}{D:1}{E}"),
       "preamble of 900 bytes accepted");

    p = big + sprintf(big, FIELD("a", "1") CLOSE);
    memset(p, 'e', len);
    p += len;
    ok(check(B, big, p - big, NULL, NGX_AHAVA_MULTIPART_ERR_EPILOGUE,
             "{B:a|-|-|0}{D:1}{E}"),
       "epilogue of 2000 bytes refused");
    ok(check(B, big, p - big - 1100, NULL, 0, "{B:a|-|-|0}{D:1}{E}"),
       "epilogue of 900 bytes accepted");
    free(big);

    /* callbacks */

    rec_init(&r);
    r.abort_begin = 42;
    rc = run(B, S(simple), 0, 0, NULL, &r);
    ok(rc == 42 && strcmp((char *) r.log, "{B:title|-|-|0}") == 0,
       "on_part_begin abort stops the parse, its value returned, sticky");
    free(r.log);

    rec_init(&r);
    r.abort_data = 7;
    rc = run(B, S(simple), 0, 1, NULL, &r);
    ok(rc == 7 && strcmp((char *) r.log, "{B:title|-|-|0}{D:h}") == 0,
       "on_part_data abort");
    free(r.log);

    {
        ngx_ahava_multipart_t  mp;

        ngx_ahava_multipart_init(&mp, (const unsigned char *) B, 6, 0, 0, 0);

        ok(ngx_ahava_multipart_feed(&mp, (const unsigned char *) simple,
                                    sizeof(simple) - 1) == 0
           && ngx_ahava_multipart_finish(&mp) == 0 && mp.parts == 2,
           "no callbacks at all");
    }

    /* another boundary: many dashes, as browsers make */

    ok(check("----x", S("------x\r\nContent-Disposition: form-data; name=a\r\n"
                        "\r\n---\r\n------\r\n-----x-\r\n------x--"), NULL, 0,
             "{B:a|-|-|0}{D:---\r\n------\r\n-----x-}{E}"),
       "boundary of dashes");
    ok(same_split("----x", S("------x\r\nContent-Disposition: form-data; "
                            "name=a\r\n\r\n---\r\n------\r\n-----x-\r\n"
                            "------x--"), NULL),
       "boundary of dashes: the same split anywhere");

    /* linear time on adversarial data, and the data is intact */

    len = 4 << 20;
    big = malloc(len + 300);
    p = big + sprintf(big, "--" B "\r\nContent-Disposition: form-data; "
                      "name=f; filename=a\r\n\r\n");
    n = p - big;

    for (i = 0; i + 9 <= len; i += 9) {
        memcpy(p + i, "\r\n--AaB03", 9);
    }

    p += i;
    p += sprintf(p, "\r\n" CLOSE);

    t0 = clock();
    rec_init(&r);
    rc = run(B, big, p - big, 0, 0, NULL, &r);

    /* {B:f|a|-|1}{D: data }{E} */
    ok(rc == 0 && r.len == 18 + i && memcmp(r.log + 14, big + n, i) == 0,
       "4 MB of \\r\\n--AaB03: data intact");

    {
        rec_t  r2;

        rec_init(&r2);
        rc = run(B, big, p - big, 0, 4093, NULL, &r2);
        ok(rc == 0 && r2.outside > 0 && r2.len == r.len
           && memcmp(r2.log, r.log, r.len) == 0,
           "the same in chunks of 4093 bytes, held bytes given back");
        free(r2.log);
    }

    free(r.log);

    for (i = 0; i + 4 <= len; i += 4) {
        memcpy(big + n + i, "\r\n--", 4);
    }

    p = big + n + i;
    p += sprintf(p, "\r\n" CLOSE);

    rec_init(&r);
    rc = run(B, big, p - big, 0, 0, NULL, &r);
    free(r.log);

    ok(rc == 0 && (double) (clock() - t0) / CLOCKS_PER_SEC < 5.0,
       "4 MB of \\r\\n-- and of \\r\\n--AaB03 parsed in linear time");
    free(big);

    /* errors */

    {
        int          codes[] = { 0, -1, -2, -3, -4, -5, -6, -7, -8, -9, -10,
                                 -11, -12, -13 };
        int          good = 1;
        size_t       j;
        const char  *s;

        for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
            s = ngx_ahava_multipart_strerror(codes[i]);

            if (s == NULL || *s == '\0' || strcmp(s, "aborted") == 0) {
                good = 0;
            }

            for (j = 0; j < i; j++) {
                if (strcmp(s, ngx_ahava_multipart_strerror(codes[j])) == 0) {
                    good = 0;
                }
            }
        }

        ok(good && strcmp(ngx_ahava_multipart_strerror(42), "aborted") == 0,
           "every code has its own description");
    }

    printf("1..%d\n", tests);

    return failures ? 1 : 0;
}
