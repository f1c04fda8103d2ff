
/*
 * Copyright (C) Ahava
 *
 * Unit test of ngx_ahava_sniff, TAP output.  The samples are built here,
 * as small as the magic numbers allow; each verdict is checked fed whole,
 * split at every position and one byte at a time, and so is the byte by
 * which a REJECT comes.
 */


#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_ahava_sniff.h"


#define IMG   NGX_AHAVA_SNIFF_IMAGE
#define DOCS  NGX_AHAVA_SNIFF_DOCUMENT
#define BOTH  (NGX_AHAVA_SNIFF_IMAGE | NGX_AHAVA_SNIFF_DOCUMENT)

#define S(lit)  (const unsigned char *) lit, sizeof(lit) - 1


typedef struct {
    int          result;        /* of finish, or REJECT from feed */
    int          type;
    uint64_t     offset;        /* s.offset at the end */
    size_t       fed;           /* bytes fed when REJECT came, or len */
    const char  *reason;
} verdict_t;


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


/*
 * Feeds whole (split 0, step 0), cut at split, or in chunks of step
 * bytes, each chunk a private copy so that ASan sees overreads.
 */

static void
sniff(unsigned allowed, const unsigned char *data, size_t len, size_t split,
    size_t step, verdict_t *v)
{
    int                 rc;
    size_t              off, n;
    unsigned char      *chunk;
    ngx_ahava_sniff_t  *s;

    s = malloc(sizeof(ngx_ahava_sniff_t));
    if (s == NULL) {
        abort();
    }

    memset(s, 0xa5, sizeof(ngx_ahava_sniff_t));
    ngx_ahava_sniff_init(s, allowed);

    memset(v, 0, sizeof(verdict_t));
    v->fed = len;

    off = 0;
    rc = NGX_AHAVA_SNIFF_UNDECIDED;

    while (off < len) {
        if (split) {
            n = (off == 0) ? split : len - off;

        } else if (step) {
            n = (len - off < step) ? len - off : step;

        } else {
            n = len;
        }

        chunk = malloc(n);
        if (chunk == NULL) {
            abort();
        }

        memcpy(chunk, data + off, n);
        rc = ngx_ahava_sniff_feed(s, chunk, n);
        free(chunk);

        off += n;

        if (rc == NGX_AHAVA_SNIFF_REJECT) {
            v->fed = off;
            break;
        }

        if (rc == NGX_AHAVA_SNIFF_CANDIDATE
            && !(ngx_ahava_sniff_type(s->type)->kind & allowed))
        {
            rc = 99;    /* a candidate that is not allowed */
            break;
        }
    }

    if (rc == NGX_AHAVA_SNIFF_REJECT) {
        v->result = rc;

        /* sticky */
        if (ngx_ahava_sniff_feed(s, (const unsigned char *) "a", 1) != rc
            || ngx_ahava_sniff_finish(s, &v->type) != rc
            || v->type != NGX_AHAVA_SNIFF_NONE)
        {
            v->result = 98;
        }

    } else if (rc == 99) {
        v->result = 99;

    } else {
        v->result = ngx_ahava_sniff_finish(s, &v->type);
    }

    v->offset = s->offset;
    v->reason = s->reason;

    if (v->result == NGX_AHAVA_SNIFF_REJECT && v->reason == NULL) {
        v->result = 97;
    }

    free(s);
}


static int
same(const verdict_t *a, const verdict_t *b)
{
    return a->result == b->result && a->type == b->type
           && a->offset == b->offset
           && (a->reason == b->reason
               || (a->reason && b->reason
                   && strcmp(a->reason, b->reason) == 0));
}


/*
 * The verdict fed whole must be want (a type, or 0 for REJECT), the same
 * fed split anywhere and byte by byte; with by, a REJECT must come from
 * feed after exactly that many bytes (the rejecting one included).
 */

static int
check(unsigned allowed, const unsigned char *data, size_t len, int want,
    size_t by)
{
    size_t     i;
    verdict_t  v0, v;

    sniff(allowed, data, len, 0, 0, &v0);

    if (want == 0) {
        if (v0.result != NGX_AHAVA_SNIFF_REJECT
            || (by && (v0.offset != by || v0.fed != len)))
        {
            printf("# want REJECT by %zu: result %d type %d offset %llu\n",
                   by, v0.result, v0.type, (unsigned long long) v0.offset);
            return 0;
        }

    } else if (v0.result != NGX_AHAVA_SNIFF_ACCEPT || v0.type != want) {
        printf("# want type %d: result %d type %d reason %s\n", want,
               v0.result, v0.type, v0.reason ? v0.reason : "-");
        return 0;
    }

    for (i = 1; i < len; i++) {
        sniff(allowed, data, len, i, 0, &v);

        if (!same(&v, &v0)) {
            printf("# split at %zu: result %d offset %llu\n", i, v.result,
                   (unsigned long long) v.offset);
            return 0;
        }
    }

    sniff(allowed, data, len, 0, 1, &v);

    if (!same(&v, &v0)) {
        printf("# byte by byte: result %d offset %llu\n", v.result,
               (unsigned long long) v.offset);
        return 0;
    }

    if (by && v.fed != by) {
        printf("# byte by byte: REJECT after %zu bytes\n", v.fed);
        return 0;
    }

    return 1;
}


