
/*
 * Copyright (C) Ahava
 */


#ifndef _NGX_AHAVA_SNIFF_H_INCLUDED_
#define _NGX_AHAVA_SNIFF_H_INCLUDED_


/*
 * Decides the type of an uploaded file by its bytes, as they stream in,
 * so that an upload can be refused as early as possible; free of nginx
 * headers so that it can be unit-tested and fuzzed on its own.
 *
 * Allowed: JPEG, PNG, GIF, WebP (images); PDF, DOC, DOCX, TXT, CSV
 * (documents).  Everything else is refused, and explicitly markup (HTML,
 * SVG, XML: text whose first non-blank byte is "<"), scripts ("#!"),
 * executables, archives other than DOCX, empty files, and images or PDFs
 * carrying an HTML/script marker anywhere (polyglots).
 *
 *     ngx_ahava_sniff_init(s, NGX_AHAVA_SNIFF_IMAGE)
 *     ngx_ahava_sniff_feed(s, chunk, n)      until it returns REJECT
 *     ngx_ahava_sniff_finish(s, &type)       ACCEPT or REJECT
 *     ngx_ahava_sniff_extension_matches(type, filename, len)
 *
 * s->reason is then a short static text saying why (for logs and 400
 * details), s->offset the number of bytes consumed, the rejecting byte
 * included: the rest of a chunk after a REJECT is not looked at.
 *
 * What is checked, and what is not:
 *
 *   - magic numbers at offset 0 only (a PDF header later than byte 0, as
 *     the PDF spec tolerates, is refused);
 *   - DOC is any OLE2 compound file: XLS, PPT or MSI pass as DOC too;
 *   - DOCX is a ZIP with a local file header whose name starts "word/"
 *     (any case), found by scanning for "PK" anywhere;
 *   - the markers, any case: "javascript:", and "<script", "<html",
 *     "<svg", "<iframe", "<body", "<!doctype", "<?php" followed by a byte
 *     that ends a tag name (blank, "/", ">") or by the end of the file,
 *     in images and PDF only, not in DOC, DOCX or text (text is only
 *     refused when it starts with "<");
 *   - text: RFC 3629 UTF-8, no NUL; control characters are allowed;
 *     a text file starting with "MZ", "#!", "BZh" or "Rar!" is
 *     refused as the executable, script or archive it looks like.
 */


#include <stddef.h>
#include <stdint.h>


/* kinds, a bitmask for init */
#define NGX_AHAVA_SNIFF_IMAGE             0x01
#define NGX_AHAVA_SNIFF_DOCUMENT          0x02

/* feed and finish results */
#define NGX_AHAVA_SNIFF_REJECT            -1
#define NGX_AHAVA_SNIFF_UNDECIDED          0
#define NGX_AHAVA_SNIFF_CANDIDATE          1
#define NGX_AHAVA_SNIFF_ACCEPT             2

/* ngx_ahava_sniff_extension_matches() failures */
#define NGX_AHAVA_SNIFF_EXT_MISMATCH      -1
#define NGX_AHAVA_SNIFF_BAD_FILENAME      -2

#define NGX_AHAVA_SNIFF_FILENAME_MAX      255

/* the bytes of the start of the file kept: tar's "ustar" is at 257 */
#define NGX_AHAVA_SNIFF_HEAD              262


typedef enum {
    NGX_AHAVA_SNIFF_NONE = 0,
    NGX_AHAVA_SNIFF_JPEG,
    NGX_AHAVA_SNIFF_PNG,
    NGX_AHAVA_SNIFF_GIF,
    NGX_AHAVA_SNIFF_WEBP,
    NGX_AHAVA_SNIFF_PDF,
    NGX_AHAVA_SNIFF_DOC,
    NGX_AHAVA_SNIFF_DOCX,
    NGX_AHAVA_SNIFF_TXT,            /* valid UTF-8 text, .txt or .csv */
    NGX_AHAVA_SNIFF_CSV,            /* only from extension_matches() */
    NGX_AHAVA_SNIFF_NTYPES
} ngx_ahava_sniff_type_e;


typedef struct {
    const char     *name;           /* "jpeg", for logs */
    const char     *mime;           /* canonical MIME type */
    size_t          mime_len;
    unsigned        kind;           /* NGX_AHAVA_SNIFF_IMAGE or DOCUMENT */
    const char     *exts[3];        /* lowercase, NULL-terminated */
} ngx_ahava_sniff_type_t;


typedef struct {
    /* read only for the caller */
    int             result;         /* the last result of feed/finish */
    int             type;           /* the type so far, or NONE */
    const char     *reason;         /* why REJECT; NULL before */
    uint64_t        offset;         /* bytes consumed */

    /* private */
    unsigned        allowed;

    /* text: UTF-8 state, leading BOM and blanks */
    unsigned        utf8_need;      /* continuation bytes still due */
    unsigned        utf8_lo;        /* range of the next one */
    unsigned        utf8_hi;
    unsigned        lead;           /* 0 BOM/blanks, 1 text, 2 markup */
    unsigned        bom;            /* BOM bytes at the start */
    unsigned        text_content;   /* a byte other than the BOM's */
    const char     *text_bad;       /* why the bytes are no text */

    /* polyglot markers */
    unsigned        mark_len;       /* bytes of a "<tag" matched */
    unsigned        mark_alive;     /* bitmask of the tags still possible */
    unsigned        mark_js;        /* bytes of "javascript:" matched */
    unsigned        mark_end;       /* a whole "<tag": its end is due */
    unsigned        marker;         /* a marker was seen */

    /* DOCX: ZIP local file headers and the start of their names */
    unsigned        zip_sig;        /* bytes of PK\3\4 matched */
    unsigned        zip_len;        /* bytes gathered after it */
    unsigned        zip_name;       /* the name's length */
    unsigned        docx;           /* a word/ entry seen */
    unsigned char   zip[31];

    unsigned char   head[NGX_AHAVA_SNIFF_HEAD];
} ngx_ahava_sniff_t;


/* allowed: NGX_AHAVA_SNIFF_IMAGE and/or NGX_AHAVA_SNIFF_DOCUMENT */
void ngx_ahava_sniff_init(ngx_ahava_sniff_t *s, unsigned allowed);

/*
 * REJECT (final: s->reason says why), UNDECIDED (more bytes are needed to
 * know the type) or CANDIDATE (s->type is known and nothing wrong was seen
 * so far; finish may still refuse it, e.g. a ZIP without a word/ entry).
 */
int ngx_ahava_sniff_feed(ngx_ahava_sniff_t *s, const unsigned char *p,
    size_t n);

/* the file is over: ACCEPT with *type, or REJECT (*type is NONE) */
int ngx_ahava_sniff_finish(ngx_ahava_sniff_t *s, int *type);

/* the type's description, NULL for NONE or an unknown value */
const ngx_ahava_sniff_type_t *ngx_ahava_sniff_type(int type);

/*
 * Checks a file name (as given, not a path) against the sniffed type: the
 * extension after the last dot must be one of the type's, in any case.
 * TXT and CSV are one sniffed type whose extension decides: ".txt" gives
 * TXT, ".csv" CSV.  Returns the type to store (> 0), EXT_MISMATCH, or
 * BAD_FILENAME for an empty name, one longer than 255 bytes, not valid
 * UTF-8, or containing "/", "\", control characters (C0, DEL, C1) or the
 * Unicode bidirectional overrides/isolates (U+202A..E, U+2066..9).
 */
int ngx_ahava_sniff_extension_matches(int type, const unsigned char *filename,
    size_t len);


#endif /* _NGX_AHAVA_SNIFF_H_INCLUDED_ */
