
/*
 * Copyright (C) Ahava
 */


/*
 * pdf-export, job generate-pdf (SPEC §9): the visit report of an
 * export_jobs row, {exportJobId, userId, type: "visit_report",
 * filters: {visitId}}, as the export endpoint queues it.
 *
 * The row is claimed (PROCESSING), the visit is read in one statement
 * (its people, its booking, its history), the PDF is rendered with cairo
 * and pango into <uploads>/exports/<ms>-<24 hex>.pdf (the stored form of
 * SPEC §7, which the download check accepts; unguessable) through a
 * temporary file renamed into place, the row is completed and its owner
 * gets EXPORT_READY.  A failure that is final leaves the row FAILED with
 * the reason in "error" (sql/007_export_failure.sql).
 */


#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <cairo.h>
#include <cairo-pdf.h>
#include <pango/pangocairo.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "ahava_worker.h"
#include "ahava_worker_run.h"


#define AHAVA_PDF_TYPE          "visit_report"
#define AHAVA_PDF_FONT          "DejaVu Sans"
#define AHAVA_PDF_DECRYPT_FAIL  "[report could not be decrypted]"

/* A4 in points, 20 mm margins; the body stops above the footer */
#define AHAVA_PDF_WIDTH         595.276
#define AHAVA_PDF_HEIGHT        841.890
#define AHAVA_PDF_MARGIN        56.693
#define AHAVA_PDF_CONTENT       (AHAVA_PDF_WIDTH - 2 * AHAVA_PDF_MARGIN)
#define AHAVA_PDF_BOTTOM        (AHAVA_PDF_HEIGHT - 76.0)
#define AHAVA_PDF_FOOTER        (AHAVA_PDF_HEIGHT - 52.0)

/* where a field's value starts: after a label, after a time */
#define AHAVA_PDF_LABEL_TAB     128.0
#define AHAVA_PDF_TIME_TAB      150.0

#define AHAVA_PDF_EARTH_KM      6371.0088
#define AHAVA_PDF_RAD           (3.14159265358979323846 / 180.0)

/* UTC wall-clock columns (TIMESTAMP(3) holds UTC), as the report shows them */
#define AHAVA_PDF_TS(col)                                                    \
    "to_char(" col ", 'YYYY-MM-DD HH24:MI:SS \"UTC\"')"


/* the columns of ahava_pdf_load_sql */
enum {
    AHAVA_PDF_V_STATUS = 0,
    AHAVA_PDF_V_SCHEDULED,
    AHAVA_PDF_V_STARTED,
    AHAVA_PDF_V_ENDED,
    AHAVA_PDF_V_MINUTES,
    AHAVA_PDF_V_GPS,
    AHAVA_PDF_V_REPORT,
    AHAVA_PDF_V_REVIEW,
    AHAVA_PDF_V_RATING,
    AHAVA_PDF_V_CREATED,
    AHAVA_PDF_V_BOOKED,
    AHAVA_PDF_V_ESTIMATED,
    AHAVA_PDF_V_PATIENT,
    AHAVA_PDF_V_NURSE,
    AHAVA_PDF_V_DOCTOR,
    AHAVA_PDF_V_HISTORY,
    AHAVA_PDF_V_NCOLS
};


enum {
    AHAVA_PDF_BODY = 0,
    AHAVA_PDF_SMALL,
    AHAVA_PDF_HEADING,
    AHAVA_PDF_TITLE,
    AHAVA_PDF_NFONTS
};


typedef struct {
    const char            *export_id;
    const char            *user_id;
    const char            *visit_id;

    gchar                 *dir;             /* <uploads>/exports */
    gchar                 *name;            /* <ms>-<24 hex>.pdf */
    gchar                 *path;
    gchar                 *part;            /* written, then renamed */
    gchar                 *file_url;
    gchar                 *lost_url;        /* COMPLETED, its file not here */

    json_int_t             size;
    char                   sha256[2 * 32 + 1];
} ahava_pdf_job_t;


/* the visit as read: the row's text stays in res */
typedef struct {
    PGresult              *res;
    json_t                *history;
    char                  *report;          /* decrypted, or NULL */
    size_t                 report_len;
    size_t                 report_cap;
    unsigned               report_failed:1;

    json_t                *gps;
    size_t                 points;
    double                 km;
    double                 first[2];
    double                 last[2];
    double                 min[2];
    double                 max[2];
    const char            *first_time;
    const char            *last_time;
} ahava_pdf_visit_t;


typedef struct {
    cairo_t               *cr;
    PangoContext          *pango;
    PangoFontDescription  *fonts[AHAVA_PDF_NFONTS];
    double                 y;               /* from the page's top */
    int                    page;
    int                    pages;           /* known after the dry pass */
    unsigned               dry:1;           /* measure only */
    const char            *visit_id;
    const char            *generated;
} ahava_pdf_doc_t;


typedef struct {
    int                    fd;
    int                    err;             /* errno of a failed write */
    json_int_t             size;
    EVP_MD_CTX            *md;
} ahava_pdf_out_t;


static const char *ahava_pdf_data_id(json_t *obj, const char *key);
static ahava_job_rc_e ahava_pdf_claim(PGconn *pg, ahava_pdf_job_t *j,
    int *done, char *err, size_t errlen);
static ahava_job_rc_e ahava_pdf_load(ahava_thread_t *t, PGconn *pg,
    ahava_pdf_job_t *j, ahava_pdf_visit_t *v, char *err, size_t errlen);
static void ahava_pdf_decrypt(ahava_thread_t *t, ahava_pdf_visit_t *v,
    const char *visit_id, const char *ct, size_t len);
static void ahava_pdf_gps(ahava_pdf_visit_t *v, const char *text,
    size_t len);
static double ahava_pdf_haversine(const double a[2], const double b[2]);
static void ahava_pdf_visit_free(ahava_pdf_visit_t *v);
static ahava_job_rc_e ahava_pdf_write(ahava_thread_t *t, ahava_pdf_job_t *j,
    ahava_pdf_visit_t *v, char *err, size_t errlen);
static cairo_status_t ahava_pdf_out(void *data, const unsigned char *buf,
    unsigned int len);
static void ahava_pdf_doc_init(ahava_pdf_doc_t *d, ahava_thread_t *t,
    cairo_t *cr);
static void ahava_pdf_doc_free(ahava_pdf_doc_t *d);
static void ahava_pdf_document(ahava_pdf_doc_t *d, ahava_pdf_visit_t *v);
static void ahava_pdf_history(ahava_pdf_doc_t *d, ahava_pdf_visit_t *v);
static void ahava_pdf_gps_summary(ahava_pdf_doc_t *d, ahava_pdf_visit_t *v);
static void ahava_pdf_heading(ahava_pdf_doc_t *d, const char *text);
static void ahava_pdf_field(ahava_pdf_doc_t *d, const char *label,
    const char *value, double tab);
static void ahava_pdf_block(ahava_pdf_doc_t *d, int font, const char *text,
    size_t len, size_t bold, double tab);
