
/*
 * Copyright (C) Ahava
 */


/*
 * The email queue: a send-email job {to, subject, html, text?} becomes one
 * RFC 5322 multipart/alternative message, handed to SMTP_URL through
 * libcurl, or written to <data_dir>/mail when no SMTP server is set.
 */


#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>


#include "ahava_worker.h"


#define AHAVA_EMAIL_TO_MAX          254
#define AHAVA_EMAIL_SUBJECT_MAX     998
#define AHAVA_EMAIL_ID_MAX          64
#define AHAVA_EMAIL_MID_LEN         512

/* a plain "Subject: " line longer than the 78 of RFC 5322 gets encoded */
#define AHAVA_EMAIL_SUBJECT_PLAIN   (78 - (sizeof("Subject: ") - 1))

/*
 * An encoded word is at most 75 characters: "=?UTF-8?B?" and "?=" leave
 * 63 for base64, so 60 of them, 45 bytes.  The first word shares its line
 * with "Subject: ", and RFC 2047 caps such a line at 76: 39 bytes there.
 */
#define AHAVA_EMAIL_WORD_FIRST      39
#define AHAVA_EMAIL_WORD_NEXT       45

/* quoted-printable lines: 76 characters, the soft break's "=" included */
#define AHAVA_EMAIL_QP_LINE         76

#define AHAVA_EMAIL_FROM_DEFAULT    "Ahava <no-reply@ahava.local>"
#define AHAVA_EMAIL_DOMAIN_DEFAULT  "ahava.local"

#define AHAVA_EMAIL_CONNECT_TIMEOUT 10L
#define AHAVA_EMAIL_TIMEOUT         60L


typedef struct {
    char              *data;
    size_t             len;
    size_t             size;
    int                nomem;
} ahava_email_buf_t;


typedef struct {
    const char        *to;
    const char        *subject;
    size_t             subject_len;
    const char        *html;
    size_t             html_len;
    const char        *text;            /* NULL: derived from html */
    size_t             text_len;
} ahava_email_input_t;


/* the plain text being derived from html: separators are held back */
typedef struct {
    ahava_email_buf_t  buf;
    int                space;
    int                newlines;
} ahava_email_text_t;


typedef struct {
    const char        *data;
    size_t             len;
    size_t             pos;
} ahava_email_reader_t;


static int ahava_email_validate(json_t *data, ahava_email_input_t *in,
    char *err, size_t errlen);
static int ahava_email_string(json_t *data, const char *key, int optional,
    const char **s, size_t *len, char *err, size_t errlen);
static int ahava_email_sender(const char *from, char *addr, size_t size);
static void ahava_email_domain(const char *addr, char *domain, size_t size);
static void ahava_email_sanitize_id(const char *id, char *out, size_t size);

static int ahava_email_build(ahava_email_buf_t *b, ahava_email_input_t *in,
    const char *from, const char *message_id, const struct tm *tm);
static void ahava_email_subject(ahava_email_buf_t *b, const u_char *s,
    size_t len);
static void ahava_email_base64(ahava_email_buf_t *b, const u_char *s,
    size_t len);
static void ahava_email_qp(ahava_email_buf_t *b, const u_char *s,
    size_t len);

static char *ahava_email_html_text(const u_char *html, size_t len,
    size_t *text_len);
static size_t ahava_email_html_tag(ahava_email_text_t *tx, const u_char *p,
    const u_char *end);
static size_t ahava_email_html_entity(ahava_email_text_t *tx,
    const u_char *p, const u_char *end);
static void ahava_email_text_add(ahava_email_text_t *tx, const char *s,
    size_t len);
static void ahava_email_text_break(ahava_email_text_t *tx, int n, int add);

static ahava_job_rc_e ahava_email_sink(ahava_thread_t *t, const char *id,
    const struct tm *tm, ahava_email_buf_t *msg, char **path, char *err,
    size_t errlen);
static int ahava_email_write(const char *path, ahava_email_buf_t *msg);

static ahava_job_rc_e ahava_email_smtp(ahava_thread_t *t, const char *to,
    const char *sender, ahava_email_buf_t *msg, char *err, size_t errlen);
static size_t ahava_email_read(char *buf, size_t size, size_t nitems,
    void *data);
static int ahava_email_seek(void *data, curl_off_t offset, int origin);

static void ahava_email_buf_add(ahava_email_buf_t *b, const void *s,
    size_t len);
static void ahava_email_buf_cat(ahava_email_buf_t *b, ...)
    __attribute__((sentinel));


static const char  *ahava_email_days[] = {
    "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"
};

static const char  *ahava_email_months[] = {
    "Jan", "Feb", "Mar", "Apr", "May", "Jun",
    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"
};

static const char   ahava_email_hex[] = "0123456789ABCDEF";