/* the reason of a REJECT fed whole, "" if none */

static const char *
reason(unsigned allowed, const unsigned char *data, size_t len)
{
    verdict_t  v;

    sniff(allowed, data, len, 0, 0, &v);

    return v.reason ? v.reason : "";
}


/* one ZIP local file header and its data; returns the bytes written */

static size_t
zip_entry(unsigned char *p, const char *name, unsigned flags,
    const char *data)
{
    size_t  n, nlen, dlen;

    nlen = strlen(name);
    dlen = strlen(data);

    memcpy(p, "PK\x03\x04\x14\x00", 6);
    p[6] = (unsigned char) flags;
    p[7] = 0;
    memcpy(p + 8, "\x00\x00" "\x00\x00\x00\x00" "\x12\x34\x56\x78", 10);

    /* sizes unknown (0) when bit 3 says a data descriptor follows */
    memset(p + 18, 0, 8);

    if (!(flags & 8)) {
        p[18] = (unsigned char) dlen;
        p[22] = (unsigned char) dlen;
    }

    p[26] = (unsigned char) (nlen & 0xff);
    p[27] = (unsigned char) (nlen >> 8);
    p[28] = 0;
    p[29] = 0;
    memcpy(p + 30, name, nlen);
    memcpy(p + 30 + nlen, data, dlen);
    n = 30 + nlen + dlen;

    if (flags & 8) {
        memcpy(p + n, "PK\x07\x08" "\x12\x34\x56\x78", 8);
        memset(p + n + 8, 0, 8);
        p[n + 8] = (unsigned char) dlen;
        p[n + 12] = (unsigned char) dlen;
        n += 16;
    }

    return n;
}


/* a central directory end record, as a ZIP ends */

static size_t
zip_end(unsigned char *p)
{
    memcpy(p, "PK\x05\x06", 4);
    memset(p + 4, 0, 18);

    return 22;
}


static int
ext(int type, const char *name)
{
    return ngx_ahava_sniff_extension_matches(type,
                                             (const unsigned char *) name,
                                             strlen(name));
}