static void ahava_pdf_flow(ahava_pdf_doc_t *d, PangoLayout *layout);
static void ahava_pdf_rule(ahava_pdf_doc_t *d, double y);
static void ahava_pdf_need(ahava_pdf_doc_t *d, double height);
static void ahava_pdf_new_page(ahava_pdf_doc_t *d);
static void ahava_pdf_footer(ahava_pdf_doc_t *d);
static gchar *ahava_pdf_clean(const char *s, size_t len, int oneline);
static const char *ahava_pdf_value(PGresult *res, int col);
static const char *ahava_pdf_time(const char *iso, char *buf, size_t len);
static const char *ahava_pdf_stored_name(const char *url);
static ahava_job_rc_e ahava_pdf_complete(PGconn *pg, ahava_pdf_job_t *j,
    char *err, size_t errlen);
static ahava_job_rc_e ahava_pdf_publish(ahava_thread_t *t,
    ahava_pdf_job_t *j, char **result, char *err, size_t errlen);
static void ahava_pdf_fail(ahava_thread_t *t, const char *export_id,
    const char *reason);
static void ahava_pdf_pg_error(PGconn *pg, PGresult *res, const char *what,
    char *err, size_t errlen);
static void ahava_pdf_job_free(ahava_pdf_job_t *j);


/*
 * The row as it stands, claimed if it is waiting or was being processed
 * (a retry); a COMPLETED or FAILED row is only read.  The outer SELECT
 * sees the row as it was before the UPDATE.
 */
static const char  ahava_pdf_claim_sql[] =
    "WITH upd AS (UPDATE export_jobs SET status = 'PROCESSING'"
    " WHERE id = $1 AND status IN ('PENDING', 'PROCESSING') RETURNING id)"
    " SELECT e.status, e.\"userId\", e.type, e.filters->>'visitId',"
    " e.\"fileUrl\", e.\"fileSize\", e.checksum"
    " FROM export_jobs e WHERE e.id = $1";

/*
 * The visit, its booking, its people and its history in one row.  The
 * history: the visit's creation, the audit rows written with its changes
 * (cancel, assignments; the Node app's too), and the times the status
 * change to IN_PROGRESS and to COMPLETED leave in actualStart/actualEnd.
 * Security events about the visit (denied access) are not its history.
 */
static const char  ahava_pdf_load_sql[] =
    "SELECT v.status::text, "
    AHAVA_PDF_TS("v.\"scheduledStart\"") ", "
    AHAVA_PDF_TS("v.\"actualStart\"") ", "
    AHAVA_PDF_TS("v.\"actualEnd\"") ","
    " round(extract(epoch FROM v.\"actualEnd\" - v.\"actualStart\")"
    " / 60)::bigint,"
    " CASE WHEN jsonb_typeof(v.\"gpsCoordinates\") = 'array'"
    " THEN v.\"gpsCoordinates\"::text ELSE '[]' END,"
    " v.\"nurseReport\", v.\"doctorReview\", v.\"doctorRating\", "
    AHAVA_PDF_TS("v.\"createdAt\"") ", "
    AHAVA_PDF_TS("b.\"scheduledDate\"") ", b.\"estimatedDuration\","
    " p.\"firstName\" || ' ' || p.\"lastName\","
    " n.\"firstName\" || ' ' || n.\"lastName\","
    " d.\"firstName\" || ' ' || d.\"lastName\","
    " (SELECT coalesce(json_agg(json_build_object('at', "
    AHAVA_PDF_TS("h.at") ", 'event', h.event, 'from', h.prev,"
    " 'to', h.next, 'by', h.who, 'role', h.role, 'about', h.about,"
    " 'reason', h.reason) ORDER BY h.at, h.k, h.id), '[]')::text"
    " FROM (SELECT v.\"createdAt\" AS at, 0 AS k, ''::text AS id,"
    " 'VISIT_CREATED'::text AS event, NULL::text AS prev,"
    " NULL::text AS next, NULL::text AS who, NULL::text AS role,"
    " NULL::text AS about, NULL::text AS reason"
    " UNION ALL"
    " SELECT a.\"createdAt\", 1, a.id, a.action,"
    " a.metadata->>'previousStatus',"
    " coalesce(a.metadata->>'status', CASE WHEN a.action = 'VISIT_CANCELLED'"
    " THEN 'CANCELLED' END),"
    " u.\"firstName\" || ' ' || u.\"lastName\", a.\"userRole\"::text,"
    " (SELECT s.\"firstName\" || ' ' || s.\"lastName\" FROM users s"
    " WHERE s.id = coalesce(a.metadata->>'nurseId',"
    " a.metadata->>'doctorId')),"
    " a.metadata->>'reason'"
    " FROM audit_logs a LEFT JOIN users u ON u.id = a.\"userId\""
    " WHERE a.\"resourceId\" = v.id"
    " AND lower(a.resource) IN ('visit', 'visits')"
    " AND a.action NOT IN ('ACCESS_DENIED', 'UPLOAD_REJECTED')"
    " UNION ALL"
    " SELECT v.\"actualStart\", 2, '', 'VISIT_STARTED', NULL, 'IN_PROGRESS',"
    " NULL, NULL, NULL, NULL WHERE v.\"actualStart\" IS NOT NULL"
    " UNION ALL"
    " SELECT v.\"actualEnd\", 3, '', 'VISIT_COMPLETED', 'IN_PROGRESS',"
    " 'COMPLETED', NULL, NULL, NULL, NULL WHERE v.\"actualEnd\" IS NOT NULL"
    " ) h)"
    " FROM visits v JOIN bookings b ON b.id = v.\"bookingId\""
    " LEFT JOIN users p ON p.id = b.\"patientId\""
    " LEFT JOIN users n ON n.id = v.\"nurseId\""
    " LEFT JOIN users d ON d.id = v.\"doctorId\""
    " WHERE v.id = $1";

/* the first completion wins: the file its event named stays the row's;
 * a completed row whose file is gone ($5, as the claim saw it) is mended */
static const char  ahava_pdf_complete_sql[] =
    "UPDATE export_jobs SET status = 'COMPLETED', \"fileUrl\" = $2,"
    " \"fileSize\" = $3::int, checksum = $4,"
    " \"completedAt\" = LOCALTIMESTAMP(3), error = NULL"
    " WHERE id = $1 AND (status <> 'COMPLETED'"
    " OR \"fileUrl\" IS NOT DISTINCT FROM $5)";

/* a completed export keeps its file: a late failure does not undo it */
static const char  ahava_pdf_fail_sql[] =
    "UPDATE export_jobs SET status = 'FAILED', error = $2"
    " WHERE id = $1 AND status <> 'COMPLETED'";


/* the events of the history as a reader says them */
static const char  *ahava_pdf_events[][2] = {
    { "VISIT_CREATED", "Visit created" },
    { "VISIT_STARTED", "Visit started" },
    { "VISIT_COMPLETED", "Visit completed" },
    { "VISIT_CANCELLED", "Visit cancelled" },
    { "VISIT_STATUS_UPDATED", "Status changed" },
    { "NURSE_ASSIGNED", "Nurse assigned" },
    { "DOCTOR_ASSIGNED", "Doctor assigned" },
    { NULL, NULL }
};


/* temporary files of concurrent renders of one export never collide */
static unsigned long  ahava_pdf_seq;