ahava_job_rc_e
ahava_email_process(ahava_thread_t *t, ahava_job_t *job, char **result,
    char *err, size_t errlen)
{
    char                 *text, *path;
    size_t                text_len;
    json_t               *res;
    struct tm             tm;
    const char           *from;
    ahava_job_rc_e        rc;
    struct timespec       ts;
    ahava_email_buf_t     msg;
    ahava_email_input_t   in;
    char                  id[AHAVA_EMAIL_ID_MAX + 1];
    char                  sender[AHAVA_EMAIL_TO_MAX + 1];
    char                  domain[AHAVA_EMAIL_TO_MAX + 1];
    char                  rnd[17];
    char                  message_id[AHAVA_EMAIL_MID_LEN];

    *result = NULL;
    text = NULL;
    path = NULL;
    memset(&msg, 0, sizeof(ahava_email_buf_t));
    memset(&in, 0, sizeof(ahava_email_input_t));

    ahava_email_sanitize_id(job->id, id, sizeof(id));

    if (ahava_email_validate(job->data, &in, err, errlen) != 0) {
        rc = AHAVA_JOB_FATAL;
        goto failed;
    }

    from = t->conf->smtp_from;
    if (from == NULL || from[0] == '\0') {
        from = AHAVA_EMAIL_FROM_DEFAULT;
    }

    if (ahava_email_sender(from, sender, sizeof(sender)) != 0) {
        snprintf(err, errlen, "SMTP_FROM is not a usable sender address");
        rc = AHAVA_JOB_FATAL;
        goto failed;
    }

    ahava_email_domain(sender, domain, sizeof(domain));

    if (clock_gettime(CLOCK_REALTIME, &ts) != 0
        || gmtime_r(&ts.tv_sec, &tm) == NULL
        || ahava_random_hex(rnd, 8) != 0)
    {
        snprintf(err, errlen, "no clock or no randomness for the message");
        rc = AHAVA_JOB_RETRY;
        goto failed;
    }

    snprintf(message_id, sizeof(message_id), "<job-%s.%lld.%s@%s>", id,
             (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000, rnd,
             domain);

    if (in.text == NULL) {
        text = ahava_email_html_text((const u_char *) in.html, in.html_len,
                                     &text_len);
        if (text == NULL) {
            snprintf(err, errlen, "out of memory");
            rc = AHAVA_JOB_RETRY;
            goto failed;
        }

        in.text = text;
        in.text_len = text_len;
    }

    if (ahava_email_build(&msg, &in, from, message_id, &tm) != 0) {
        snprintf(err, errlen, "out of memory or randomness building the "
                 "message");
        rc = AHAVA_JOB_RETRY;
        goto failed;
    }

    if (t->conf->smtp_url == NULL || t->conf->smtp_url[0] == '\0') {
        rc = ahava_email_sink(t, id, &tm, &msg, &path, err, errlen);

    } else {
        rc = ahava_email_smtp(t, in.to, sender, &msg, err, errlen);
    }

    if (rc != AHAVA_JOB_DONE) {
        goto failed;
    }

    if (path) {
        ahava_log("info", "email written to the mail sink", "{s:s,s:s}",
                  "file", path, "to", in.to);

        res = json_pack("{s:s,s:s,s:s}", "messageId", message_id,
                        "to", in.to, "sink", path);

    } else {
        ahava_log("info", "email sent", "{s:s,s:s,s:s}", "job", id,
                  "messageId", message_id, "to", in.to);

        res = json_pack("{s:s,s:s}", "messageId", message_id, "to", in.to);
    }

    /* the mail is gone already: out of memory here must not resend it */

    if (res) {
        *result = json_dumps(res, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(res);
    }

    free(path);
    free(text);
    free(msg.data);

    return AHAVA_JOB_DONE;

failed:

    ahava_log("warn", "email not sent", "{s:s,s:s,s:s}", "job", id,
              "to", in.to ? in.to : "", "error", err);

    free(path);
    free(text);
    free(msg.data);

    return rc;
}


static int
ahava_email_validate(json_t *data, ahava_email_input_t *in, char *err,
    size_t errlen)
{
    size_t       len, i, at;
    u_char       c;
    const char  *s;

    if (!json_is_object(data)) {
        snprintf(err, errlen, "job data is not an object");
        return -1;
    }

    if (ahava_email_string(data, "to", 0, &in->to, &len, err, errlen) != 0
        || ahava_email_string(data, "subject", 0, &in->subject,
                              &in->subject_len, err, errlen)
           != 0
        || ahava_email_string(data, "html", 0, &in->html, &in->html_len,
                              err, errlen)
           != 0
        || ahava_email_string(data, "text", 1, &in->text, &in->text_len,
                              err, errlen)
           != 0)
    {
        return -1;
    }

    /* one plain address: it goes into RCPT TO:<...> and the To: header */

    s = in->to;
    at = 0;

    for (i = 0; i < len; i++) {
        c = (u_char) s[i];

        if (c == '@') {
            at++;
            continue;
        }

        if (c <= ' ' || c == 0x7f || c == '<' || c == '>' || c == ','
            || c == ';' || c == '"' || c == '(' || c == ')' || c == '\\')
        {
            snprintf(err, errlen, "\"to\" is not a single email address");
            return -1;
        }
    }

    if (len > AHAVA_EMAIL_TO_MAX || at != 1 || s[0] == '@'
        || s[len - 1] == '@')
    {
        snprintf(err, errlen, "\"to\" is not a single email address");
        return -1;
    }

    if (in->subject_len > AHAVA_EMAIL_SUBJECT_MAX) {
        snprintf(err, errlen, "\"subject\" is longer than %d bytes",
                 AHAVA_EMAIL_SUBJECT_MAX);
        return -1;
    }

    if (memchr(in->subject, '\r', in->subject_len)
        || memchr(in->subject, '\n', in->subject_len))
    {
        snprintf(err, errlen, "\"subject\" contains a line break");
        return -1;
    }

    return 0;
}


static int
ahava_email_string(json_t *data, const char *key, int optional,
    const char **s, size_t *len, char *err, size_t errlen)
{
    json_t  *v;

    *s = NULL;
    *len = 0;

    v = json_object_get(data, key);

    if (optional && (v == NULL || json_is_null(v))) {
        return 0;
    }

    if (!json_is_string(v)) {
        snprintf(err, errlen, "\"%s\" is %s", key,
                 v ? "not a string" : "missing");
        return -1;
    }

    *s = json_string_value(v);
    *len = json_string_length(v);

    /* "\u0000" is valid JSON but would cut a C string short */

    if (strlen(*s) != *len) {
        snprintf(err, errlen, "\"%s\" contains a NUL character", key);
        return -1;
    }

    return 0;
}


/*
 * The envelope sender: what is inside "<...>" of SMTP_FROM, or all of it.
 * SMTP_FROM itself becomes the From: header, so it must be one line.
 */

static int
ahava_email_sender(const char *from, char *addr, size_t size)
{
    size_t       len, i;
    const char  *p, *q;

    if (strchr(from, '\r') || strchr(from, '\n')
        || strlen(from) > AHAVA_EMAIL_SUBJECT_MAX)
    {
        return -1;
    }

    p = strchr(from, '<');
    q = p ? strchr(p, '>') : NULL;

    if (p && q) {
        p++;

    } else {
        p = from;
        q = from + strlen(from);
    }

    while (p < q && (*p == ' ' || *p == '\t')) {
        p++;
    }

    while (q > p && (q[-1] == ' ' || q[-1] == '\t')) {
        q--;
    }

    len = q - p;

    if (len == 0 || len >= size) {
        return -1;
    }

    for (i = 0; i < len; i++) {
        if ((u_char) p[i] <= ' ' || p[i] == 0x7f || p[i] == '<'
            || p[i] == '>')
        {
            return -1;
        }
    }

    memcpy(addr, p, len);
    addr[len] = '\0';

    return 0;
}


static void
ahava_email_domain(const char *addr, char *domain, size_t size)
{
    size_t       len, i;
    const char  *p;

    p = strrchr(addr, '@');

    if (p == NULL) {
        goto fallback;
    }

    p++;
    len = strlen(p);

    if (len == 0 || len >= size || p[0] == '.' || p[0] == '-') {
        goto fallback;
    }

    /* it ends up in Message-ID, where only a plain host name is safe */

    for (i = 0; i < len; i++) {
        if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z')
              || (p[i] >= '0' && p[i] <= '9') || p[i] == '.' || p[i] == '-'))
        {
            goto fallback;
        }
    }

    memcpy(domain, p, len + 1);

    return;

fallback:

    snprintf(domain, size, "%s", AHAVA_EMAIL_DOMAIN_DEFAULT);
}


