
/*
 * Copyright (C) Ahava
 *
 * File type sniffing of uploads (see ngx_ahava_sniff.h).
 *
 * The first bytes are taken one at a time and matched against a table of
 * magic numbers, allowed and refused; the UTF-8 check of text, the scan for
 * polyglot markers and the scan for ZIP local file headers run on them too,
 * since until a magic number is complete the file could be any of these.
 * As soon as no allowed magic number is possible any more the file is
 * either text (and the UTF-8 check goes on) or refused.  Once the type is
 * known, only its own scan runs, on whole chunks: UTF-8 for text, markers
 * for images and PDF, ZIP local file headers for DOCX until a "word/" entry
 * is seen, nothing for DOC.
 *
 * Every scan is a small automaton carried across chunks, so that what is
 * cut by a chunk boundary is found all the same, and the verdict is the
 * same however the file is cut (the fuzzer checks that).
 */


#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ngx_ahava_sniff.h"


#define NGX_AHAVA_SNIFF_MIME(s)  s, sizeof(s) - 1


typedef struct {
    const char  *magic;
    size_t       len;
    unsigned     any;           /* bitmask of the bytes that may be any */
    int          type;          /* NONE: refused */
    const char  *reason;
} ngx_ahava_sniff_magic_t;


static const ngx_ahava_sniff_type_t  ngx_ahava_sniff_types[] = {
    { NULL, NULL, 0, 0, { NULL } },

    { "jpeg", NGX_AHAVA_SNIFF_MIME("image/jpeg"), NGX_AHAVA_SNIFF_IMAGE,
      { "jpg", "jpeg", NULL } },

    { "png", NGX_AHAVA_SNIFF_MIME("image/png"), NGX_AHAVA_SNIFF_IMAGE,
      { "png", NULL } },

    { "gif", NGX_AHAVA_SNIFF_MIME("image/gif"), NGX_AHAVA_SNIFF_IMAGE,
      { "gif", NULL } },

    { "webp", NGX_AHAVA_SNIFF_MIME("image/webp"), NGX_AHAVA_SNIFF_IMAGE,
      { "webp", NULL } },

    { "pdf", NGX_AHAVA_SNIFF_MIME("application/pdf"),
      NGX_AHAVA_SNIFF_DOCUMENT, { "pdf", NULL } },

    { "doc", NGX_AHAVA_SNIFF_MIME("application/msword"),
      NGX_AHAVA_SNIFF_DOCUMENT, { "doc", NULL } },

    { "docx", NGX_AHAVA_SNIFF_MIME("application/vnd.openxmlformats-"
                                   "officedocument.wordprocessingml.document"),
      NGX_AHAVA_SNIFF_DOCUMENT, { "docx", NULL } },

    { "txt", NGX_AHAVA_SNIFF_MIME("text/plain"), NGX_AHAVA_SNIFF_DOCUMENT,
      { "txt", NULL } },

    { "csv", NGX_AHAVA_SNIFF_MIME("text/csv"), NGX_AHAVA_SNIFF_DOCUMENT,
      { "csv", NULL } }
};


/* all at offset 0; none is a prefix of another */

static const ngx_ahava_sniff_magic_t  ngx_ahava_sniff_magics[] = {
    { "\xff\xd8\xff", 3, 0, NGX_AHAVA_SNIFF_JPEG, NULL },
    { "\x89PNG\r\n\x1a\n", 8, 0, NGX_AHAVA_SNIFF_PNG, NULL },
    { "GIF87a", 6, 0, NGX_AHAVA_SNIFF_GIF, NULL },
    { "GIF89a", 6, 0, NGX_AHAVA_SNIFF_GIF, NULL },
    { "RIFF\0\0\0\0WEBP", 12, 0xf0, NGX_AHAVA_SNIFF_WEBP, NULL },
    { "%PDF-", 5, 0, NGX_AHAVA_SNIFF_PDF, NULL },
    { "\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", 8, 0, NGX_AHAVA_SNIFF_DOC, NULL },
    { "PK\x03\x04", 4, 0, NGX_AHAVA_SNIFF_DOCX, NULL },

    { "\x7f" "ELF", 4, 0, 0, "executable (ELF)" },
    { "MZ", 2, 0, 0, "executable (PE)" },
    { "\xfe\xed\xfa\xce", 4, 0, 0, "executable (Mach-O)" },
    { "\xfe\xed\xfa\xcf", 4, 0, 0, "executable (Mach-O)" },
    { "\xce\xfa\xed\xfe", 4, 0, 0, "executable (Mach-O)" },
    { "\xcf\xfa\xed\xfe", 4, 0, 0, "executable (Mach-O)" },
    { "\xca\xfe\xba\xbe", 4, 0, 0, "executable (Mach-O)" },
    { "#!", 2, 0, 0, "script" },
    { "\x1f\x8b", 2, 0, 0, "archive (gzip)" },
    { "7z\xbc\xaf\x27\x1c", 6, 0, 0, "archive (7z)" },
    { "Rar!\x1a\x07", 6, 0, 0, "archive (RAR)" },
    { "BZh", 3, 0, 0, "archive (bzip2)" },
    { "\xfd" "7zXZ\0", 6, 0, 0, "archive (xz)" },
    { "PK\x05\x06", 4, 0, 0, "archive (ZIP)" },
    { "PK\x07\x08", 4, 0, 0, "archive (ZIP)" }
};