ahava_job_rc_e
ahava_pdf_process(ahava_thread_t *t, ahava_job_t *job, char **result,
    char *err, size_t errlen)
{
    int                 done;
    PGconn             *pg;
    json_t             *filters, *type;
    const char         *dir;
    ahava_job_rc_e      rc;
    ahava_pdf_job_t     j;
    ahava_pdf_visit_t   v;
    char                rnd[25];

    *result = NULL;

    memset(&j, 0, sizeof(ahava_pdf_job_t));
    memset(&v, 0, sizeof(ahava_pdf_visit_t));

    j.export_id = ahava_pdf_data_id(job->data, "exportJobId");

    if (j.export_id == NULL) {
        /* no row to mark: nothing names it usably */
        snprintf(err, errlen, "invalid job data: exportJobId");
        return AHAVA_JOB_FATAL;
    }

    j.user_id = ahava_pdf_data_id(job->data, "userId");
    filters = json_object_get(job->data, "filters");
    j.visit_id = ahava_pdf_data_id(filters, "visitId");
    type = json_object_get(job->data, "type");

    if (j.user_id == NULL || j.visit_id == NULL) {
        snprintf(err, errlen, "invalid job data: %s",
                 j.user_id ? "filters.visitId" : "userId");
        rc = AHAVA_JOB_FATAL;
        goto failed;
    }

    if (type && (!json_is_string(type)
                 || strcmp(json_string_value(type), AHAVA_PDF_TYPE) != 0))
    {
        snprintf(err, errlen, "unsupported export type");
        rc = AHAVA_JOB_FATAL;
        goto failed;
    }

    dir = t->conf->uploads_dir;

    if (dir == NULL || dir[0] == '\0') {
        snprintf(err, errlen, "no uploads directory configured");
        rc = AHAVA_JOB_FATAL;
        goto failed;
    }

    j.dir = g_strdup_printf("%s/exports", dir);
    if (ahava_random_hex(rnd, 12) != 0) {
        snprintf(err, errlen, "no random bytes for the file name");
        rc = AHAVA_JOB_RETRY;
        goto failed;
    }

    j.name = g_strdup_printf("%013lld-%s.pdf", (long long) ahava_now_ms(),
                             rnd);
    j.path = g_strdup_printf("%s/%s", j.dir, j.name);
    j.part = g_strdup_printf("%s.%ld-%lu.part", j.path, (long) getpid(),
                             __atomic_add_fetch(&ahava_pdf_seq, 1,
                                                __ATOMIC_RELAXED));
    j.file_url = g_strdup_printf("/uploads/exports/%s", j.name);

    pg = ahava_thread_pg(t, err, errlen);
    if (pg == NULL) {
        rc = AHAVA_JOB_RETRY;
        goto failed;
    }

    rc = ahava_pdf_claim(pg, &j, &done, err, errlen);
    if (rc != AHAVA_JOB_DONE) {
        goto failed;
    }

    if (!done) {
        rc = ahava_pdf_load(t, pg, &j, &v, err, errlen);
        if (rc != AHAVA_JOB_DONE) {
            goto failed;
        }

        rc = ahava_pdf_write(t, &j, &v, err, errlen);
        if (rc != AHAVA_JOB_DONE) {
            goto failed;
        }

        rc = ahava_pdf_complete(pg, &j, err, errlen);
        if (rc != AHAVA_JOB_DONE) {
            goto failed;
        }
    }

    rc = ahava_pdf_publish(t, &j, result, err, errlen);
    if (rc != AHAVA_JOB_DONE) {
        goto failed;
    }

    ahava_log("info", "visit report ready",
              "{s:s,s:s,s:s,s:I,s:s,s:b}", "exportJobId", j.export_id,
              "visitId", j.visit_id, "fileUrl", j.file_url,
              "fileSize", j.size, "checksum", j.sha256, "rendered", !done);

    ahava_pdf_visit_free(&v);
    ahava_pdf_job_free(&j);

    return AHAVA_JOB_DONE;

failed:

    if (rc == AHAVA_JOB_FATAL || job->last_attempt) {
        ahava_pdf_fail(t, j.export_id, err);
    }

    ahava_pdf_visit_free(&v);
    ahava_pdf_job_free(&j);

    return rc;
}


void
ahava_pdf_give_up(ahava_thread_t *t, ahava_job_t *job, const char *reason)
{
    const char  *id;

    id = ahava_pdf_data_id(job->data, "exportJobId");

    if (id == NULL) {
        ahava_log("warn", "pdf export given up without a usable exportJobId",
                  "{s:s}", "job", job->id ? job->id : "");
        return;
    }

    ahava_pdf_fail(t, id, reason ? reason : "job failed");
}


static const char *
ahava_pdf_data_id(json_t *obj, const char *key)
{
    const char  *s;

    s = json_string_value(json_object_get(obj, key));

    return ahava_valid_id(s) ? s : NULL;
}


/*
 * *done: the row is COMPLETED and its file is there, as big as recorded
 * (a retry after the row was completed but EXPORT_READY was not sent):
 * only the event is still owed.
 */
static ahava_job_rc_e
ahava_pdf_claim(PGconn *pg, ahava_pdf_job_t *j, int *done, char *err,
    size_t errlen)
{
    gchar           *path;
    const char      *status, *row_visit, *url, *size, *sum, *name;
    PGresult        *res;
    struct stat      st;
    ahava_job_rc_e   rc;
    const char      *params[1];

    *done = 0;
    params[0] = j->export_id;

    res = PQexecParams(pg, ahava_pdf_claim_sql, 1, NULL, params, NULL, NULL,
                       0);

    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ahava_pdf_pg_error(pg, res, "claiming the export job", err, errlen);
        PQclear(res);
        return AHAVA_JOB_RETRY;
    }

    if (PQntuples(res) != 1) {
        snprintf(err, errlen, "export job not found");
        PQclear(res);
        return AHAVA_JOB_FATAL;
    }

    status = PQgetvalue(res, 0, 0);
    row_visit = ahava_pdf_value(res, 3);
    rc = AHAVA_JOB_DONE;

    /* the job names its row's owner and visit, or it is not its job */

    if (strcmp(PQgetvalue(res, 0, 1), j->user_id) != 0
        || (row_visit && strcmp(row_visit, j->visit_id) != 0))
    {
        snprintf(err, errlen, "job data does not match its export job");
        rc = AHAVA_JOB_FATAL;

    } else if (strcmp(PQgetvalue(res, 0, 2), AHAVA_PDF_TYPE) != 0) {
        snprintf(err, errlen, "unsupported export type");
        rc = AHAVA_JOB_FATAL;

    } else if (strcmp(status, "COMPLETED") == 0) {
        url = ahava_pdf_value(res, 4);
        size = ahava_pdf_value(res, 5);
        sum = ahava_pdf_value(res, 6);
        name = ahava_pdf_stored_name(url);
        path = name ? g_strdup_printf("%s/%s", j->dir, name) : NULL;

        if (path && size && sum && strlen(sum) == sizeof(j->sha256) - 1
            && stat(path, &st) == 0 && S_ISREG(st.st_mode)
            && (json_int_t) st.st_size == strtoll(size, NULL, 10))
        {
            /* the file its first event named, never a new one: that URL
             * is the one its owner was told and may download */
            g_free(j->name);
            g_free(j->path);
            g_free(j->file_url);
            j->name = g_strdup(name);
            j->path = path;
            j->file_url = g_strdup(url);
            path = NULL;

            j->size = st.st_size;
            memcpy(j->sha256, sum, sizeof(j->sha256));
            *done = 1;

        } else {
            /* its file is gone (or not as recorded): made again, and the
             * row moved to the new one */
            g_free(j->lost_url);
            j->lost_url = g_strdup(url ? url : "");
        }

        g_free(path);
    }

    PQclear(res);

    return rc;
}