/* job ids go into file names and Message-ID: letters, digits, - and _ */

static void
ahava_email_sanitize_id(const char *id, char *out, size_t size)
{
    size_t  i;
    u_char  c;

    if (id == NULL || id[0] == '\0') {
        id = "none";
    }

    for (i = 0; id[i] && i < size - 1; i++) {
        c = (u_char) id[i];

        out[i] = ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
                  || (c >= '0' && c <= '9') || c == '-' || c == '_')
                 ? (char) c : '_';
    }

    out[i] = '\0';
}


static int
ahava_email_build(ahava_email_buf_t *b, ahava_email_input_t *in,
    const char *from, const char *message_id, const struct tm *tm)
{
    char  rnd[25];
    char  boundary[48];
    char  date[48];

    if (ahava_random_hex(rnd, 12) != 0) {
        return -1;
    }

    /* "=_" never occurs in quoted-printable text, so neither does this */

    snprintf(boundary, sizeof(boundary), "=_ahava_%s", rnd);

    /* by hand: strftime() names days and months in the thread's locale */

    snprintf(date, sizeof(date), "%s, %02d %s %04d %02d:%02d:%02d +0000",
             ahava_email_days[tm->tm_wday % 7],
             tm->tm_mday, ahava_email_months[tm->tm_mon % 12],
             tm->tm_year + 1900, tm->tm_hour, tm->tm_min, tm->tm_sec);

    ahava_email_buf_cat(b,
                        "Date: ", date, "\r\n",
                        "Message-ID: ", message_id, "\r\n",
                        "From: ", from, "\r\n",
                        "To: ", in->to, "\r\n", NULL);

    ahava_email_subject(b, (const u_char *) in->subject, in->subject_len);

    ahava_email_buf_cat(b,
                        "MIME-Version: 1.0\r\n",
                        "Content-Type: multipart/alternative;\r\n",
                        " boundary=\"", boundary, "\"\r\n",
                        "\r\n",
                        "This is a multi-part message in MIME format.\r\n",
                        "\r\n",
                        "--", boundary, "\r\n",
                        "Content-Type: text/plain; charset=UTF-8\r\n",
                        "Content-Transfer-Encoding: quoted-printable\r\n",
                        "\r\n", NULL);

    ahava_email_qp(b, (const u_char *) in->text, in->text_len);

    ahava_email_buf_cat(b,
                        "\r\n--", boundary, "\r\n",
                        "Content-Type: text/html; charset=UTF-8\r\n",
                        "Content-Transfer-Encoding: quoted-printable\r\n",
                        "\r\n", NULL);

    ahava_email_qp(b, (const u_char *) in->html, in->html_len);

    ahava_email_buf_cat(b, "\r\n--", boundary, "--\r\n", NULL);

    return b->nomem ? -1 : 0;
}