int
main(void)
{
    int                            good, t;
    size_t                         i, n;
    verdict_t                      v;
    unsigned char                  buf[2048], big[600];
    ngx_ahava_sniff_t              s;
    const ngx_ahava_sniff_type_t  *ti;

    static const unsigned char  jpeg[] =
        "\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
        "\xff\xdb\x00\x43\x00\x08\x06\x06\x07\x06\x05\x08\x07\x07\x07\x09"
        "<scrip>< script <svgx <<s\x00\x01\xff\xd9";
    static const unsigned char  png[] =
        "\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00\x00\x01\x00\x00\x00\x01"
        "\x08\x06\x00\x00\x00\x1f\x15\xc4\x89\x00\x00\x00\x00IEND\xae\x42\x60"
        "\x82";
    static const unsigned char  gif87[] =
        "GIF87a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00,\x00\x00"
        "\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00;";
    static const unsigned char  gif89[] =
        "GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04"
        "\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02"
        "\x44\x01\x00;";
    static const unsigned char  webp[] =
        "RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00\x2f\x00\x00\x00\x10\x07"
        "\x10\x11\x11\x88\x88\xfe\x07\x00";
    static const unsigned char  pdf[] =
        "%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R"
        " >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n";
    static const unsigned char  ole2[] =
        "\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\x00\x00\x00\x00\x00\x00\x00\x00"
        "\x00\x00\x00\x00\x00\x00\x00\x00\x3e\x00\x03\x00\xfe\xff\x09\x00"
        "<script> javascript:";
    static const unsigned char  hebrew[] =
        "\xd7\xa9\xd7\x9c\xd7\x95\xd7\x9d \xd7\xa2\xd7\x95\xd7\x9c\xd7\x9d, "
        "\xf0\x9f\x98\x80 \xe2\x82\xac 5\n";

    /* --- allowed types by their magic --- */

    ok(check(BOTH, S(jpeg), NGX_AHAVA_SNIFF_JPEG, 0),
       "JPEG (with near-markers that are none)");
    ok(check(BOTH, S(png), NGX_AHAVA_SNIFF_PNG, 0), "PNG");
    ok(check(BOTH, S(gif87), NGX_AHAVA_SNIFF_GIF, 0), "GIF87a");
    ok(check(BOTH, S(gif89), NGX_AHAVA_SNIFF_GIF, 0), "GIF89a");
    ok(check(BOTH, S(webp), NGX_AHAVA_SNIFF_WEBP, 0), "WebP");
    ok(check(DOCS, S(pdf), NGX_AHAVA_SNIFF_PDF, 0), "PDF");
    ok(check(DOCS, S(ole2), NGX_AHAVA_SNIFF_DOC, 0),
       "DOC (OLE2), not scanned for markers");
    ok(check(IMG, S(jpeg), NGX_AHAVA_SNIFF_JPEG, 0),
       "JPEG on the image endpoint");
    ok(check(IMG, S(webp), NGX_AHAVA_SNIFF_WEBP, 0),
       "WebP on the image endpoint");
    ok(check(DOCS, S("%PDF-"), NGX_AHAVA_SNIFF_PDF, 0),
       "only the PDF magic number");
    ok(check(BOTH, S("\xff\xd8\xff"), NGX_AHAVA_SNIFF_JPEG, 0),
       "only the JPEG magic number");

    /* DOCX */

    n = zip_entry(buf, "[Content_Types].xml", 0, "<Types/>");
    n += zip_entry(buf + n, "_rels/.rels", 0, "<Relationships/>");
    n += zip_entry(buf + n, "word/document.xml", 0, "<w:document/>");
    n += zip_end(buf + n);
    ok(check(DOCS, buf, n, NGX_AHAVA_SNIFF_DOCX, 0),
       "DOCX: a ZIP with a word/ entry (third)");

    n = zip_entry(buf, "[Content_Types].xml", 8, "\x01\x02PK\x01\x02xyz");
    n += zip_entry(buf + n, "docProps/app.xml", 8, "PK\x03");
    n += zip_entry(buf + n, "Word/styles.xml", 8, "x");
    n += zip_end(buf + n);
    ok(check(DOCS, buf, n, NGX_AHAVA_SNIFF_DOCX, 0),
       "DOCX: entries with data descriptors (sizes unknown)");

    n = zip_entry(buf, "word", 0, "x");
    n += zip_entry(buf + n, "words.xml", 0, "x");
    n += zip_entry(buf + n, "a/word/x.xml", 0, "word/");
    n += zip_end(buf + n);
    ok(check(DOCS, buf, n, 0, 0)
       && strcmp(reason(DOCS, buf, n), "archive (ZIP, not a DOCX)") == 0,
       "ZIP without a word/ entry refused at the end");

    n = zip_entry(buf, "word/document.xml", 0, "x");
    ok(check(IMG, buf, n, 0, 1),
       "DOCX on the image endpoint: refused by the first byte");

    n = zip_entry(buf, "word/", 0, "");
    buf[n - 1] = 'x';   /* the name cut short: "word" and no slash */
    ok(check(DOCS, buf, n - 1, 0, 0), "ZIP whose name is cut short");

    /* TXT and CSV */

    ok(check(DOCS, S("hello, world\n"), NGX_AHAVA_SNIFF_TXT, 0), "ASCII text");
    ok(check(DOCS, S("name,age\n\"a, b\",3\n"), NGX_AHAVA_SNIFF_TXT, 0),
       "CSV is text");
    ok(check(DOCS, S(hebrew), NGX_AHAVA_SNIFF_TXT, 0),
       "UTF-8 text (Hebrew, emoji, euro), split in every sequence");
    ok(check(DOCS, S("\xef\xbb\xbftext"), NGX_AHAVA_SNIFF_TXT, 0),
       "UTF-8 BOM then text");
    ok(check(DOCS, S("\xef\xbf\xbf \xf4\x8f\xbf\xbf \xed\x9f\xbf \xee\x80\x80"
                     " \xe0\xa0\x80 \xf0\x90\x80\x80 \xc2\x80"),
             NGX_AHAVA_SNIFF_TXT, 0),
       "UTF-8 edges: U+FFFF U+10FFFF U+D7FF U+E000 U+0800 U+10000 U+0080");
    ok(check(DOCS, S(" \t\r\n"), NGX_AHAVA_SNIFF_TXT, 0), "blank text");
    ok(check(DOCS, S("a <script>alert(1)</script>"), NGX_AHAVA_SNIFF_TXT, 0),
       "text with a marker after its start is text");
    ok(check(DOCS, S("M"), NGX_AHAVA_SNIFF_TXT, 0), "one byte M is text");
    ok(check(DOCS, S("GIF8"), NGX_AHAVA_SNIFF_TXT, 0),
       "a short GIF-like start is text");
    ok(check(DOCS, S("RIFF1234WEBX"), NGX_AHAVA_SNIFF_TXT, 0),
       "RIFF not WEBP, in ASCII, is text");
    ok(check(DOCS, S("#"), NGX_AHAVA_SNIFF_TXT, 0), "# is text");

    ngx_ahava_sniff_init(&s, DOCS);
    ok(ngx_ahava_sniff_feed(&s, (const unsigned char *) "a", 1)
       == NGX_AHAVA_SNIFF_CANDIDATE && s.type == NGX_AHAVA_SNIFF_TXT,
       "text: CANDIDATE from the first byte");

    ngx_ahava_sniff_init(&s, BOTH);
    ok(ngx_ahava_sniff_feed(&s, (const unsigned char *) "\xff\xd8", 2)
       == NGX_AHAVA_SNIFF_UNDECIDED
       && ngx_ahava_sniff_feed(&s, (const unsigned char *) "\xff", 1)
          == NGX_AHAVA_SNIFF_CANDIDATE
       && s.type == NGX_AHAVA_SNIFF_JPEG,
       "JPEG: UNDECIDED after 2 bytes, CANDIDATE after 3");

    ngx_ahava_sniff_init(&s, DOCS);
    ok(ngx_ahava_sniff_feed(&s, (const unsigned char *) "PK\x03\x04", 4)
       == NGX_AHAVA_SNIFF_CANDIDATE && s.type == NGX_AHAVA_SNIFF_DOCX,
       "ZIP: CANDIDATE DOCX until the end");

    /* --- refused --- */

    ok(check(BOTH, S(""), 0, 0)
       && strcmp(reason(BOTH, S("")), "empty file") == 0, "empty file");
    ok(check(DOCS, S("\xef\xbb\xbf"), 0, 0), "only a BOM");
    ok(check(DOCS, S("\x7f" "ELF\x02\x01\x01\x00\x00\x00"), 0, 4)
       && strcmp(reason(DOCS, S("\x7f" "ELF\x02")), "executable (ELF)") == 0,
       "ELF refused by byte 4");
    ok(check(DOCS, S("MZ\x90\x00\x03\x00"), 0, 2)
       && strcmp(reason(DOCS, S("MZ\x90")), "executable (PE)") == 0,
       "PE refused by byte 2");
    ok(check(DOCS, S("\xfe\xed\xfa\xce\x00"), 0, 1), "Mach-O 32 by byte 1");
    ok(check(DOCS, S("\xcf\xfa\xed\xfe\x07"), 0, 2), "Mach-O 64 LE by byte 2");
    ok(check(DOCS, S("\xca\xfe\xba\xbe\x00"), 0, 2), "Mach-O fat by byte 2");
    ok(check(IMG, S("\xcf\xfa\xed\xfe\x07"), 0, 1),
       "Mach-O on the image endpoint by byte 1");
    ok(check(DOCS, S("#!/bin/sh\necho hi\n"), 0, 2)
       && strcmp(reason(DOCS, S("#!/bin/sh")), "script") == 0,
       "script refused by byte 2");
    ok(check(DOCS, S("\x1f\x8b\x08\x00"), 0, 2)
       && strcmp(reason(DOCS, S("\x1f\x8b")), "archive (gzip)") == 0,
       "gzip refused by byte 2");
    ok(check(DOCS, S("7z\xbc\xaf\x27\x1c\x00\x04"), 0, 3), "7z by byte 3");
    ok(check(DOCS, S("Rar!\x1a\x07\x01\x00"), 0, 6)
       && strcmp(reason(DOCS, S("Rar!\x1a\x07")), "archive (RAR)") == 0,
       "RAR refused by byte 6");
    ok(check(DOCS, S("BZh91AY&SY"), 0, 3), "bzip2 refused by byte 3");
    ok(check(DOCS, S("\xfd" "7zXZ\x00\x00"), 0, 1), "xz refused by byte 1");
    ok(check(DOCS, S("PK\x05\x06\x00\x00\x00\x00"), 0, 4),
       "empty ZIP refused by byte 4");
    ok(check(DOCS, S("PK\x07\x08"), 0, 4), "spanned ZIP refused by byte 4");
    ok(check(BOTH, S("\x00\x00\x01\x00"), 0, 1), "binary (ICO) by byte 1");
    ok(check(BOTH, S("RIFF\x24\x00\x00\x00WAVEfmt "), 0, 10),
       "RIFF WAVE refused by byte 10 (its NULs seen before)");
    ok(check(IMG, S("RIFF\x24\x01\x01\x01WAVEfmt "), 0, 10),
       "RIFF WAVE refused by byte 10 on the image endpoint");

    /* tar: a name then NULs, or a pathological header without NULs */

    memset(big, 0, sizeof(big));
    memcpy(big, "notes.txt", 9);
    memcpy(big + 257, "ustar\x00" "00", 8);
    ok(check(DOCS, big, 512, 0, 10), "tar refused at the NUL after its name");

    memset(big, 'x', 512);
    memcpy(big + 257, "ustar  ", 7);
    ok(check(DOCS, big, 512, 0, 262)
       && strcmp(reason(DOCS, big, 512), "archive (tar)") == 0,
       "tar without NUL refused by byte 262");
    memcpy(big + 257, "ustaX  ", 7);
    ok(check(DOCS, big, 512, NGX_AHAVA_SNIFF_TXT, 0),
       "the same without ustar is text");

    /* markup */

    ok(check(DOCS, S("<svg xmlns=\"http://www.w3.org/2000/svg\"/>"), 0, 1)
       && strcmp(reason(DOCS, S("<svg")), "HTML, SVG or XML markup") == 0,
       "SVG refused by byte 1");
    ok(check(DOCS, S("<?xml version=\"1.0\"?><svg/>"), 0, 1), "XML refused");
    ok(check(DOCS, S("<!DOCTYPE html><html></html>"), 0, 1),
       "HTML doctype refused");
    ok(check(DOCS, S("<html><body></body></html>"), 0, 1), "HTML refused");
    ok(check(DOCS, S("<script>alert(1)</script>"), 0, 1), "script refused");
    ok(check(DOCS, S("<3 you"), 0, 1), "any text starting with < refused");
    ok(check(DOCS, S("\xef\xbb\xbf \r\n\t<svg/>"), 0, 8),
       "BOM and blanks then < refused at the <");
    ok(check(IMG, S("<svg/>"), 0, 1)
       && strcmp(reason(IMG, S("<svg")), "HTML, SVG or XML markup") == 0,
       "SVG on the image endpoint, reason markup");
    ok(check(DOCS, S("\xef\xbb<svg"), 0, 3), "broken BOM then <");

    /* the endpoint */

    ok(check(IMG, S("hello"), 0, 1)
       && strcmp(reason(IMG, S("h")), "file type not allowed here") == 0,
       "text on the image endpoint refused by byte 1");
    ok(check(IMG, S(pdf), 0, 1), "PDF on the image endpoint by byte 1");
    ok(check(IMG, S(ole2), 0, 1), "DOC on the image endpoint by byte 1");
    ok(check(DOCS, S(jpeg), 0, 1), "JPEG on the document-only endpoint");
    ok(check(IMG, S("GIF8"), 0, 0), "a short GIF start is no image");
    ok(check(IMG, S("GIF89"), 0, 0) && check(IMG, S("GIF8X"), 0, 5),
       "GIF cut short, or not GIF at byte 5");

    /* UTF-8 errors, as early as the byte that makes them */

    ok(check(DOCS, S("abc\xc0\x80"), 0, 4), "overlong C0 80 at its lead");
    ok(check(DOCS, S("abc\xc1\xbf"), 0, 4), "overlong C1 BF");
    ok(check(DOCS, S("abc\xe0\x80\x80"), 0, 5), "overlong E0 80 80");
    ok(check(DOCS, S("abc\xe0\x9f\xbf"), 0, 5), "overlong E0 9F BF");
    ok(check(DOCS, S("abc\xf0\x8f\xbf\xbf"), 0, 5), "overlong F0 8F");
    ok(check(DOCS, S("abc\xed\xa0\x80"), 0, 5), "surrogate ED A0 80");
    ok(check(DOCS, S("abc\xed\xbf\xbf"), 0, 5), "surrogate ED BF BF");
    ok(check(DOCS, S("abc\xf4\x90\x80\x80"), 0, 5), "above U+10FFFF");
    ok(check(DOCS, S("abc\xf5\x80\x80\x80"), 0, 4), "lead F5");
    ok(check(DOCS, S("abc\xff"), 0, 4), "byte FF");
    ok(check(DOCS, S("abc\x80"), 0, 4), "lone continuation byte");
    ok(check(DOCS, S("abc\xd7\xa9\xa9"), 0, 6), "extra continuation byte");
    ok(check(DOCS, S("abc\xe2\x82x"), 0, 6), "sequence cut by ASCII");
    ok(check(DOCS, S("ab\x00" "c"), 0, 3)
       && strcmp(reason(DOCS, S("ab\x00")), "NUL byte in text") == 0,
       "NUL in text refused at it");
    ok(check(DOCS, S("abc\xd7"), 0, 0)
       && strcmp(reason(DOCS, S("abc\xd7")), "text ends inside a character")
          == 0,
       "text ending inside a 2-byte sequence refused at the end");
    ok(check(DOCS, S("abc\xf0\x9f\x98"), 0, 0),
       "text ending inside a 4-byte sequence refused at the end");

    memset(big, 'a', sizeof(big));
    big[500] = '\0';
    ok(check(DOCS, big, sizeof(big), 0, 501), "NUL after the head, at it");
    big[500] = 0xc3;
    big[501] = 0x28;
    ok(check(DOCS, big, sizeof(big), 0, 502), "bad UTF-8 after the head");
    big[501] = 0xa9;
    ok(check(DOCS, big, sizeof(big), NGX_AHAVA_SNIFF_TXT, 0),
       "good UTF-8 after the head");

    /* polyglots */

    n = sizeof(gif89) - 1;
    memcpy(buf, gif89, n);
    memcpy(buf + n, "<script>alert(1)</script>", 25);
    ok(check(IMG, buf, n + 25, 0, n + 8)
       && strcmp(reason(IMG, buf, n + 25), "HTML or script inside the file")
          == 0,
       "GIF + <script>: refused at the > even split inside it");

    memcpy(buf + n, "xx<ScRiPt\tsrc=x>", 16);
    ok(check(IMG, buf, n + 16, 0, n + 10), "GIF + <ScRiPt<TAB> any case");

    memcpy(buf + n, "<<<svg/onload=x>", 16);
    ok(check(IMG, buf, n + 16, 0, n + 7), "GIF + <<<svg/");

    memcpy(buf + n, "<html>", 6);
    ok(check(IMG, buf, n + 6, 0, n + 6), "GIF + <html>");

    memcpy(buf + n, "<iframe src=x>", 14);
    ok(check(IMG, buf, n + 14, 0, n + 8), "GIF + <iframe ");

    memcpy(buf + n, "<BODY onload=x>", 15);
    ok(check(IMG, buf, n + 15, 0, n + 6), "GIF + <BODY ");

    memcpy(buf + n, "<!DocType html>", 15);
    ok(check(IMG, buf, n + 15, 0, n + 10), "GIF + <!DocType ");

    memcpy(buf + n, "<?php system($_GET[1]); ?>", 26);
    ok(check(IMG, buf, n + 26, 0, n + 6), "GIF + <?php ");

    memcpy(buf + n, "<svg", 4);
    ok(check(IMG, buf, n + 4, 0, 0), "GIF + <svg at the very end");

    memcpy(buf + n, "<svgz <scripts <htm <?phpx <bodyx", 33);
    ok(check(IMG, buf, n + 33, NGX_AHAVA_SNIFF_GIF, 0),
       "GIF + tags that are not the markers");

    n = sizeof(png) - 1;
    memcpy(buf, png, n);
    memcpy(buf + n, "tEXtComment\0JavaScript:alert(1)", 31);
    ok(check(IMG, buf, n + 31, 0, n + 23), "PNG + JavaScript: at the colon");

    memcpy(buf + n, "jjavascript:", 12);
    ok(check(IMG, buf, n + 12, 0, n + 12), "PNG + jjavascript:");

    memcpy(buf + n, "javascript;", 11);
    ok(check(IMG, buf, n + 11, NGX_AHAVA_SNIFF_PNG, 0),
       "PNG + javascript; is no marker");

    n = sizeof(pdf) - 1;
    memcpy(buf, pdf, n);
    memcpy(buf + n, "<html>", 6);
    ok(check(DOCS, buf, n + 6, 0, n + 6), "PDF + <html>");

    n = sizeof(webp) - 1;
    memcpy(buf, webp, n);
    memcpy(buf + n, "<svg>", 5);
    ok(check(IMG, buf, n + 5, 0, n + 5), "WebP + <svg>");

    /* a marker cut by every chunk boundary, 300 bytes into a JPEG */

    memset(big, 'j', sizeof(big));
    memcpy(big, "\xff\xd8\xff\xe0", 4);
    memcpy(big + 300, "<sCRIPT>", 8);
    good = check(IMG, big, sizeof(big), 0, 308);

    for (i = 1; good && i < 20; i++) {
        sniff(IMG, big, sizeof(big), 0, i, &v);
        good = (v.result == NGX_AHAVA_SNIFF_REJECT && v.offset == 308);
    }

    ok(good, "JPEG + <sCRIPT> at 300: in chunks of 1..19, at byte 308");

    /* --- type descriptions --- */

    ti = ngx_ahava_sniff_type(NGX_AHAVA_SNIFF_JPEG);
    ok(ti && strcmp(ti->mime, "image/jpeg") == 0 && ti->mime_len == 10
       && ti->kind == IMG && strcmp(ti->exts[0], "jpg") == 0
       && strcmp(ti->exts[1], "jpeg") == 0 && ti->exts[2] == NULL,
       "JPEG: image/jpeg, jpg and jpeg");

    good = 1;

    {
        static const struct {
            int          type;
            const char  *mime;
            unsigned     kind;
        }  want[] = {
            { NGX_AHAVA_SNIFF_PNG, "image/png", IMG },
            { NGX_AHAVA_SNIFF_GIF, "image/gif", IMG },
            { NGX_AHAVA_SNIFF_WEBP, "image/webp", IMG },
            { NGX_AHAVA_SNIFF_PDF, "application/pdf", DOCS },
            { NGX_AHAVA_SNIFF_DOC, "application/msword", DOCS },
            { NGX_AHAVA_SNIFF_DOCX, "application/vnd.openxmlformats-"
                  "officedocument.wordprocessingml.document", DOCS },
            { NGX_AHAVA_SNIFF_TXT, "text/plain", DOCS },
            { NGX_AHAVA_SNIFF_CSV, "text/csv", DOCS }
        };

        for (i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
            ti = ngx_ahava_sniff_type(want[i].type);

            if (ti == NULL || strcmp(ti->mime, want[i].mime) != 0
                || ti->mime_len != strlen(want[i].mime)
                || ti->kind != want[i].kind || ti->name == NULL)
            {
                good = 0;
            }
        }
    }

    ok(good, "every type's MIME type and kind");
    ok(ngx_ahava_sniff_type(NGX_AHAVA_SNIFF_NONE) == NULL
       && ngx_ahava_sniff_type(NGX_AHAVA_SNIFF_NTYPES) == NULL
       && ngx_ahava_sniff_type(-1) == NULL,
       "no description for NONE or out of range");

    /* --- file names --- */

    t = NGX_AHAVA_SNIFF_JPEG;
    ok(ext(t, "photo.jpg") == t && ext(t, "photo.JPEG") == t
       && ext(t, "a.b.Jpg") == t,
       "JPEG: .jpg, .JPEG, .Jpg");
    ok(ext(t, "x.png") == NGX_AHAVA_SNIFF_EXT_MISMATCH,
       "JPEG named x.png: mismatch");
    ok(ext(t, "jpg") == NGX_AHAVA_SNIFF_EXT_MISMATCH
       && ext(t, "x.") == NGX_AHAVA_SNIFF_EXT_MISMATCH
       && ext(t, "x.jpg.") == NGX_AHAVA_SNIFF_EXT_MISMATCH
       && ext(t, "x.jpgx") == NGX_AHAVA_SNIFF_EXT_MISMATCH
       && ext(t, "x.jp") == NGX_AHAVA_SNIFF_EXT_MISMATCH,
       "no extension, empty or other extension: mismatch");
    ok(ext(NGX_AHAVA_SNIFF_PNG, "a.png") == NGX_AHAVA_SNIFF_PNG
       && ext(NGX_AHAVA_SNIFF_GIF, "a.gif") == NGX_AHAVA_SNIFF_GIF
       && ext(NGX_AHAVA_SNIFF_WEBP, "a.webp") == NGX_AHAVA_SNIFF_WEBP
       && ext(NGX_AHAVA_SNIFF_PDF, "a.pdf") == NGX_AHAVA_SNIFF_PDF
       && ext(NGX_AHAVA_SNIFF_DOC, "a.doc") == NGX_AHAVA_SNIFF_DOC
       && ext(NGX_AHAVA_SNIFF_DOCX, "a.DOCX") == NGX_AHAVA_SNIFF_DOCX,
       "png gif webp pdf doc docx");
    ok(ext(NGX_AHAVA_SNIFF_DOC, "a.docx") == NGX_AHAVA_SNIFF_EXT_MISMATCH
       && ext(NGX_AHAVA_SNIFF_DOCX, "a.doc") == NGX_AHAVA_SNIFF_EXT_MISMATCH
       && ext(NGX_AHAVA_SNIFF_PDF, "a.txt") == NGX_AHAVA_SNIFF_EXT_MISMATCH,
       "doc/docx/pdf mismatches");
    ok(ext(NGX_AHAVA_SNIFF_TXT, "a.txt") == NGX_AHAVA_SNIFF_TXT
       && ext(NGX_AHAVA_SNIFF_TXT, "a.CSV") == NGX_AHAVA_SNIFF_CSV
       && ext(NGX_AHAVA_SNIFF_CSV, "a.txt") == NGX_AHAVA_SNIFF_TXT
       && ext(NGX_AHAVA_SNIFF_CSV, "a.csv") == NGX_AHAVA_SNIFF_CSV,
       "text: .txt gives text/plain, .csv text/csv");
    ok(ext(NGX_AHAVA_SNIFF_TXT, "a") == NGX_AHAVA_SNIFF_EXT_MISMATCH
       && ext(NGX_AHAVA_SNIFF_TXT, "a.md") == NGX_AHAVA_SNIFF_EXT_MISMATCH
       && ext(NGX_AHAVA_SNIFF_TXT, "a.html") == NGX_AHAVA_SNIFF_EXT_MISMATCH,
       "text without .txt/.csv: mismatch");
    ok(ext(NGX_AHAVA_SNIFF_NONE, "a.txt") == NGX_AHAVA_SNIFF_EXT_MISMATCH
       && ext(77, "a.txt") == NGX_AHAVA_SNIFF_EXT_MISMATCH,
       "no type: mismatch");
    ok(ext(t, "\xd7\xaa\xd7\x9e\xd7\x95\xd7\xa0\xd7\x94 1.jpg") == t
       && ext(t, "caf\xc3\xa9 \xe2\x80\x8f.jpg") == t,
       "Hebrew and accented names, RLM allowed");

    ok(ext(t, "") == NGX_AHAVA_SNIFF_BAD_FILENAME, "empty name: bad");
    ok(ext(t, "../x.jpg") == NGX_AHAVA_SNIFF_BAD_FILENAME
       && ext(t, "a/x.jpg") == NGX_AHAVA_SNIFF_BAD_FILENAME
       && ext(t, "C:\\x.jpg") == NGX_AHAVA_SNIFF_BAD_FILENAME,
       "slash and backslash: bad");
    ok(ext(t, "a\tb.jpg") == NGX_AHAVA_SNIFF_BAD_FILENAME
       && ext(t, "a\nb.jpg") == NGX_AHAVA_SNIFF_BAD_FILENAME
       && ext(t, "a\x7f.jpg") == NGX_AHAVA_SNIFF_BAD_FILENAME
       && ext(t, "a\xc2\x85.jpg") == NGX_AHAVA_SNIFF_BAD_FILENAME,
       "control characters (C0, DEL, C1 NEL): bad");
    ok(ngx_ahava_sniff_extension_matches(t, (const unsigned char *) "a\0.jpg",
                                         6)
       == NGX_AHAVA_SNIFF_BAD_FILENAME,
       "NUL: bad");
    ok(ext(t, "gpj.\xe2\x80\xae" "exe.jpg") == NGX_AHAVA_SNIFF_BAD_FILENAME
       && ext(t, "a\xe2\x81\xa6.jpg") == NGX_AHAVA_SNIFF_BAD_FILENAME,
       "bidi override and isolate: bad");
    ok(ext(t, "a\xff.jpg") == NGX_AHAVA_SNIFF_BAD_FILENAME
       && ext(t, "a\xc0\xae.jpg") == NGX_AHAVA_SNIFF_BAD_FILENAME
       && ext(t, "a\xe0\x80\xae.jpg") == NGX_AHAVA_SNIFF_BAD_FILENAME
       && ext(t, "a\xed\xa0\x80.jpg") == NGX_AHAVA_SNIFF_BAD_FILENAME
       && ext(t, "a.jpg\xd7") == NGX_AHAVA_SNIFF_BAD_FILENAME,
       "invalid UTF-8: bad");

    memset(big, 'a', 300);
    memcpy(big + 251, ".jpg", 4);
    ok(ngx_ahava_sniff_extension_matches(t, big, 255) == t,
       "255 bytes: fine");
    memcpy(big + 252, ".jpg", 4);
    ok(ngx_ahava_sniff_extension_matches(t, big, 256)
       == NGX_AHAVA_SNIFF_BAD_FILENAME,
       "256 bytes: bad");

    printf("1..%d\n", tests);

    return failures ? 1 : 0;
}
