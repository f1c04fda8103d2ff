
/*
 * Copyright (C) Ahava
 *
 * libFuzzer target of ngx_ahava_sniff.  The first byte chooses the allowed
 * kinds, the rest is the file.  It is sniffed whole, in chunks whose sizes
 * come from a hash of the input, and one byte at a time: the verdict, the
 * type, the reason and the byte by which a REJECT came must be the same.
 *
 * Then the verdict is checked against plain re-implementations: an
 * accepted file starts with its type's magic number, is of an allowed
 * kind, is strict UTF-8 without NUL nor a leading "<" if text, holds no
 * marker if an image or PDF, holds a "word/" local header if DOCX; text
 * starting with a lowercase letter must be accepted.  The input is also
 * checked as a file name.
 */


#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_ahava_sniff.h"


typedef struct {
    int          result;
    int          type;
    uint64_t     offset;
    const char  *reason;
} verdict_t;


static unsigned
tolower_ascii(unsigned c)
{
    return (c >= 'A' && c <= 'Z') ? c | 0x20 : c;
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

static void
sniff(unsigned allowed, const uint8_t *data, size_t len, unsigned mode,
    uint64_t seed, verdict_t *v)
{
    int                 rc;
    size_t              off, n;
    uint8_t            *chunk;
    ngx_ahava_sniff_t   s;

    ngx_ahava_sniff_init(&s, allowed);

    rc = NGX_AHAVA_SNIFF_UNDECIDED;
    off = 0;

    while (off < len) {
        if (mode == 0) {
            n = len;

        } else if (mode == 2) {
            n = 1;

        } else {
            n = next(&seed) % ((seed & 0x100) ? 1024 : 16) + 1;
        }

        if (n > len - off) {
            n = len - off;
        }

        chunk = malloc(n);
        if (chunk == NULL) {
            abort();
        }

        memcpy(chunk, data + off, n);
        rc = ngx_ahava_sniff_feed(&s, chunk, n);
        free(chunk);

        off += n;

        if (rc == NGX_AHAVA_SNIFF_REJECT) {
            if (s.reason == NULL || s.offset > off) {
                __builtin_trap();
            }

            break;
        }

        if (rc == NGX_AHAVA_SNIFF_CANDIDATE) {
            if (ngx_ahava_sniff_type(s.type) == NULL
                || !(ngx_ahava_sniff_type(s.type)->kind & allowed))
            {
                __builtin_trap();
            }

        } else if (rc != NGX_AHAVA_SNIFF_UNDECIDED) {
            __builtin_trap();
        }

        if (s.offset != off) {
            __builtin_trap();
        }
    }

    rc = ngx_ahava_sniff_finish(&s, &v->type);

    if (rc == NGX_AHAVA_SNIFF_REJECT) {
        if (v->type != NGX_AHAVA_SNIFF_NONE || s.reason == NULL) {
            __builtin_trap();
        }

    } else if (rc != NGX_AHAVA_SNIFF_ACCEPT) {
        __builtin_trap();
    }

    v->result = rc;
    v->offset = s.offset;
    v->reason = s.reason;
}


static int
has_prefix(const uint8_t *p, size_t len, const char *m, size_t n)
{
    return len >= n && memcmp(p, m, n) == 0;
}


static int
magic_ok(int type, const uint8_t *p, size_t len)
{
    switch (type) {

    case NGX_AHAVA_SNIFF_JPEG:
        return has_prefix(p, len, "\xff\xd8\xff", 3);

    case NGX_AHAVA_SNIFF_PNG:
        return has_prefix(p, len, "\x89PNG\r\n\x1a\n", 8);

    case NGX_AHAVA_SNIFF_GIF:
        return has_prefix(p, len, "GIF87a", 6)
               || has_prefix(p, len, "GIF89a", 6);

    case NGX_AHAVA_SNIFF_WEBP:
        return has_prefix(p, len, "RIFF", 4) && len >= 12
               && memcmp(p + 8, "WEBP", 4) == 0;

    case NGX_AHAVA_SNIFF_PDF:
        return has_prefix(p, len, "%PDF-", 5);

    case NGX_AHAVA_SNIFF_DOC:
        return has_prefix(p, len, "\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", 8);

    case NGX_AHAVA_SNIFF_DOCX:
        return has_prefix(p, len, "PK\x03\x04", 4);

    case NGX_AHAVA_SNIFF_TXT:
        return 1;

    default:
        return 0;
    }
}


/* strict UTF-8, no NUL, something after a BOM, no leading "<" */

static int
text_ok(const uint8_t *p, size_t len)
{
    size_t    i, j, k;
    uint32_t  cp, min;

    i = 0;

    if (len >= 3 && memcmp(p, "\xef\xbb\xbf", 3) == 0) {
        i = 3;
    }

    if (i == len) {
        return 0;
    }

    for (j = i; j < len && p[j] && strchr(" \t\r\n\f\v", p[j]); j++) {
        /* void */
    }

    if (j < len && p[j] == '<') {
        return 0;
    }

    for (i = 0; i < len; /* void */) {
        if (p[i] == 0) {
            return 0;
        }

        if (p[i] < 0x80) {
            i++;
            continue;
        }

        if ((p[i] & 0xe0) == 0xc0) {
            k = 1;
            cp = p[i] & 0x1f;
            min = 0x80;

        } else if ((p[i] & 0xf0) == 0xe0) {
            k = 2;
            cp = p[i] & 0x0f;
            min = 0x800;

        } else if ((p[i] & 0xf8) == 0xf0) {
            k = 3;
            cp = p[i] & 0x07;
            min = 0x10000;

        } else {
            return 0;
        }

        if (len - i <= k) {
            return 0;
        }

        for (j = 1; j <= k; j++) {
            if ((p[i + j] & 0xc0) != 0x80) {
                return 0;
            }

            cp = cp << 6 | (p[i + j] & 0x3f);
        }

        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            return 0;
        }

        i += k + 1;
    }

    return 1;
}