/*
 * Plain ASCII subjects stay as they are; anything else, or a line too
 * long, becomes RFC 2047 encoded words, one per folded line.  Decoders
 * drop the folding between adjacent encoded words.
 */

static void
ahava_email_subject(ahava_email_buf_t *b, const u_char *s, size_t len)
{
    int     plain;
    size_t  i, n, max;

    plain = (len <= AHAVA_EMAIL_SUBJECT_PLAIN);

    for (i = 0; plain && i < len; i++) {

        if ((s[i] < ' ' && s[i] != '\t') || s[i] >= 0x7f) {
            plain = 0;
        }

        /* text that looks like an encoded word would be decoded */

        if (s[i] == '=' && i + 1 < len && s[i + 1] == '?') {
            plain = 0;
        }
    }

    ahava_email_buf_cat(b, "Subject: ", NULL);

    if (plain) {
        ahava_email_buf_add(b, s, len);
        ahava_email_buf_cat(b, "\r\n", NULL);
        return;
    }

    max = AHAVA_EMAIL_WORD_FIRST;

    for (i = 0; i < len; i += n) {
        n = len - i;

        if (n > max) {
            n = max;

            /* never end a word inside a UTF-8 sequence */

            while (n > 0 && (s[i + n] & 0xc0) == 0x80) {
                n--;
            }

            if (n == 0) {
                n = max;
            }
        }

        if (i > 0) {
            ahava_email_buf_cat(b, "\r\n ", NULL);
        }

        ahava_email_buf_cat(b, "=?UTF-8?B?", NULL);
        ahava_email_base64(b, s + i, n);
        ahava_email_buf_cat(b, "?=", NULL);

        max = AHAVA_EMAIL_WORD_NEXT;
    }

    ahava_email_buf_cat(b, "\r\n", NULL);
}