/* the HTML tags of the polyglot markers, after their "<" */

static const char *const  ngx_ahava_sniff_tags[] = {
    "script", "html", "svg", "iframe", "body", "!doctype", "?php"
};

#define NGX_AHAVA_SNIFF_NTAGS                                                 \
    (sizeof(ngx_ahava_sniff_tags) / sizeof(ngx_ahava_sniff_tags[0]))

#define NGX_AHAVA_SNIFF_ALL_TAGS  ((1u << NGX_AHAVA_SNIFF_NTAGS) - 1)

#define NGX_AHAVA_SNIFF_JS        "javascript:"
#define NGX_AHAVA_SNIFF_JS_LEN    (sizeof(NGX_AHAVA_SNIFF_JS) - 1)


static int ngx_ahava_sniff_reject(ngx_ahava_sniff_t *s, const char *reason);
static int ngx_ahava_sniff_decided(ngx_ahava_sniff_t *s, int type);
static int ngx_ahava_sniff_classify(ngx_ahava_sniff_t *s, unsigned final);
static size_t ngx_ahava_sniff_text(ngx_ahava_sniff_t *s,
    const unsigned char *p, size_t n);
static int ngx_ahava_sniff_tag_end(unsigned c);
static size_t ngx_ahava_sniff_markers(ngx_ahava_sniff_t *s,
    const unsigned char *p, size_t n);
static void ngx_ahava_sniff_zip(ngx_ahava_sniff_t *s, const unsigned char *p,
    size_t n);
static size_t ngx_ahava_sniff_scan(ngx_ahava_sniff_t *s,
    const unsigned char *p, size_t n);
static int ngx_ahava_sniff_polyglot_type(int type);


void
ngx_ahava_sniff_init(ngx_ahava_sniff_t *s, unsigned allowed)
{
    memset(s, 0, offsetof(ngx_ahava_sniff_t, head));

    s->allowed = allowed;
    s->result = NGX_AHAVA_SNIFF_UNDECIDED;
    s->type = NGX_AHAVA_SNIFF_NONE;
}


static int
ngx_ahava_sniff_reject(ngx_ahava_sniff_t *s, const char *reason)
{
    s->reason = reason;
    s->result = NGX_AHAVA_SNIFF_REJECT;

    return NGX_AHAVA_SNIFF_REJECT;
}


/* images and PDF are the types whose bytes are scanned for markers */

static int
ngx_ahava_sniff_polyglot_type(int type)
{
    return type == NGX_AHAVA_SNIFF_PDF
           || ngx_ahava_sniff_types[type].kind == NGX_AHAVA_SNIFF_IMAGE;
}


static int
ngx_ahava_sniff_decided(ngx_ahava_sniff_t *s, int type)
{
    if (!(ngx_ahava_sniff_types[type].kind & s->allowed)) {
        return ngx_ahava_sniff_reject(s, "file type not allowed here");
    }

    s->type = type;

    if (ngx_ahava_sniff_polyglot_type(type) && s->marker) {
        return ngx_ahava_sniff_reject(s, "HTML or script inside the file");
    }

    if (type == NGX_AHAVA_SNIFF_TXT && s->text_bad != NULL) {
        return ngx_ahava_sniff_reject(s, s->text_bad);
    }

    s->result = NGX_AHAVA_SNIFF_CANDIDATE;

    return NGX_AHAVA_SNIFF_CANDIDATE;
}