static ahava_job_rc_e
ahava_pdf_load(ahava_thread_t *t, PGconn *pg, ahava_pdf_job_t *j,
    ahava_pdf_visit_t *v, char *err, size_t errlen)
{
    const char    *history;
    json_error_t   jerr;
    const char    *params[1];

    params[0] = j->visit_id;

    v->res = PQexecParams(pg, ahava_pdf_load_sql, 1, NULL, params, NULL,
                          NULL, 0);

    if (PQresultStatus(v->res) != PGRES_TUPLES_OK) {
        ahava_pdf_pg_error(pg, v->res, "reading the visit", err, errlen);
        return AHAVA_JOB_RETRY;
    }

    if (PQntuples(v->res) != 1 || PQnfields(v->res) != AHAVA_PDF_V_NCOLS) {
        snprintf(err, errlen, "visit not found");
        return AHAVA_JOB_FATAL;
    }

    history = PQgetvalue(v->res, 0, AHAVA_PDF_V_HISTORY);

    v->history = json_loadb(history, PQgetlength(v->res, 0,
                            AHAVA_PDF_V_HISTORY), 0, &jerr);
    if (!json_is_array(v->history)) {
        snprintf(err, errlen, "visit history: %s", jerr.text);
        return AHAVA_JOB_RETRY;
    }

    ahava_pdf_gps(v, PQgetvalue(v->res, 0, AHAVA_PDF_V_GPS),
                  PQgetlength(v->res, 0, AHAVA_PDF_V_GPS));

    if (!PQgetisnull(v->res, 0, AHAVA_PDF_V_REPORT)) {
        ahava_pdf_decrypt(t, v, j->visit_id,
                          PQgetvalue(v->res, 0, AHAVA_PDF_V_REPORT),
                          PQgetlength(v->res, 0, AHAVA_PDF_V_REPORT));
    }

    return AHAVA_JOB_DONE;
}


static void
ahava_pdf_decrypt(ahava_thread_t *t, ahava_pdf_visit_t *v,
    const char *visit_id, const char *ct, size_t len)
{
    int      rc;
    size_t   cap, n;
    u_char  *out;

    cap = ngx_ahava_crypto_decrypted_max_len(len) + 1;

    out = malloc(cap);
    if (out == NULL) {
        v->report_failed = 1;
        ahava_log("warn", "nurse report not decrypted: no memory",
                  "{s:s}", "visitId", visit_id);
        return;
    }

    /* the core's cipher contexts are per thread in this daemon */
    rc = ngx_ahava_crypto_decrypt(t->conf->key_list, t->conf->nkeys,
                                  (const u_char *) ct, len, out, &n);

    if (rc != 0) {
        /* never shown as garbage; logged without the ciphertext */
        free(out);
        v->report_failed = 1;
        ahava_log("warn", "nurse report could not be decrypted",
                  "{s:s,s:s}", "visitId", visit_id,
                  "error", "DECRYPTION_FAILED");
        return;
    }

    out[n] = '\0';
    v->report = (char *) out;
    v->report_len = n;
    v->report_cap = cap;
}


/*
 * [{lat, lng, timestamp}, ...] oldest first: how many points, where and
 * when the first and the last, the path's length, its bounding box.
 * Points without valid coordinates are skipped.
 */
static void
ahava_pdf_gps(ahava_pdf_visit_t *v, const char *text, size_t len)
{
    size_t   i;
    json_t  *p, *lat, *lng;
    double   pt[2];

    v->gps = json_loadb(text, len, 0, NULL);

    if (!json_is_array(v->gps)) {
        return;
    }

    json_array_foreach(v->gps, i, p) {
        lat = json_object_get(p, "lat");
        lng = json_object_get(p, "lng");

        if (!json_is_number(lat) || !json_is_number(lng)) {
            continue;
        }

        pt[0] = json_number_value(lat);
        pt[1] = json_number_value(lng);

        if (!(pt[0] >= -90 && pt[0] <= 90 && pt[1] >= -180 && pt[1] <= 180)) {
            continue;
        }

        if (v->points == 0) {
            v->first[0] = v->min[0] = v->max[0] = pt[0];
            v->first[1] = v->min[1] = v->max[1] = pt[1];
            v->first_time = json_string_value(json_object_get(p,
                                                              "timestamp"));

        } else {
            v->km += ahava_pdf_haversine(v->last, pt);
            v->min[0] = fmin(v->min[0], pt[0]);
            v->min[1] = fmin(v->min[1], pt[1]);
            v->max[0] = fmax(v->max[0], pt[0]);
            v->max[1] = fmax(v->max[1], pt[1]);
        }

        v->last[0] = pt[0];
        v->last[1] = pt[1];
        v->last_time = json_string_value(json_object_get(p, "timestamp"));
        v->points++;
    }
}


/* great-circle distance in km between {lat, lng} points in degrees */
static double
ahava_pdf_haversine(const double a[2], const double b[2])
{
    double  dlat, dlng, h;

    dlat = (b[0] - a[0]) * AHAVA_PDF_RAD;
    dlng = (b[1] - a[1]) * AHAVA_PDF_RAD;

    h = sin(dlat / 2) * sin(dlat / 2)
        + cos(a[0] * AHAVA_PDF_RAD) * cos(b[0] * AHAVA_PDF_RAD)
          * sin(dlng / 2) * sin(dlng / 2);

    return 2 * AHAVA_PDF_EARTH_KM * asin(fmin(1.0, sqrt(h)));
}


static void
ahava_pdf_visit_free(ahava_pdf_visit_t *v)
{
    if (v->report) {
        /* the plaintext of a health record does not linger in the heap */
        OPENSSL_cleanse(v->report, v->report_cap);
        free(v->report);
    }

    json_decref(v->history);
    json_decref(v->gps);
    PQclear(v->res);
}


/*
 * The PDF, streamed into the temporary file while hashed; then fsync,
 * rename into place and fsync the directory, so that whoever downloads it
 * sees the whole file or the one before.
 */