static void
ahava_email_base64(ahava_email_buf_t *b, const u_char *s, size_t len)
{
    char           out[4];
    uint32_t       v;
    static char    b64[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    while (len > 0) {
        v = (uint32_t) s[0] << 16;

        if (len > 1) {
            v |= (uint32_t) s[1] << 8;
        }

        if (len > 2) {
            v |= s[2];
        }

        out[0] = b64[(v >> 18) & 0x3f];
        out[1] = b64[(v >> 12) & 0x3f];
        out[2] = len > 1 ? b64[(v >> 6) & 0x3f] : '=';
        out[3] = len > 2 ? b64[v & 0x3f] : '=';

        ahava_email_buf_add(b, out, 4);

        if (len <= 3) {
            break;
        }

        s += 3;
        len -= 3;
    }
}


/*
 * Quoted-printable (RFC 2045 6.7).  Any of CRLF, LF or a lone CR is a hard
 * line break, written as CRLF; a space or tab just before a line end is
 * encoded so that no transport can strip it; lines stay within 76
 * characters with soft breaks.
 */

static void
ahava_email_qp(ahava_email_buf_t *b, const u_char *s, size_t len)
{
    int     last;
    size_t  i, n, col;
    u_char  c;
    char    tok[3];

    col = 0;

    for (i = 0; i < len; i++) {
        c = s[i];

        if (c == '\r' || c == '\n') {
            if (c == '\r' && i + 1 < len && s[i + 1] == '\n') {
                i++;
            }

            ahava_email_buf_add(b, "\r\n", 2);
            col = 0;
            continue;
        }

        last = (i + 1 == len || s[i + 1] == '\r' || s[i + 1] == '\n');

        if ((c >= 33 && c <= 126 && c != '=')
            || ((c == ' ' || c == '\t') && !last))
        {
            tok[0] = (char) c;
            n = 1;

        } else {
            tok[0] = '=';
            tok[1] = ahava_email_hex[c >> 4];
            tok[2] = ahava_email_hex[c & 0x0f];
            n = 3;
        }

        /* the line's last token needs no room for a soft break after it */

        if (col + n > (last ? AHAVA_EMAIL_QP_LINE : AHAVA_EMAIL_QP_LINE - 1))
        {
            ahava_email_buf_add(b, "=\r\n", 3);
            col = 0;
        }

        ahava_email_buf_add(b, tok, n);
        col += n;
    }
}


/*
 * A plain text from html for a job without "text": tags dropped (and
 * script, style and head with their content), the common entities
 * decoded, whitespace collapsed as a browser would, line breaks from <br>
 * and block elements, at most one empty line in a row.
 */

static char *
ahava_email_html_text(const u_char *html, size_t len, size_t *text_len)
{
    u_char              c;
    const u_char       *p, *end;
    ahava_email_text_t  tx;

    memset(&tx, 0, sizeof(ahava_email_text_t));

    p = html;
    end = html + len;

    while (p < end) {
        c = *p;

        if (c == '<') {
            p += ahava_email_html_tag(&tx, p, end);
            continue;
        }

        if (c == '&') {
            p += ahava_email_html_entity(&tx, p, end);
            continue;
        }

        if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f') {
            tx.space = 1;
            p++;
            continue;
        }

        ahava_email_text_add(&tx, (const char *) p, 1);
        p++;
    }

    /* the separators still held back are trailing ones: dropped */

    ahava_email_buf_add(&tx.buf, "", 1);

    if (tx.buf.nomem) {
        free(tx.buf.data);
        return NULL;
    }

    *text_len = tx.buf.len - 1;

    return tx.buf.data;
}


/* p is at "<": the number of bytes the tag (or the lone "<") takes */