/*
 * Matches the bytes seen so far against the magic numbers; final: the
 * file is over, incomplete magic numbers are no longer possible.
 */

static int
ngx_ahava_sniff_classify(ngx_ahava_sniff_t *s, unsigned final)
{
    size_t                          i, j, n, len;
    unsigned                        allowed_possible, refused_possible;
    const ngx_ahava_sniff_magic_t  *m;

    n = (size_t) s->offset;

    if (n > NGX_AHAVA_SNIFF_HEAD) {
        n = NGX_AHAVA_SNIFF_HEAD;
    }

    allowed_possible = 0;
    refused_possible = 0;

    for (i = 0; i < sizeof(ngx_ahava_sniff_magics)
                    / sizeof(ngx_ahava_sniff_magics[0]); i++)
    {
        m = &ngx_ahava_sniff_magics[i];
        len = (n < m->len) ? n : m->len;

        for (j = 0; j < len; j++) {
            if (!(m->any & (1u << j))
                && s->head[j] != (unsigned char) m->magic[j])
            {
                break;
            }
        }

        if (j < len) {
            continue;
        }

        if (len == m->len) {
            if (m->type == NGX_AHAVA_SNIFF_NONE) {
                return ngx_ahava_sniff_reject(s, m->reason);
            }

            return ngx_ahava_sniff_decided(s, m->type);
        }

        if (final) {
            continue;
        }

        if (m->type != NGX_AHAVA_SNIFF_NONE
            && (ngx_ahava_sniff_types[m->type].kind & s->allowed))
        {
            allowed_possible = 1;

        } else {
            refused_possible = 1;
        }
    }

    if (allowed_possible) {
        return NGX_AHAVA_SNIFF_UNDECIDED;
    }

    /* no allowed magic number: text or nothing */

    if (s->text_bad != NULL && s->lead == 2) {
        return ngx_ahava_sniff_reject(s, s->text_bad);
    }

    if (!(s->allowed & NGX_AHAVA_SNIFF_DOCUMENT)) {
        return ngx_ahava_sniff_reject(s, "file type not allowed here");
    }

    if (s->text_bad != NULL) {
        return ngx_ahava_sniff_reject(s, "unrecognised file type");
    }

    /* text so far, but it could still turn out to be e.g. "MZ" or "#!" */

    if (refused_possible) {
        return NGX_AHAVA_SNIFF_UNDECIDED;
    }

    return ngx_ahava_sniff_decided(s, NGX_AHAVA_SNIFF_TXT);
}


/*
 * Strict UTF-8 (RFC 3629) without NUL, whose first byte after an optional
 * BOM and blanks is not "<".  Returns the index of the first bad byte, or
 * n; s->text_bad says why, and s->lead is 2 if it is markup.
 */

static size_t
ngx_ahava_sniff_text(ngx_ahava_sniff_t *s, const unsigned char *p, size_t n)
{
    size_t    i;
    uint64_t  off;
    unsigned  c;

    static const unsigned char  bom[3] = { 0xef, 0xbb, 0xbf };

    for (i = 0; i < n; i++) {
        c = p[i];

        if (s->lead == 0) {
            off = s->offset + i;

            if (off < 3 && off == s->bom && c == bom[off]) {
                s->bom++;
                goto utf8;
            }

            s->text_content = 1;

            if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'
                || c == '\v')
            {
                goto utf8;
            }

            if (c == '<') {
                s->lead = 2;
                s->text_bad = "HTML, SVG or XML markup";
                return i;
            }

            s->lead = 1;
        }

    utf8:

        if (s->utf8_need) {
            if (c < s->utf8_lo || c > s->utf8_hi) {
                s->text_bad = "invalid UTF-8 text";
                return i;
            }

            s->utf8_need--;
            s->utf8_lo = 0x80;
            s->utf8_hi = 0xbf;

            continue;
        }

        if (c < 0x80) {
            if (c == 0) {
                s->text_bad = "NUL byte in text";
                return i;
            }

            continue;
        }

        /* RFC 3629: no overlongs, surrogates, nor above U+10FFFF */

        s->utf8_lo = 0x80;
        s->utf8_hi = 0xbf;

        if (c >= 0xc2 && c <= 0xdf) {
            s->utf8_need = 1;

        } else if (c >= 0xe0 && c <= 0xef) {
            s->utf8_need = 2;

            if (c == 0xe0) {
                s->utf8_lo = 0xa0;

            } else if (c == 0xed) {
                s->utf8_hi = 0x9f;
            }

        } else if (c >= 0xf0 && c <= 0xf4) {
            s->utf8_need = 3;

            if (c == 0xf0) {
                s->utf8_lo = 0x90;

            } else if (c == 0xf4) {
                s->utf8_hi = 0x8f;
            }

        } else {
            s->text_bad = "invalid UTF-8 text";
            return i;
        }
    }

    return n;
}