/* is there a polyglot marker, the tags followed by a tag end or the end */

static int
has_marker(const uint8_t *p, size_t len)
{
    size_t       i, j, n;
    unsigned     c;
    const char  *m;

    static const char *const  markers[] = {
        "<script", "<html", "<svg", "<iframe", "<body", "<!doctype",
        "<?php", "javascript:"
    };

    for (i = 0; i < len; i++) {
        for (j = 0; j < sizeof(markers) / sizeof(markers[0]); j++) {
            m = markers[j];
            n = strlen(m);

            if (len - i < n) {
                continue;
            }

            for (c = 0; c < n; c++) {
                if (tolower_ascii(p[i + c]) != (unsigned char) m[c]) {
                    break;
                }
            }

            if (c < n) {
                continue;
            }

            if (m[0] != '<' || i + n == len
                || (p[i + n] && strchr(" \t\n\r\f/>", p[i + n]) != NULL))
            {
                return 1;
            }
        }
    }

    return 0;
}


static int
has_word_entry(const uint8_t *p, size_t len)
{
    size_t  i;

    for (i = 0; i + 35 <= len; i++) {
        if (memcmp(p + i, "PK\x03\x04", 4) == 0
            && (p[i + 26] | p[i + 27] << 8) >= 5
            && tolower_ascii(p[i + 30]) == 'w'
            && tolower_ascii(p[i + 31]) == 'o'
            && tolower_ascii(p[i + 32]) == 'r'
            && tolower_ascii(p[i + 33]) == 'd'
            && p[i + 34] == '/')
        {
            return 1;
        }
    }

    return 0;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                            rc, type;
    size_t                         i;
    uint64_t                       seed;
    unsigned                       allowed;
    verdict_t                      v0, v;
    const ngx_ahava_sniff_type_t  *t;

    if (size == 0) {
        return 0;
    }

    /* the input as a file name, for any type */

    type = data[0] % (NGX_AHAVA_SNIFF_NTYPES + 1) - 1;
    rc = ngx_ahava_sniff_extension_matches(type, data + 1, size - 1);

    if (rc > 0) {
        if (size - 1 > NGX_AHAVA_SNIFF_FILENAME_MAX
            || memchr(data + 1, '/', size - 1) || memchr(data + 1, '\\',
                                                         size - 1))
        {
            __builtin_trap();
        }

        for (i = 1; i < size; i++) {
            if (data[i] < 0x20 || data[i] == 0x7f) {
                __builtin_trap();
            }
        }

    } else if (rc != NGX_AHAVA_SNIFF_EXT_MISMATCH
               && rc != NGX_AHAVA_SNIFF_BAD_FILENAME)
    {
        __builtin_trap();
    }

    /* the file */

    allowed = data[0] & 3;

    if (allowed == 0) {
        allowed = NGX_AHAVA_SNIFF_IMAGE | NGX_AHAVA_SNIFF_DOCUMENT;
    }

    data++;
    size--;

    seed = 0xcbf29ce484222325ULL;

    for (i = 0; i < size; i++) {
        seed = (seed ^ data[i]) * 0x100000001b3ULL;
    }

    seed |= 1;

    sniff(allowed, data, size, 0, 0, &v0);

    sniff(allowed, data, size, 1, seed, &v);

    if (v.result != v0.result || v.type != v0.type || v.offset != v0.offset
        || v.reason != v0.reason)
    {
        __builtin_trap();
    }

    if (size <= 65536) {
        sniff(allowed, data, size, 2, 0, &v);

        if (v.result != v0.result || v.type != v0.type
            || v.offset != v0.offset || v.reason != v0.reason)
        {
            __builtin_trap();
        }
    }

    if (v0.result == NGX_AHAVA_SNIFF_REJECT) {
        if (strcmp(v0.reason, "HTML or script inside the file") == 0
            && !has_marker(data, size))
        {
            __builtin_trap();
        }

        /* text starting with a lowercase letter is acceptable */

        if ((allowed & NGX_AHAVA_SNIFF_DOCUMENT) && size
            && data[0] >= 'a' && data[0] <= 'z' && text_ok(data, size)
            && !(size >= 262 && memcmp(data + 257, "ustar", 5) == 0))
        {
            __builtin_trap();
        }

        return 0;
    }

    /* accepted */

    t = ngx_ahava_sniff_type(v0.type);

    if (t == NULL || !(t->kind & allowed) || v0.offset != size
        || !magic_ok(v0.type, data, size) || size == 0)
    {
        __builtin_trap();
    }

    switch (v0.type) {

    case NGX_AHAVA_SNIFF_TXT:
        if (!text_ok(data, size)) {
            __builtin_trap();
        }

        break;

    case NGX_AHAVA_SNIFF_DOCX:
        if (!has_word_entry(data, size)) {
            __builtin_trap();
        }

        break;

    case NGX_AHAVA_SNIFF_DOC:
        break;

    default:
        if (has_marker(data, size)) {
            __builtin_trap();
        }

        break;
    }

    /* its first extension names it */

    {
        char  name[16];

        name[0] = 'x';
        name[1] = '.';
        strcpy(name + 2, t->exts[0]);

        if (ngx_ahava_sniff_extension_matches(v0.type,
                                              (const unsigned char *) name,
                                              strlen(name))
            != v0.type)
        {
            __builtin_trap();
        }
    }

    return 0;
}
