
/*
 * Copyright (C) Ahava
 *
 * libFuzzer target of ngx_ahava_multipart.  The first byte chooses the
 * boundary and the limits, the rest is the body.  It is parsed whole, in
 * chunks whose sizes come from a hash of the input, and one byte at a
 * time; the three must give the same result and the same callbacks: the
 * same parts with the same headers, the same data for every part that
 * ended (and, after an error, data of the last part that is a prefix of
 * the other's: a chunk's data is handed on before a later chunk fails).
 *
 * Beyond the sanitizers it checks the contract: data calls only between
 * begin and end, never empty, pointing into the chunk being fed or into
 * the parser's delimiter copy, and no part's data holds the delimiter.
 * The input is also parsed as a Content-Type header value.
 */


#define _GNU_SOURCE                 /* memmem() */

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_ahava_multipart.h"


#define MAX_PARTS  16

#define ABORT_BEGIN  1234
#define ABORT_DATA   4321


typedef struct {
    unsigned char *hdr;
    size_t         hdr_len;
    unsigned char *data;
    size_t         data_len;
    size_t         data_cap;
    unsigned       ended;
} part_rec_t;


typedef struct {
    part_rec_t                    parts[MAX_PARTS];
    size_t                        n;
    unsigned                      open;
    unsigned                      small;
    const unsigned char          *chunk;
    size_t                        chunk_len;
    const ngx_ahava_multipart_t  *mp;
} rec_t;


static const char *const  boundaries[] = {
    "AaB03x",
    "----x",
    "b",
    "----WebKitFormBoundary7MA4YWxkTrZu0gW---------------------------------"
};


static void
add(unsigned char *dst, size_t *len, size_t cap, const void *p, size_t n)
{
    if (*len + n > cap) {
        __builtin_trap();
    }

    memcpy(dst + *len, p, n);
    *len += n;
}


static int
on_begin(void *data, const ngx_ahava_multipart_part_t *part)
{
    rec_t       *r = data;
    part_rec_t  *pr;
    size_t       cap;

    if (r->open || r->n == MAX_PARTS || part->index != r->n + 1
        || part->name == NULL
        || part->is_file != (part->filename != NULL)
        || part->name[part->name_len] != '\0'
        || (part->filename && part->filename[part->filename_len] != '\0')
        || (part->content_type
            && part->content_type[part->content_type_len] != '\0'))
    {
        __builtin_trap();
    }

    pr = &r->parts[r->n++];
    r->open = 1;

    cap = part->name_len + part->filename_len + part->content_type_len + 4;

    pr->hdr = malloc(cap);
    if (pr->hdr == NULL) {
        abort();
    }

    add(pr->hdr, &pr->hdr_len, cap, part->name, part->name_len + 1);

    if (part->filename) {
        add(pr->hdr, &pr->hdr_len, cap, part->filename,
            part->filename_len + 1);
    }

    if (part->content_type) {
        add(pr->hdr, &pr->hdr_len, cap, part->content_type,
            part->content_type_len + 1);
    }

    add(pr->hdr, &pr->hdr_len, cap, part->is_file ? "F" : "-", 1);

    if (part->name_len == 5 && memcmp(part->name, "abort", 5) == 0) {
        return ABORT_BEGIN;
    }

    return 0;
}


static int
on_data(void *data, const unsigned char *p, size_t n)
{
    rec_t       *r = data;
    part_rec_t  *pr;

    if (!r->open || n == 0) {
        __builtin_trap();
    }

    /* zero copy: the fed chunk, or held bytes from the delimiter copy */

    if (!(p >= r->chunk && p + n <= r->chunk + r->chunk_len)
        && !(p >= r->mp->delim && p + n <= r->mp->delim + r->mp->dlen))
    {
        __builtin_trap();
    }

    pr = &r->parts[r->n - 1];

    if (pr->data_len + n > pr->data_cap) {
        pr->data_cap = (pr->data_len + n) * 2;
        pr->data = realloc(pr->data, pr->data_cap);

        if (pr->data == NULL) {
            abort();
        }
    }

    memcpy(pr->data + pr->data_len, p, n);
    pr->data_len += n;

    /* a file too large for the caller, as the upload handler would say */

    if (r->small && pr->data_len > 64) {
        return ABORT_DATA;
    }

    return 0;
}


static int
on_end(void *data)
{
    rec_t  *r = data;

    if (!r->open) {
        __builtin_trap();
    }

    r->open = 0;
    r->parts[r->n - 1].ended = 1;

    return 0;
}


static void
rec_free(rec_t *r)
{
    size_t  i;

    for (i = 0; i < MAX_PARTS; i++) {
        free(r->parts[i].hdr);
        free(r->parts[i].data);
    }

    free(r);
}


static uint64_t
next(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;

    return *x;
}


/* mode 0: whole, 1: chunks from the seed, 2: one byte at a time */