/* what may end an HTML tag name, or the "<?php" opening tag */

static int
ngx_ahava_sniff_tag_end(unsigned c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'
           || c == '/' || c == '>';
}


/*
 * Finds the markers in any case: "javascript:", and "<" one of the tags
 * followed by a byte that ends a tag name (or the end of the file), as a
 * browser would see it.  Requiring that end keeps random compressed bytes
 * from matching as easily (a 4-byte "<svg" alone would be met in about one
 * 10 MB JPEG in 50).  Returns the index of the byte completing a marker
 * (s->marker is set), or n.
 */

static size_t
ngx_ahava_sniff_markers(ngx_ahava_sniff_t *s, const unsigned char *p,
    size_t n)
{
    size_t       i, t, k;
    unsigned     c, alive;
    const char  *tag;

    for (i = 0; i < n; i++) {
        c = p[i];

        if (c >= 'A' && c <= 'Z') {
            c |= 0x20;
        }

        if (s->mark_end) {
            s->mark_end = 0;

            if (ngx_ahava_sniff_tag_end(c)) {
                s->marker = 1;
                return i;
            }
        }

        /* "javascript:": its "j" occurs once, a mismatch restarts it */

        if (c == (unsigned char) NGX_AHAVA_SNIFF_JS[s->mark_js]) {
            if (++s->mark_js == NGX_AHAVA_SNIFF_JS_LEN) {
                s->mark_js = 0;
                s->marker = 1;
                return i;
            }

        } else {
            s->mark_js = (c == 'j');
        }

        /* the tags: "<" occurs in none, so it always starts afresh */

        if (c == '<') {
            s->mark_len = 1;
            s->mark_alive = NGX_AHAVA_SNIFF_ALL_TAGS;
            continue;
        }

        if (s->mark_len == 0) {
            continue;
        }

        k = s->mark_len - 1;
        alive = 0;

        for (t = 0; t < NGX_AHAVA_SNIFF_NTAGS; t++) {
            if (!(s->mark_alive & (1u << t))) {
                continue;
            }

            tag = ngx_ahava_sniff_tags[t];

            if ((unsigned char) tag[k] != c) {
                continue;
            }

            /* no tag is a prefix of another: a whole one is the only one */

            if (tag[k + 1] == '\0') {
                s->mark_end = 1;
                alive = 0;
                break;
            }

            alive |= 1u << t;
        }

        s->mark_alive = alive;
        s->mark_len = alive ? s->mark_len + 1 : 0;
    }

    return n;
}


/*
 * Finds ZIP local file headers "PK\3\4" anywhere (their sizes may be
 * unknown, given in a data descriptor after the data) and looks at the
 * start of the name that follows the 26 bytes of the fixed header.
 */

static void
ngx_ahava_sniff_zip(ngx_ahava_sniff_t *s, const unsigned char *p, size_t n)
{
    const unsigned char  *end, *q;

    static const unsigned char  sig[4] = { 'P', 'K', 3, 4 };

    end = p + n;

    while (p < end && !s->docx) {

        if (s->zip_sig < 4) {
            if (s->zip_sig == 0) {
                q = memchr(p, 'P', end - p);
                if (q == NULL) {
                    return;
                }

                p = q + 1;
                s->zip_sig = 1;

                continue;
            }

            if (*p == sig[s->zip_sig]) {
                s->zip_sig++;
                s->zip_len = 0;

            } else {
                s->zip_sig = (*p == 'P');
            }

            p++;

            continue;
        }

        s->zip[s->zip_len++] = *p++;

        if (s->zip_len == 26) {
            /* the name length, little-endian */
            s->zip_name = s->zip[22] | (unsigned) s->zip[23] << 8;

            if (s->zip_name < 5) {
                s->zip_sig = 0;
            }

        } else if (s->zip_len == 31) {
            s->docx = ((s->zip[26] | 0x20) == 'w'
                       && (s->zip[27] | 0x20) == 'o'
                       && (s->zip[28] | 0x20) == 'r'
                       && (s->zip[29] | 0x20) == 'd'
                       && s->zip[30] == '/');

            s->zip_sig = 0;
        }
    }
}