static size_t
ahava_email_html_tag(ahava_email_text_t *tx, const u_char *p,
    const u_char *end)
{
    int            closing;
    size_t         n, k;
    u_char         c, quote;
    const u_char  *q;
    char           name[16];

    q = p + 1;

    if (q < end && *q == '!' && end - q >= 3 && q[1] == '-' && q[2] == '-') {

        /* a comment, to its "-->" */

        for (q += 3; q < end; q++) {
            if (end - q >= 3 && q[0] == '-' && q[1] == '-' && q[2] == '>') {
                return q + 3 - p;
            }
        }

        return end - p;
    }

    closing = (q < end && *q == '/');

    if (closing) {
        q++;
    }

    if (q >= end
        || !((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z')
             || (!closing && (*q == '!' || *q == '?'))))
    {
        ahava_email_text_add(tx, "<", 1);
        return 1;
    }

    for (n = 0; q < end && n < sizeof(name) - 1; q++, n++) {
        c = *q;

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9')))
        {
            break;
        }

        name[n] = (char) (c | 0x20);
    }

    name[n] = '\0';

    /* to the ">" that ends the tag, not one inside a quoted value */

    for (quote = 0; q < end; q++) {
        if (quote) {
            if (*q == quote) {
                quote = 0;
            }

        } else if (*q == '"' || *q == '\'') {
            quote = *q;

        } else if (*q == '>') {
            break;
        }
    }

    if (q < end) {
        q++;
    }

    if (strcmp(name, "br") == 0) {
        ahava_email_text_break(tx, 1, 1);

    } else if (strcmp(name, "p") == 0 || strcmp(name, "table") == 0
               || strcmp(name, "ul") == 0 || strcmp(name, "ol") == 0
               || strcmp(name, "blockquote") == 0 || strcmp(name, "pre") == 0
               || (name[0] == 'h' && name[1] >= '1' && name[1] <= '6'
                   && name[2] == '\0'))
    {
        ahava_email_text_break(tx, 2, 0);

    } else if (strcmp(name, "div") == 0 || strcmp(name, "li") == 0
               || strcmp(name, "tr") == 0 || strcmp(name, "hr") == 0)
    {
        ahava_email_text_break(tx, 1, 0);

    } else if (strcmp(name, "td") == 0 || strcmp(name, "th") == 0) {
        tx->space = 1;

    } else if (!closing
               && (strcmp(name, "script") == 0 || strcmp(name, "style") == 0
                   || strcmp(name, "head") == 0)
               && !(q - p >= 2 && q[-2] == '/'))
    {
        /* content that is not text, up to its closing tag */

        k = strlen(name);

        for ( /* void */ ; q < end; q++) {
            if (*q == '<' && end - q > (ptrdiff_t) k + 1 && q[1] == '/'
                && strncasecmp((const char *) q + 2, name, k) == 0)
            {
                return q + ahava_email_html_tag(tx, q, end) - p;
            }
        }

        return end - p;
    }

    return q - p;
}


/* p is at "&": the number of bytes the entity (or the lone "&") takes */

static size_t
ahava_email_html_entity(ahava_email_text_t *tx, const u_char *p,
    const u_char *end)
{
    size_t         n;
    uint32_t       cp;
    const u_char  *q, *semi;
    char           utf[4];

    for (semi = p + 1; semi < end && semi - p <= 10 && *semi != ';'; semi++)
    {
        /* void */
    }

    if (semi >= end || *semi != ';') {
        goto literal;
    }

    n = semi - p - 1;
    q = p + 1;

    if (n == 3 && memcmp(q, "amp", 3) == 0) {
        ahava_email_text_add(tx, "&", 1);

    } else if (n == 2 && memcmp(q, "lt", 2) == 0) {
        ahava_email_text_add(tx, "<", 1);

    } else if (n == 2 && memcmp(q, "gt", 2) == 0) {
        ahava_email_text_add(tx, ">", 1);

    } else if (n == 4 && memcmp(q, "quot", 4) == 0) {
        ahava_email_text_add(tx, "\"", 1);

    } else if (n == 4 && memcmp(q, "apos", 4) == 0) {
        ahava_email_text_add(tx, "'", 1);

    } else if (n == 4 && memcmp(q, "nbsp", 4) == 0) {
        tx->space = 1;

    } else if (n >= 2 && q[0] == '#') {
        cp = 0;

        if (q[1] == 'x' || q[1] == 'X') {
            if (n == 2) {
                goto literal;
            }

            for (q += 2; q < semi; q++) {
                if (*q >= '0' && *q <= '9') {
                    cp = cp * 16 + (*q - '0');

                } else if ((*q | 0x20) >= 'a' && (*q | 0x20) <= 'f') {
                    cp = cp * 16 + ((*q | 0x20) - 'a' + 10);

                } else {
                    goto literal;
                }

                if (cp > 0x10ffff) {
                    goto literal;
                }
            }

        } else {
            for (q += 1; q < semi; q++) {
                if (*q < '0' || *q > '9') {
                    goto literal;
                }

                cp = cp * 10 + (*q - '0');

                if (cp > 0x10ffff) {
                    goto literal;
                }
            }
        }

        if (cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r'
            || cp == 0xa0)
        {
            tx->space = 1;

        } else if (cp < 0x20 || (cp >= 0x7f && cp < 0xa0)
                   || (cp >= 0xd800 && cp <= 0xdfff))
        {
            goto literal;

        } else if (cp < 0x80) {
            utf[0] = (char) cp;
            ahava_email_text_add(tx, utf, 1);

        } else if (cp < 0x800) {
            utf[0] = (char) (0xc0 | (cp >> 6));
            utf[1] = (char) (0x80 | (cp & 0x3f));
            ahava_email_text_add(tx, utf, 2);

        } else if (cp < 0x10000) {
            utf[0] = (char) (0xe0 | (cp >> 12));
            utf[1] = (char) (0x80 | ((cp >> 6) & 0x3f));
            utf[2] = (char) (0x80 | (cp & 0x3f));
            ahava_email_text_add(tx, utf, 3);

        } else {
            utf[0] = (char) (0xf0 | (cp >> 18));
            utf[1] = (char) (0x80 | ((cp >> 12) & 0x3f));
            utf[2] = (char) (0x80 | ((cp >> 6) & 0x3f));
            utf[3] = (char) (0x80 | (cp & 0x3f));
            ahava_email_text_add(tx, utf, 4);
        }

    } else {
        goto literal;
    }

    return semi + 1 - p;

literal:

    ahava_email_text_add(tx, "&", 1);

    return 1;
}


/* text goes out after the separators held back, none at the very start */

static void
ahava_email_text_add(ahava_email_text_t *tx, const char *s, size_t len)
{
    if (tx->buf.len) {
        if (tx->newlines) {
            ahava_email_buf_add(&tx->buf, "\n\n", tx->newlines);

        } else if (tx->space) {
            ahava_email_buf_add(&tx->buf, " ", 1);
        }
    }

    tx->newlines = 0;
    tx->space = 0;

    ahava_email_buf_add(&tx->buf, s, len);
}


/* <br> adds a line break; a block boundary asks for at least n of them */

static void
ahava_email_text_break(ahava_email_text_t *tx, int n, int add)
{
    n = add ? tx->newlines + n : (tx->newlines > n ? tx->newlines : n);

    tx->newlines = n > 2 ? 2 : n;
    tx->space = 0;
}


static ahava_job_rc_e
ahava_email_sink(ahava_thread_t *t, const char *id, const struct tm *tm,
    ahava_email_buf_t *msg, char **path, char *err, size_t errlen)
{
    char        *dir, *file, *part;
    size_t       len;
    const char  *data_dir;

    *path = NULL;
    data_dir = t->conf->data_dir;

    if (data_dir == NULL || data_dir[0] == '\0') {
        snprintf(err, errlen, "no SMTP_URL and no AHAVA_DATA_DIR for the "
                 "mail sink");
        return AHAVA_JOB_FATAL;
    }

    len = strlen(data_dir) + sizeof("/mail/") + sizeof("YYYYmmddTHHMMSS-")
          + strlen(id) + sizeof(".eml.part");

    dir = malloc(len);
    file = malloc(len);
    part = malloc(len);

    if (dir == NULL || file == NULL || part == NULL) {
        snprintf(err, errlen, "out of memory");
        goto failed;
    }

    snprintf(dir, len, "%s/mail", data_dir);
    snprintf(file, len, "%s/%04d%02d%02dT%02d%02d%02d-%s.eml", dir,
             tm->tm_year + 1900, tm->tm_mon + 1, tm->tm_mday, tm->tm_hour,
             tm->tm_min, tm->tm_sec, id);
    snprintf(part, len, "%s.part", file);

    if (ahava_mkdirs(dir) != 0) {
        snprintf(err, errlen, "mail sink: mkdir \"%s\": %m", dir);
        goto failed;
    }

    /* a reader of the sink never sees half a message */

    if (ahava_email_write(part, msg) != 0) {
        snprintf(err, errlen, "mail sink: write \"%s\": %m", part);
        (void) unlink(part);
        goto failed;
    }

    if (rename(part, file) != 0) {
        snprintf(err, errlen, "mail sink: rename \"%s\": %m", part);
        (void) unlink(part);
        goto failed;
    }

    free(dir);
    free(part);

    *path = file;

    return AHAVA_JOB_DONE;

failed:

    free(dir);
    free(file);
    free(part);

    return AHAVA_JOB_RETRY;
}


static int
ahava_email_write(const char *path, ahava_email_buf_t *msg)
{
    int          fd, e;
    size_t       off;
    ssize_t      n;

    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd == -1) {
        return -1;
    }

    for (off = 0; off < msg->len; off += n) {
        n = write(fd, msg->data + off, msg->len - off);

        if (n == -1) {
            if (errno == EINTR) {
                n = 0;
                continue;
            }

            goto failed;
        }
    }

    if (fsync(fd) != 0) {
        goto failed;
    }

    if (close(fd) != 0) {
        return -1;
    }

    return 0;

failed:

    e = errno;
    (void) close(fd);
    errno = e;

    return -1;
}