static int
parse(unsigned settings, const uint8_t *body, size_t len, unsigned mode,
    uint64_t seed, rec_t *r)
{
    int                     rc;
    size_t                  off, n, i;
    uint8_t                *chunk;
    const char             *b;
    ngx_ahava_multipart_t  *mp;

    mp = malloc(sizeof(ngx_ahava_multipart_t));
    if (mp == NULL) {
        abort();
    }

    b = boundaries[settings & 3];
    r->small = (settings & 4) != 0;
    r->mp = mp;

    if (ngx_ahava_multipart_init(mp, (const unsigned char *) b, strlen(b),
                                 r->small ? 64 : 0, r->small ? 3 : 0,
                                 r->small ? 16 : 0)
        != 0)
    {
        __builtin_trap();
    }

    mp->on_part_begin = on_begin;
    mp->on_part_data = on_data;
    mp->on_part_end = on_end;
    mp->data = r;

    rc = 0;
    off = 0;

    while (off < len) {
        if (mode == 0) {
            n = len;

        } else if (mode == 2) {
            n = 1;

        } else {
            /* mostly short chunks, so that delimiters are cut often */
            n = next(&seed) % ((seed & 0x100) ? 4096 : 24) + 1;
        }

        if (n > len - off) {
            n = len - off;
        }

        /* an exact copy, so that ASan sees any read past the chunk */

        chunk = malloc(n);
        if (chunk == NULL) {
            abort();
        }

        memcpy(chunk, body + off, n);
        r->chunk = chunk;
        r->chunk_len = n;

        rc = ngx_ahava_multipart_feed(mp, chunk, n);

        r->chunk = NULL;
        r->chunk_len = 0;
        free(chunk);

        off += n;

        if (rc != 0) {
            break;
        }
    }

    if (rc == 0) {
        rc = ngx_ahava_multipart_finish(mp);

    } else if (ngx_ahava_multipart_finish(mp) != rc
               || ngx_ahava_multipart_feed(mp, body, len) != rc)
    {
        __builtin_trap();   /* the error must be sticky */
    }

    /* the errors of a body (not of a Content-Type), or our own aborts */

    if (rc != 0 && rc != ABORT_BEGIN && rc != ABORT_DATA
        && (rc > NGX_AHAVA_MULTIPART_ERR_PREAMBLE
            || rc < NGX_AHAVA_MULTIPART_ERR_NO_PARTS))
    {
        __builtin_trap();
    }

    if (ngx_ahava_multipart_strerror(rc) == NULL) {
        __builtin_trap();
    }

    /* success: every part ended, and at least one */

    if (rc == 0 && (r->open || r->n == 0 || mp->parts != r->n)) {
        __builtin_trap();
    }

    /* no part's data holds the delimiter */

    for (i = 0; i < r->n; i++) {
        if (r->parts[i].data_len >= mp->dlen
            && memmem(r->parts[i].data, r->parts[i].data_len, mp->delim,
                      mp->dlen) != NULL)
        {
            __builtin_trap();
        }
    }

    free(mp);

    return rc;
}


static void
compare(int rc, const rec_t *a, const rec_t *b)
{
    size_t             i, n;
    const part_rec_t  *pa, *pb;

    if (a->n != b->n) {
        __builtin_trap();
    }

    for (i = 0; i < a->n; i++) {
        pa = &a->parts[i];
        pb = &b->parts[i];

        if (pa->hdr_len != pb->hdr_len
            || memcmp(pa->hdr, pb->hdr, pa->hdr_len) != 0
            || pa->ended != pb->ended)
        {
            __builtin_trap();
        }

        if (rc == 0 || pa->ended || i + 1 < a->n) {
            if (pa->data_len != pb->data_len
                || (pa->data_len
                    && memcmp(pa->data, pb->data, pa->data_len) != 0))
            {
                __builtin_trap();
            }

            continue;
        }

        n = pa->data_len < pb->data_len ? pa->data_len : pb->data_len;

        if (n && memcmp(pa->data, pb->data, n) != 0) {
            __builtin_trap();
        }
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int            rc0, rc;
    size_t         i, n;
    uint64_t       seed;
    unsigned       settings;
    rec_t         *r0, *r;
    unsigned char  b[NGX_AHAVA_MULTIPART_BOUNDARY_MAX];

    /* the whole input as a Content-Type value */

    if (ngx_ahava_multipart_boundary(data, size, b, &n) == 0) {
        if (n == 0 || n > NGX_AHAVA_MULTIPART_BOUNDARY_MAX
            || b[n - 1] == ' ' || memchr(b, '\r', n) != NULL)
        {
            __builtin_trap();
        }
    }

    if (size == 0) {
        return 0;
    }

    settings = data[0];
    data++;
    size--;

    /* FNV-1a of the input: the chunk sizes depend on all of it */

    seed = 0xcbf29ce484222325ULL;

    for (i = 0; i < size; i++) {
        seed = (seed ^ data[i]) * 0x100000001b3ULL;
    }

    seed ^= settings;
    seed |= 1;

    r0 = calloc(1, sizeof(rec_t));
    r = calloc(1, sizeof(rec_t));

    if (r0 == NULL || r == NULL) {
        abort();
    }

    rc0 = parse(settings, data, size, 0, 0, r0);

    rc = parse(settings, data, size, 1, seed, r);
    if (rc != rc0) {
        __builtin_trap();
    }

    compare(rc, r0, r);
    rec_free(r);

    if (size <= 65536) {
        r = calloc(1, sizeof(rec_t));
        if (r == NULL) {
            abort();
        }

        rc = parse(settings, data, size, 2, 0, r);
        if (rc != rc0) {
            __builtin_trap();
        }

        compare(rc, r0, r);
        rec_free(r);
    }

    rec_free(r0);

    return 0;
}