/* the scans of the type so far; returns the index of a rejecting byte */

static size_t
ngx_ahava_sniff_scan(ngx_ahava_sniff_t *s, const unsigned char *p, size_t n)
{
    size_t  i;

    switch (s->type) {

    case NGX_AHAVA_SNIFF_NONE:
        /* anything is possible: all scans, only to take notes */

        if (s->text_bad == NULL) {
            (void) ngx_ahava_sniff_text(s, p, n);
        }

        if (!s->marker) {
            (void) ngx_ahava_sniff_markers(s, p, n);
        }

        ngx_ahava_sniff_zip(s, p, n);

        return n;

    case NGX_AHAVA_SNIFF_TXT:
        i = ngx_ahava_sniff_text(s, p, n);

        if (i < n) {
            (void) ngx_ahava_sniff_reject(s, s->text_bad);
        }

        return i;

    case NGX_AHAVA_SNIFF_DOCX:
        ngx_ahava_sniff_zip(s, p, n);
        return n;

    case NGX_AHAVA_SNIFF_DOC:
        return n;

    default: /* images, PDF */
        i = ngx_ahava_sniff_markers(s, p, n);

        if (i < n) {
            (void) ngx_ahava_sniff_reject(s, "HTML or script inside the file");
        }

        return i;
    }
}


int
ngx_ahava_sniff_feed(ngx_ahava_sniff_t *s, const unsigned char *p, size_t n)
{
    int                   rc;
    size_t                i, k;
    const unsigned char  *end;

    static const unsigned char  ustar[5] = { 'u', 's', 't', 'a', 'r' };

    if (s->result == NGX_AHAVA_SNIFF_REJECT) {
        return NGX_AHAVA_SNIFF_REJECT;
    }

    end = p + n;

    while (p < end) {

        /* the head one byte at a time, then whole runs */

        if (s->offset < NGX_AHAVA_SNIFF_HEAD) {
            s->head[s->offset] = *p;
            k = 1;

        } else {
            k = end - p;
        }

        i = ngx_ahava_sniff_scan(s, p, k);

        if (i < k) {
            s->offset += i + 1;
            return NGX_AHAVA_SNIFF_REJECT;
        }

        s->offset += k;
        p += k;

        if (s->type == NGX_AHAVA_SNIFF_NONE) {
            rc = ngx_ahava_sniff_classify(s, 0);

            if (rc == NGX_AHAVA_SNIFF_REJECT) {
                return rc;
            }
        }

        /* a tar archive has NULs well before, but names can be long */

        if (s->type == NGX_AHAVA_SNIFF_TXT
            && s->offset == NGX_AHAVA_SNIFF_HEAD
            && memcmp(s->head + 257, ustar, 5) == 0)
        {
            return ngx_ahava_sniff_reject(s, "archive (tar)");
        }
    }

    return s->result;
}


int
ngx_ahava_sniff_finish(ngx_ahava_sniff_t *s, int *type)
{
    *type = NGX_AHAVA_SNIFF_NONE;

    if (s->result == NGX_AHAVA_SNIFF_REJECT) {
        return NGX_AHAVA_SNIFF_REJECT;
    }

    if (s->offset == 0) {
        return ngx_ahava_sniff_reject(s, "empty file");
    }

    if (s->type == NGX_AHAVA_SNIFF_NONE
        && ngx_ahava_sniff_classify(s, 1) == NGX_AHAVA_SNIFF_REJECT)
    {
        return NGX_AHAVA_SNIFF_REJECT;
    }

    switch (s->type) {

    case NGX_AHAVA_SNIFF_TXT:
        if (s->utf8_need) {
            return ngx_ahava_sniff_reject(s, "text ends inside a character");
        }

        if (!s->text_content) {
            return ngx_ahava_sniff_reject(s, "empty file (only a BOM)");
        }

        break;

    case NGX_AHAVA_SNIFF_DOCX:
        if (!s->docx) {
            return ngx_ahava_sniff_reject(s, "archive (ZIP, not a DOCX)");
        }

        break;

    case NGX_AHAVA_SNIFF_DOC:
        break;

    default:
        /* a marker at the very end: the end ends the tag name */

        if (s->mark_end) {
            return ngx_ahava_sniff_reject(s, "HTML or script inside the file");
        }

        break;
    }

    s->result = NGX_AHAVA_SNIFF_ACCEPT;
    *type = s->type;

    return NGX_AHAVA_SNIFF_ACCEPT;
}