static ahava_job_rc_e
ahava_pdf_write(ahava_thread_t *t, ahava_pdf_job_t *j, ahava_pdf_visit_t *v,
    char *err, size_t errlen)
{
    int                fd;
    char               now[32];
    u_char             md[EVP_MAX_MD_SIZE];
    cairo_t           *cr;
    unsigned int       i, mdlen;
    cairo_status_t     st;
    ahava_pdf_doc_t    doc;
    ahava_pdf_out_t    out;
    cairo_surface_t   *surface;

    if (ahava_mkdirs(j->dir) != 0) {
        snprintf(err, errlen, "mkdir \"%s\": %s", j->dir, strerror(errno));
        return AHAVA_JOB_RETRY;
    }

    out.err = 0;
    out.size = 0;
    out.md = EVP_MD_CTX_new();

    if (out.md == NULL || EVP_DigestInit_ex(out.md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(out.md);
        snprintf(err, errlen, "sha256 init failed");
        return AHAVA_JOB_RETRY;
    }

    out.fd = open(j->part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out.fd == -1) {
        snprintf(err, errlen, "open \"%s\": %s", j->part, strerror(errno));
        EVP_MD_CTX_free(out.md);
        return AHAVA_JOB_RETRY;
    }

    surface = cairo_pdf_surface_create_for_stream(ahava_pdf_out, &out,
                                                  AHAVA_PDF_WIDTH,
                                                  AHAVA_PDF_HEIGHT);
    cairo_pdf_surface_set_metadata(surface, CAIRO_PDF_METADATA_TITLE,
                                   "Visit report");
    cairo_pdf_surface_set_metadata(surface, CAIRO_PDF_METADATA_CREATOR,
                                   "ahava-worker");
    cr = cairo_create(surface);

    ahava_pdf_doc_init(&doc, t, cr);
    doc.visit_id = j->visit_id;
    doc.generated = ahava_iso_now(now, sizeof(now));

    /* "page n of N": a dry pass counts the pages, the same layout draws */

    doc.dry = 1;
    ahava_pdf_document(&doc, v);

    doc.pages = doc.page;
    doc.page = 1;
    doc.dry = 0;
    ahava_pdf_document(&doc, v);

    ahava_pdf_doc_free(&doc);

    st = cairo_status(cr);
    cairo_destroy(cr);

    cairo_surface_finish(surface);
    if (st == CAIRO_STATUS_SUCCESS) {
        st = cairo_surface_status(surface);
    }
    cairo_surface_destroy(surface);

    fd = out.fd;

    if (out.err) {
        snprintf(err, errlen, "write \"%s\": %s", j->part, strerror(out.err));
        goto failed;
    }

    if (st != CAIRO_STATUS_SUCCESS) {
        snprintf(err, errlen, "rendering the PDF: %s",
                 cairo_status_to_string(st));
        goto failed;
    }

    if (EVP_DigestFinal_ex(out.md, md, &mdlen) != 1 || mdlen != 32) {
        snprintf(err, errlen, "sha256 failed");
        goto failed;
    }

    for (i = 0; i < mdlen; i++) {
        snprintf(&j->sha256[2 * i], 3, "%02x", md[i]);
    }

    j->size = out.size;

    if (fsync(fd) != 0) {
        snprintf(err, errlen, "fsync \"%s\": %s", j->part, strerror(errno));
        goto failed;
    }

    if (close(fd) != 0) {
        fd = -1;
        snprintf(err, errlen, "close \"%s\": %s", j->part, strerror(errno));
        goto failed;
    }

    fd = -1;

    if (rename(j->part, j->path) != 0) {
        snprintf(err, errlen, "rename \"%s\": %s", j->part, strerror(errno));
        goto failed;
    }

    /* the rename itself survives a crash */

    fd = open(j->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd != -1) {
        (void) fsync(fd);
        (void) close(fd);
    }

    EVP_MD_CTX_free(out.md);

    return AHAVA_JOB_DONE;

failed:

    if (fd != -1) {
        (void) close(fd);
    }

    (void) unlink(j->part);
    EVP_MD_CTX_free(out.md);

    return AHAVA_JOB_RETRY;
}


/* cairo's output: to the file and the hash; the first error sticks */
static cairo_status_t
ahava_pdf_out(void *data, const unsigned char *buf, unsigned int len)
{
    ssize_t           n;
    ahava_pdf_out_t  *out;

    out = data;

    if (out->err) {
        return CAIRO_STATUS_WRITE_ERROR;
    }

    if (EVP_DigestUpdate(out->md, buf, len) != 1) {
        out->err = EIO;
        return CAIRO_STATUS_WRITE_ERROR;
    }

    out->size += len;

    while (len) {
        n = write(out->fd, buf, len);

        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }

            out->err = errno;
            return CAIRO_STATUS_WRITE_ERROR;
        }

        buf += n;
        len -= n;
    }

    return CAIRO_STATUS_SUCCESS;
}


static void
ahava_pdf_doc_init(ahava_pdf_doc_t *d, ahava_thread_t *t, cairo_t *cr)
{
    int                    i;
    const char            *family;
    cairo_font_options_t  *fo;
    static const struct {
        int                size;
        PangoWeight        weight;
    } fonts[AHAVA_PDF_NFONTS] = {
        { 10, PANGO_WEIGHT_NORMAL },            /* AHAVA_PDF_BODY */
        { 8, PANGO_WEIGHT_NORMAL },             /* AHAVA_PDF_SMALL */
        { 13, PANGO_WEIGHT_BOLD },              /* AHAVA_PDF_HEADING */
        { 20, PANGO_WEIGHT_BOLD }               /* AHAVA_PDF_TITLE */
    };

    memset(d, 0, sizeof(ahava_pdf_doc_t));

    d->cr = cr;
    d->page = 1;
    d->y = AHAVA_PDF_MARGIN;

    family = (t->conf->font && t->conf->font[0]) ? t->conf->font
                                                 : AHAVA_PDF_FONT;

    /* 72 dpi: a pango point is a PDF point; no hinting, so both passes
     * and every machine measure alike */

    d->pango = pango_cairo_create_context(cr);
    pango_cairo_context_set_resolution(d->pango, 72.0);

    fo = cairo_font_options_create();
    cairo_font_options_set_hint_style(fo, CAIRO_HINT_STYLE_NONE);
    cairo_font_options_set_hint_metrics(fo, CAIRO_HINT_METRICS_OFF);
    pango_cairo_context_set_font_options(d->pango, fo);
    cairo_font_options_destroy(fo);

    for (i = 0; i < AHAVA_PDF_NFONTS; i++) {
        d->fonts[i] = pango_font_description_new();
        pango_font_description_set_family(d->fonts[i], family);
        pango_font_description_set_size(d->fonts[i],
                                        fonts[i].size * PANGO_SCALE);
        pango_font_description_set_weight(d->fonts[i], fonts[i].weight);
    }
}


static void
ahava_pdf_doc_free(ahava_pdf_doc_t *d)
{
    int  i;

    for (i = 0; i < AHAVA_PDF_NFONTS; i++) {
        pango_font_description_free(d->fonts[i]);
    }

    g_object_unref(d->pango);
}