static ahava_job_rc_e
ahava_email_smtp(ahava_thread_t *t, const char *to, const char *sender,
    ahava_email_buf_t *msg, char *err, size_t errlen)
{
    long                   code;
    char                  *url, *scheme, *user, *pass, *options;
    CURL                  *curl;
    CURLU                 *u;
    CURLcode               cc;
    ahava_job_rc_e         rc;
    struct curl_slist     *rcpt;
    ahava_email_reader_t   rd;
    char                   errbuf[CURL_ERROR_SIZE];

    url = NULL;
    scheme = NULL;
    user = NULL;
    pass = NULL;
    options = NULL;
    rcpt = NULL;

    /*
     * The credentials are taken out of the URL and given decoded: "%40" in
     * a password then works however curl treats it, and the URL left can
     * appear in errors and logs.
     */

    u = curl_url();
    if (u == NULL) {
        snprintf(err, errlen, "out of memory");
        return AHAVA_JOB_RETRY;
    }

    if (curl_url_set(u, CURLUPART_URL, t->conf->smtp_url, 0) != CURLUE_OK
        || curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK)
    {
        snprintf(err, errlen, "SMTP_URL is not a valid URL");
        rc = AHAVA_JOB_FATAL;
        goto done;
    }

    if (strcmp(scheme, "smtp") != 0 && strcmp(scheme, "smtps") != 0) {
        snprintf(err, errlen, "SMTP_URL is neither smtp:// nor smtps://");
        rc = AHAVA_JOB_FATAL;
        goto done;
    }

    (void) curl_url_get(u, CURLUPART_USER, &user, CURLU_URLDECODE);
    (void) curl_url_get(u, CURLUPART_PASSWORD, &pass, CURLU_URLDECODE);
    (void) curl_url_get(u, CURLUPART_OPTIONS, &options, CURLU_URLDECODE);

    if (curl_url_set(u, CURLUPART_USER, NULL, 0) != CURLUE_OK
        || curl_url_set(u, CURLUPART_PASSWORD, NULL, 0) != CURLUE_OK
        || curl_url_set(u, CURLUPART_OPTIONS, NULL, 0) != CURLUE_OK
        || curl_url_get(u, CURLUPART_URL, &url, 0) != CURLUE_OK)
    {
        snprintf(err, errlen, "SMTP_URL is not a valid URL");
        rc = AHAVA_JOB_FATAL;
        goto done;
    }

    if (t->curl == NULL) {
        t->curl = curl_easy_init();

        if (t->curl == NULL) {
            snprintf(err, errlen, "curl_easy_init() failed");
            rc = AHAVA_JOB_RETRY;
            goto done;
        }
    }

    curl = t->curl;

    rcpt = curl_slist_append(NULL, to);
    if (rcpt == NULL) {
        snprintf(err, errlen, "out of memory");
        rc = AHAVA_JOB_RETRY;
        goto done;
    }

    rd.data = msg->data;
    rd.len = msg->len;
    rd.pos = 0;
    errbuf[0] = '\0';

    curl_easy_reset(curl);

    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "smtp,smtps");

    if (user) {
        curl_easy_setopt(curl, CURLOPT_USERNAME, user);
    }

    if (pass) {
        curl_easy_setopt(curl, CURLOPT_PASSWORD, pass);
    }

    if (options) {
        curl_easy_setopt(curl, CURLOPT_LOGIN_OPTIONS, options);
    }

    if (strcmp(scheme, "smtp") == 0) {
        /* STARTTLS whenever the server offers it; required with
         * credentials: a server that does not offer it (or someone in
         * between who strips the offer) must never get the password */
        curl_easy_setopt(curl, CURLOPT_USE_SSL,
                         (long) ((user || pass) ? CURLUSESSL_ALL
                                                : CURLUSESSL_TRY));
    }

    if (t->conf->smtp_ca_file && t->conf->smtp_ca_file[0]) {
        curl_easy_setopt(curl, CURLOPT_CAINFO, t->conf->smtp_ca_file);
    }

    curl_easy_setopt(curl, CURLOPT_MAIL_FROM, sender);
    curl_easy_setopt(curl, CURLOPT_MAIL_RCPT, rcpt);
    curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(curl, CURLOPT_READFUNCTION, ahava_email_read);
    curl_easy_setopt(curl, CURLOPT_READDATA, &rd);
    curl_easy_setopt(curl, CURLOPT_SEEKFUNCTION, ahava_email_seek);
    curl_easy_setopt(curl, CURLOPT_SEEKDATA, &rd);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT,
                     AHAVA_EMAIL_CONNECT_TIMEOUT);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, AHAVA_EMAIL_TIMEOUT);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);

    cc = curl_easy_perform(curl);

    code = 0;
    (void) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);

    /* the handle keeps its connections, not pointers into this frame */

    curl_easy_reset(curl);

    if (cc == CURLE_OK) {
        rc = AHAVA_JOB_DONE;
        goto done;
    }

    if (code) {
        snprintf(err, errlen, "smtp %s: %s (reply %ld)", url,
                 errbuf[0] ? errbuf : curl_easy_strerror(cc), code);

    } else {
        snprintf(err, errlen, "smtp %s: %s", url,
                 errbuf[0] ? errbuf : curl_easy_strerror(cc));
    }

    /*
     * a refused recipient or message is final; a refused login (535) or
     * STARTTLS is the configuration's fault, which may be mended before
     * the retry
     */
    rc = (code >= 500 && code <= 599 && cc != CURLE_LOGIN_DENIED
          && cc != CURLE_USE_SSL_FAILED)
         ? AHAVA_JOB_FATAL : AHAVA_JOB_RETRY;