const ngx_ahava_sniff_type_t *
ngx_ahava_sniff_type(int type)
{
    if (type <= NGX_AHAVA_SNIFF_NONE || type >= NGX_AHAVA_SNIFF_NTYPES) {
        return NULL;
    }

    return &ngx_ahava_sniff_types[type];
}


int
ngx_ahava_sniff_extension_matches(int type, const unsigned char *filename,
    size_t len)
{
    size_t                         i, ext_len;
    uint32_t                       cp, min;
    unsigned                       c, need;
    const char                    *e;
    const unsigned char           *ext;
    const ngx_ahava_sniff_type_t  *t;

    if (len == 0 || len > NGX_AHAVA_SNIFF_FILENAME_MAX) {
        return NGX_AHAVA_SNIFF_BAD_FILENAME;
    }

    /* a name, not a path, and nothing that could fool a reader of it */

    ext = NULL;
    need = 0;
    cp = 0;
    min = 0;

    for (i = 0; i < len; i++) {
        c = filename[i];

        if (need) {
            if ((c & 0xc0) != 0x80) {
                return NGX_AHAVA_SNIFF_BAD_FILENAME;
            }

            cp = cp << 6 | (c & 0x3f);

            if (--need) {
                continue;
            }

            /* overlongs, surrogates, > U+10FFFF, C1, bidi controls */

            if (cp < min || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff
                || cp < 0xa0
                || (cp >= 0x202a && cp <= 0x202e)
                || (cp >= 0x2066 && cp <= 0x2069))
            {
                return NGX_AHAVA_SNIFF_BAD_FILENAME;
            }

            continue;
        }

        if (c < 0x20 || c == 0x7f || c == '/' || c == '\\') {
            return NGX_AHAVA_SNIFF_BAD_FILENAME;
        }

        if (c < 0x80) {
            if (c == '.') {
                ext = filename + i + 1;
            }

            continue;
        }

        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
            cp = c & 0x1f;
            min = 0x80;

        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            cp = c & 0x0f;
            min = 0x800;

        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            cp = c & 0x07;
            min = 0x10000;

        } else {
            return NGX_AHAVA_SNIFF_BAD_FILENAME;
        }
    }

    if (need) {
        return NGX_AHAVA_SNIFF_BAD_FILENAME;
    }

    if (ext == NULL) {
        return NGX_AHAVA_SNIFF_EXT_MISMATCH;
    }

    ext_len = filename + len - ext;

    /* text is one sniffed type, named by its extension */

    if (type == NGX_AHAVA_SNIFF_TXT || type == NGX_AHAVA_SNIFF_CSV) {
        type = NGX_AHAVA_SNIFF_TXT;

        if (ext_len == 3
            && (ext[0] | 0x20) == 'c' && (ext[1] | 0x20) == 's'
            && (ext[2] | 0x20) == 'v')
        {
            type = NGX_AHAVA_SNIFF_CSV;
        }
    }

    t = ngx_ahava_sniff_type(type);
    if (t == NULL) {
        return NGX_AHAVA_SNIFF_EXT_MISMATCH;
    }

    for (i = 0; t->exts[i] != NULL; i++) {
        e = t->exts[i];

        if (ext_len != strlen(e)) {
            continue;
        }

        for (c = 0; c < ext_len; c++) {
            if ((ext[c] | 0x20) != (unsigned char) e[c]) {
                break;
            }
        }

        if (c == ext_len) {
            return type;
        }
    }

    return NGX_AHAVA_SNIFF_EXT_MISMATCH;
}