/* the report, top to bottom; run twice (measure, draw) */
static void
ahava_pdf_document(ahava_pdf_doc_t *d, ahava_pdf_visit_t *v)
{
    int          rating, i;
    char         buf[64], now[32];
    GString     *s;
    const char  *p;
    PGresult    *res;

    res = v->res;
    d->y = AHAVA_PDF_MARGIN;

    ahava_pdf_block(d, AHAVA_PDF_TITLE, "Visit report", (size_t) -1, 0, 0);
    d->y += 6;

    ahava_pdf_field(d, "Visit", d->visit_id, AHAVA_PDF_LABEL_TAB);
    ahava_pdf_field(d, "Created", ahava_pdf_value(res, AHAVA_PDF_V_CREATED),
                    AHAVA_PDF_LABEL_TAB);
    ahava_pdf_field(d, "Generated",
                    ahava_pdf_time(d->generated, now, sizeof(now)),
                    AHAVA_PDF_LABEL_TAB);

    d->y += 6;
    ahava_pdf_rule(d, d->y);

    ahava_pdf_heading(d, "Participants");

    p = ahava_pdf_value(res, AHAVA_PDF_V_PATIENT);
    ahava_pdf_field(d, "Patient", p ? p : "unknown", AHAVA_PDF_LABEL_TAB);
    p = ahava_pdf_value(res, AHAVA_PDF_V_NURSE);
    ahava_pdf_field(d, "Nurse", p ? p : "unknown", AHAVA_PDF_LABEL_TAB);
    p = ahava_pdf_value(res, AHAVA_PDF_V_DOCTOR);
    ahava_pdf_field(d, "Doctor", p ? p : "not assigned", AHAVA_PDF_LABEL_TAB);

    ahava_pdf_heading(d, "Times");

    ahava_pdf_field(d, "Booked for", ahava_pdf_value(res, AHAVA_PDF_V_BOOKED),
                    AHAVA_PDF_LABEL_TAB);

    p = ahava_pdf_value(res, AHAVA_PDF_V_ESTIMATED);
    if (p) {
        snprintf(buf, sizeof(buf), "%s min", p);
        ahava_pdf_field(d, "Estimated duration", buf, AHAVA_PDF_LABEL_TAB);
    }

    ahava_pdf_field(d, "Scheduled start",
                    ahava_pdf_value(res, AHAVA_PDF_V_SCHEDULED),
                    AHAVA_PDF_LABEL_TAB);

    p = ahava_pdf_value(res, AHAVA_PDF_V_STARTED);
    ahava_pdf_field(d, "Actual start", p ? p : "not started",
                    AHAVA_PDF_LABEL_TAB);

    p = ahava_pdf_value(res, AHAVA_PDF_V_ENDED);
    ahava_pdf_field(d, "Actual end", p ? p : "not ended",
                    AHAVA_PDF_LABEL_TAB);

    p = ahava_pdf_value(res, AHAVA_PDF_V_MINUTES);
    if (p) {
        snprintf(buf, sizeof(buf), "%s min", p);
        ahava_pdf_field(d, "Actual duration", buf, AHAVA_PDF_LABEL_TAB);
    }

    ahava_pdf_heading(d, "Status");
    ahava_pdf_field(d, "Current status",
                    ahava_pdf_value(res, AHAVA_PDF_V_STATUS),
                    AHAVA_PDF_LABEL_TAB);
    d->y += 4;
    ahava_pdf_history(d, v);

    ahava_pdf_heading(d, "GPS");
    ahava_pdf_gps_summary(d, v);

    ahava_pdf_heading(d, "Nurse report");

    if (v->report_failed) {
        ahava_pdf_block(d, AHAVA_PDF_BODY, AHAVA_PDF_DECRYPT_FAIL,
                        (size_t) -1, 0, 0);

    } else if (v->report) {
        ahava_pdf_block(d, AHAVA_PDF_BODY, v->report, v->report_len, 0, 0);

    } else {
        ahava_pdf_block(d, AHAVA_PDF_BODY, "No nurse report.", (size_t) -1,
                        0, 0);
    }

    ahava_pdf_heading(d, "Doctor review");

    p = ahava_pdf_value(res, AHAVA_PDF_V_RATING);

    if (p == NULL) {
        ahava_pdf_field(d, "Rating", "not rated", AHAVA_PDF_LABEL_TAB);

    } else {
        rating = atoi(p);
        s = g_string_new(NULL);

        if (rating >= 1 && rating <= 5) {
            for (i = 1; i <= 5; i++) {
                g_string_append(s, i <= rating ? "\xe2\x98\x85"     /* ★ */
                                               : "\xe2\x98\x86");   /* ☆ */
            }

            g_string_append_c(s, ' ');
        }

        g_string_append_printf(s, "%s / 5", p);
        ahava_pdf_field(d, "Rating", s->str, AHAVA_PDF_LABEL_TAB);
        g_string_free(s, TRUE);
    }

    d->y += 4;

    p = ahava_pdf_value(res, AHAVA_PDF_V_REVIEW);
    ahava_pdf_block(d, AHAVA_PDF_BODY, p ? p : "No review.", (size_t) -1,
                    0, 0);

    ahava_pdf_footer(d);

    if (!d->dry) {
        cairo_show_page(d->cr);
    }
}


static void
ahava_pdf_history(ahava_pdf_doc_t *d, ahava_pdf_visit_t *v)
{
    size_t       i, k;
    json_t      *h;
    GString     *s;
    const char  *at, *event, *from, *to, *by, *role, *about, *reason;

    if (json_array_size(v->history) == 0) {
        ahava_pdf_block(d, AHAVA_PDF_BODY, "No recorded history.",
                        (size_t) -1, 0, 0);
        return;
    }

    s = g_string_new(NULL);

    json_array_foreach(v->history, i, h) {
        at = json_string_value(json_object_get(h, "at"));
        event = json_string_value(json_object_get(h, "event"));
        from = json_string_value(json_object_get(h, "from"));
        to = json_string_value(json_object_get(h, "to"));
        by = json_string_value(json_object_get(h, "by"));
        role = json_string_value(json_object_get(h, "role"));
        about = json_string_value(json_object_get(h, "about"));
        reason = json_string_value(json_object_get(h, "reason"));

        for (k = 0; event && ahava_pdf_events[k][0]; k++) {
            if (strcmp(event, ahava_pdf_events[k][0]) == 0) {
                event = ahava_pdf_events[k][1];
                break;
            }
        }

        g_string_assign(s, event ? event : "Event");

        if (from && to) {
            g_string_append_printf(s, " (%s \xe2\x86\x92 %s)", from, to);

        } else if (to) {
            g_string_append_printf(s, " (\xe2\x86\x92 %s)", to);
        }

        if (about) {
            g_string_append_printf(s, ": %s", about);
        }

        if (by) {
            g_string_append_printf(s, ", by %s", by);

            if (role) {
                g_string_append_printf(s, " (%s)", role);
            }
        }

        if (reason) {
            g_string_append_printf(s, ". Reason: %s", reason);
        }

        ahava_pdf_field(d, at ? at : "", s->str, AHAVA_PDF_TIME_TAB);
    }

    g_string_free(s, TRUE);
}


static void
ahava_pdf_gps_summary(ahava_pdf_doc_t *d, ahava_pdf_visit_t *v)
{
    char  buf[160], at[32];

    if (v->points == 0) {
        ahava_pdf_block(d, AHAVA_PDF_BODY, "No GPS points recorded.",
                        (size_t) -1, 0, 0);
        return;
    }

    snprintf(buf, sizeof(buf), "%zu", v->points);
    ahava_pdf_field(d, "Points", buf, AHAVA_PDF_LABEL_TAB);

    snprintf(buf, sizeof(buf), "%.5f, %.5f  %s", v->first[0], v->first[1],
             ahava_pdf_time(v->first_time, at, sizeof(at)));
    ahava_pdf_field(d, "First point", buf, AHAVA_PDF_LABEL_TAB);

    snprintf(buf, sizeof(buf), "%.5f, %.5f  %s", v->last[0], v->last[1],
             ahava_pdf_time(v->last_time, at, sizeof(at)));
    ahava_pdf_field(d, "Last point", buf, AHAVA_PDF_LABEL_TAB);

    snprintf(buf, sizeof(buf), "%.2f km", v->km);
    ahava_pdf_field(d, "Distance", buf, AHAVA_PDF_LABEL_TAB);

    snprintf(buf, sizeof(buf), "lat %.5f to %.5f, lng %.5f to %.5f",
             v->min[0], v->max[0], v->min[1], v->max[1]);
    ahava_pdf_field(d, "Bounding box", buf, AHAVA_PDF_LABEL_TAB);
}