done:

    curl_slist_free_all(rcpt);
    curl_free(url);
    curl_free(scheme);
    curl_free(user);
    curl_free(pass);
    curl_free(options);
    curl_url_cleanup(u);

    return rc;
}


static size_t
ahava_email_read(char *buf, size_t size, size_t nitems, void *data)
{
    size_t                 n;
    ahava_email_reader_t  *rd;

    rd = data;

    n = size * nitems;

    if (n > rd->len - rd->pos) {
        n = rd->len - rd->pos;
    }

    memcpy(buf, rd->data + rd->pos, n);
    rd->pos += n;

    return n;
}


/* lets curl send the message again, should it have to */

static int
ahava_email_seek(void *data, curl_off_t offset, int origin)
{
    ahava_email_reader_t  *rd;

    rd = data;

    if (origin != SEEK_SET || offset < 0 || (size_t) offset > rd->len) {
        return CURL_SEEKFUNC_CANTSEEK;
    }

    rd->pos = (size_t) offset;

    return CURL_SEEKFUNC_OK;
}


static void
ahava_email_buf_add(ahava_email_buf_t *b, const void *s, size_t len)
{
    char    *p;
    size_t   size;

    if (b->nomem) {
        return;
    }

    if (len > b->size - b->len) {

        size = b->size ? b->size : 4096;

        while (size - b->len < len) {
            if (size > ((size_t) -1) / 2) {
                b->nomem = 1;
                return;
            }

            size *= 2;
        }

        p = realloc(b->data, size);
        if (p == NULL) {
            b->nomem = 1;
            return;
        }

        b->data = p;
        b->size = size;
    }

    memcpy(b->data + b->len, s, len);
    b->len += len;
}


/* the C strings given, up to NULL */

static void
ahava_email_buf_cat(ahava_email_buf_t *b, ...)
{
    va_list      args;
    const char  *s;

    va_start(args, b);

    while ((s = va_arg(args, const char *)) != NULL) {
        ahava_email_buf_add(b, s, strlen(s));
    }

    va_end(args);
}