static void
ahava_pdf_heading(ahava_pdf_doc_t *d, const char *text)
{
    /* a heading is never the last thing on a page */
    ahava_pdf_need(d, 14 + 18 + 3 * 12);

    d->y += 14;
    ahava_pdf_block(d, AHAVA_PDF_HEADING, text, (size_t) -1, 0, 0);
    ahava_pdf_rule(d, d->y + 1);
    d->y += 5;
}


/* "label<tab>value": the label bold, the value wrapped in its column */
static void
ahava_pdf_field(ahava_pdf_doc_t *d, const char *label, const char *value,
    double tab)
{
    gchar  *clean, *text;

    if (value == NULL) {
        value = "\xe2\x80\x94";                       /* an em dash */
    }

    clean = ahava_pdf_clean(value, strlen(value), 1);
    text = g_strconcat(label, "\t", clean, NULL);

    ahava_pdf_block(d, AHAVA_PDF_BODY, text, (size_t) -1, strlen(label),
                    tab);

    g_free(text);
    g_free(clean);
}


/*
 * A paragraph (or several) wrapped to the width and flowed across pages.
 * len (size_t) -1: up to the NUL; bold: bytes of it in bold; tab > 0: a
 * field, "label<tab>value" with the value's column at tab.
 */
static void
ahava_pdf_block(ahava_pdf_doc_t *d, int font, const char *text, size_t len,
    size_t bold, double tab)
{
    gchar           *clean;
    PangoLayout     *layout;
    PangoTabArray   *tabs;
    PangoAttrList   *attrs;
    PangoAttribute  *attr;

    if (len == (size_t) -1) {
        len = strlen(text);
    }

    clean = ahava_pdf_clean(text, len, 0);

    layout = pango_layout_new(d->pango);
    pango_layout_set_font_description(layout, d->fonts[font]);
    pango_layout_set_width(layout, (int) (AHAVA_PDF_CONTENT * PANGO_SCALE));
    pango_layout_set_wrap(layout, PANGO_WRAP_WORD_CHAR);

    if (tab > 0) {
        /* wrapped lines of the value hang under its first */
        tabs = pango_tab_array_new_with_positions(1, TRUE, PANGO_TAB_LEFT,
                                                  (int) tab);
        pango_layout_set_tabs(layout, tabs);
        pango_tab_array_free(tabs);
        pango_layout_set_indent(layout, (int) (-tab * PANGO_SCALE));
    }

    /* a word cut at the margin gets no hyphen the nurse did not write */
    attrs = pango_attr_list_new();
    pango_attr_list_insert(attrs, pango_attr_insert_hyphens_new(FALSE));

    if (bold) {
        attr = pango_attr_weight_new(PANGO_WEIGHT_BOLD);
        attr->start_index = 0;
        attr->end_index = bold;
        pango_attr_list_insert(attrs, attr);
    }

    pango_layout_set_attributes(layout, attrs);
    pango_attr_list_unref(attrs);

    pango_layout_set_text(layout, clean, -1);

    ahava_pdf_flow(d, layout);

    g_object_unref(layout);
    g_free(clean);
}


/* line by line: a line that does not fit starts the next page */
static void
ahava_pdf_flow(ahava_pdf_doc_t *d, PangoLayout *layout)
{
    int               y0, y1, baseline;
    double            h;
    PangoRectangle    in_layout, in_line;
    PangoLayoutIter  *it;
    PangoLayoutLine  *line;

    it = pango_layout_get_iter(layout);

    do {
        line = pango_layout_iter_get_line_readonly(it);
        pango_layout_iter_get_line_yrange(it, &y0, &y1);
        baseline = pango_layout_iter_get_baseline(it);

        h = (double) (y1 - y0) / PANGO_SCALE;

        if (d->y + h > AHAVA_PDF_BOTTOM && d->y > AHAVA_PDF_MARGIN) {
            ahava_pdf_new_page(d);
        }

        if (!d->dry) {
            /* the line's origin: its place in the layout (indent, tab)
             * less where its ink starts from that origin */
            pango_layout_iter_get_line_extents(it, NULL, &in_layout);
            pango_layout_line_get_extents(line, NULL, &in_line);

            cairo_move_to(d->cr,
                          AHAVA_PDF_MARGIN
                          + (double) (in_layout.x - in_line.x) / PANGO_SCALE,
                          d->y + (double) (baseline - y0) / PANGO_SCALE);
            pango_cairo_show_layout_line(d->cr, line);
        }

        d->y += h;

    } while (pango_layout_iter_next_line(it));

    pango_layout_iter_free(it);
}


static void
ahava_pdf_rule(ahava_pdf_doc_t *d, double y)
{
    if (d->dry) {
        return;
    }

    cairo_save(d->cr);
    cairo_set_source_rgb(d->cr, 0.6, 0.6, 0.6);
    cairo_set_line_width(d->cr, 0.5);
    cairo_move_to(d->cr, AHAVA_PDF_MARGIN, y);
    cairo_line_to(d->cr, AHAVA_PDF_WIDTH - AHAVA_PDF_MARGIN, y);
    cairo_stroke(d->cr);
    cairo_restore(d->cr);
}


static void
ahava_pdf_need(ahava_pdf_doc_t *d, double height)
{
    if (d->y + height > AHAVA_PDF_BOTTOM && d->y > AHAVA_PDF_MARGIN) {
        ahava_pdf_new_page(d);
    }
}


static void
ahava_pdf_new_page(ahava_pdf_doc_t *d)
{
    ahava_pdf_footer(d);

    if (!d->dry) {
        cairo_show_page(d->cr);
    }

    d->page++;
    d->y = AHAVA_PDF_MARGIN;
}


static void
ahava_pdf_footer(ahava_pdf_doc_t *d)
{
    int           w;
    char          now[32];
    gchar        *text;
    PangoLayout  *layout;

    if (d->dry) {
        return;
    }

    ahava_pdf_rule(d, AHAVA_PDF_FOOTER - 6);

    layout = pango_layout_new(d->pango);
    pango_layout_set_font_description(layout, d->fonts[AHAVA_PDF_SMALL]);

    text = g_strdup_printf("Visit report %s \xc2\xb7 generated %s",
                           d->visit_id,
                           ahava_pdf_time(d->generated, now, sizeof(now)));
    pango_layout_set_text(layout, text, -1);
    g_free(text);

    cairo_move_to(d->cr, AHAVA_PDF_MARGIN, AHAVA_PDF_FOOTER);
    pango_cairo_show_layout(d->cr, layout);

    text = g_strdup_printf("Page %d of %d", d->page, d->pages);
    pango_layout_set_text(layout, text, -1);
    g_free(text);

    pango_layout_get_size(layout, &w, NULL);
    cairo_move_to(d->cr,
                  AHAVA_PDF_WIDTH - AHAVA_PDF_MARGIN
                  - (double) w / PANGO_SCALE,
                  AHAVA_PDF_FOOTER);
    pango_cairo_show_layout(d->cr, layout);

    g_object_unref(layout);
}


/*
 * Text pango can take: valid UTF-8 (a bad sequence becomes U+FFFD), no
 * NUL (a report may hold U+0000), no control characters but newlines
 * and tabs; oneline: newlines and tabs too, a field is one line.
 */
static gchar *
ahava_pdf_clean(const char *s, size_t len, int oneline)
{
    size_t   i;
    gchar   *copy, *valid;
    u_char   c;

    copy = g_malloc(len + 1);

    for (i = 0; i < len; i++) {
        c = (u_char) s[i];

        if (c < 0x20 || c == 0x7f) {
            if (oneline || (c != '\n' && c != '\t')) {
                c = ' ';
            }
        }

        copy[i] = (gchar) c;
    }

    copy[len] = '\0';

    if (g_utf8_validate(copy, len, NULL)) {
        return copy;
    }

    valid = g_utf8_make_valid(copy, len);
    g_free(copy);

    return valid;
}


static const char *
ahava_pdf_value(PGresult *res, int col)
{
    return PQgetisnull(res, 0, col) ? NULL : PQgetvalue(res, 0, col);
}


/*
 * An ISO 8601 UTC time ("2025-03-10T08:40:00.000Z", the API's and the GPS
 * history's) as the report shows the database's: "2025-03-10 08:40:00
 * UTC"; anything else as it is.
 */
static const char *
ahava_pdf_time(const char *iso, char *buf, size_t len)
{
    size_t  n;

    if (iso == NULL) {
        return "";
    }

    n = strlen(iso);

    if (n < 20 || n > 30 || iso[4] != '-' || iso[10] != 'T'
        || iso[n - 1] != 'Z')
    {
        return iso;
    }

    snprintf(buf, len, "%.10s %.8s UTC", iso, iso + 11);

    return buf;
}


static ahava_job_rc_e
ahava_pdf_complete(PGconn *pg, ahava_pdf_job_t *j, char *err, size_t errlen)
{
    int             done;
    char            size[32];
    PGresult       *res;
    ahava_job_rc_e  rc;
    const char     *params[5];

    snprintf(size, sizeof(size), "%" JSON_INTEGER_FORMAT, j->size);

    params[0] = j->export_id;
    params[1] = j->file_url;
    params[2] = size;
    params[3] = j->sha256;
    params[4] = j->lost_url;

    res = PQexecParams(pg, ahava_pdf_complete_sql, 5, NULL, params, NULL,
                       NULL, 0);

    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        ahava_pdf_pg_error(pg, res, "completing the export job", err, errlen);
        PQclear(res);
        return AHAVA_JOB_RETRY;
    }

    if (strcmp(PQcmdTuples(res), "1") != 0) {
        /* deleted meanwhile, or completed by another run of the job (a
         * lost lock): this file is nobody's; that run's, if it is here,
         * is the one to announce */
        PQclear(res);
        (void) unlink(j->path);

        rc = ahava_pdf_claim(pg, j, &done, err, errlen);

        if (rc == AHAVA_JOB_RETRY || (rc == AHAVA_JOB_DONE && done)) {
            return rc;
        }

        snprintf(err, errlen, "export job not found, or completed by "
                 "another run without its file here");
        return AHAVA_JOB_FATAL;
    }

    PQclear(res);

    return AHAVA_JOB_DONE;
}


/* "/uploads/exports/<name>" as this daemon writes it: the name, or NULL */

static const char *
ahava_pdf_stored_name(const char *url)
{
    size_t       len;
    const char  *name;

    if (url == NULL
        || strncmp(url, "/uploads/exports/", sizeof("/uploads/exports/") - 1)
           != 0)
    {
        return NULL;
    }

    name = url + sizeof("/uploads/exports/") - 1;
    len = strlen(name);

    if (len <= sizeof(".pdf") - 1 || name[0] == '.' || strchr(name, '/')
        || strcmp(name + len - (sizeof(".pdf") - 1), ".pdf") != 0)
    {
        return NULL;
    }

    return name;
}


static ahava_job_rc_e
ahava_pdf_publish(ahava_thread_t *t, ahava_pdf_job_t *j, char **result,
    char *err, size_t errlen)
{
    int      rc;
    json_t  *data;

    data = json_pack("{s:s,s:s,s:I,s:s}", "exportJobId", j->export_id,
                     "fileUrl", j->file_url, "fileSize", j->size,
                     "checksum", j->sha256);
    if (data == NULL) {
        snprintf(err, errlen, "no memory for EXPORT_READY");
        return AHAVA_JOB_RETRY;
    }

    rc = ahava_thread_publish(t, j->user_id, "EXPORT_READY", data, err,
                              errlen);
    if (rc != 0) {
        json_decref(data);
        return AHAVA_JOB_RETRY;
    }

    /* the job's return value: the event's data without its id */
    json_object_del(data, "exportJobId");
    *result = json_dumps(data, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(data);

    if (*result == NULL) {
        snprintf(err, errlen, "no memory for the result");
        return AHAVA_JOB_RETRY;
    }

    return AHAVA_JOB_DONE;
}


/* the row says FAILED and why; best effort, the job fails regardless */
static void
ahava_pdf_fail(ahava_thread_t *t, const char *export_id, const char *reason)
{
    char          e[AHAVA_ERR_LEN];
    PGconn       *pg;
    PGresult     *res;
    const char   *params[2];

    pg = ahava_thread_pg(t, e, sizeof(e));
    if (pg == NULL) {
        ahava_log("error", "export job not marked failed", "{s:s,s:s,s:s}",
                  "exportJobId", export_id, "reason", reason, "error", e);
        return;
    }

    params[0] = export_id;
    params[1] = reason;

    res = PQexecParams(pg, ahava_pdf_fail_sql, 2, NULL, params, NULL, NULL,
                       0);

    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        ahava_pdf_pg_error(pg, res, "marking the export job failed", e,
                           sizeof(e));
        ahava_log("error", "export job not marked failed", "{s:s,s:s,s:s}",
                  "exportJobId", export_id, "reason", reason, "error", e);

    } else {
        ahava_log("info", "export job failed", "{s:s,s:s,s:b}",
                  "exportJobId", export_id, "reason", reason,
                  "marked", strcmp(PQcmdTuples(res), "1") == 0);
    }

    PQclear(res);
}


static void
ahava_pdf_pg_error(PGconn *pg, PGresult *res, const char *what, char *err,
    size_t errlen)
{
    size_t       n;
    const char  *msg;

    msg = res ? PQresultErrorMessage(res) : "";
    if (msg[0] == '\0') {
        msg = PQerrorMessage(pg);
    }

    snprintf(err, errlen, "postgres, %s: %s", what,
             msg[0] ? msg : "no result");

    /* libpq's messages end with a newline */
    n = strlen(err);
    while (n && (err[n - 1] == '\n' || err[n - 1] == ' ')) {
        err[--n] = '\0';
    }
}


static void
ahava_pdf_job_free(ahava_pdf_job_t *j)
{
    g_free(j->dir);
    g_free(j->name);
    g_free(j->path);
    g_free(j->part);
    g_free(j->file_url);
    g_free(j->lost_url);
}
