
/*
 * Every statement of /api/visits, in one place.  They are declared once
 * and prepared on every PostgreSQL connection as it opens; requests only
 * bind parameters.
 *
 * Conventions: $1 is the visit's id (the caller's id for the list), $2 the
 * caller's id, $3 the caller's role (text) or whether the caller is an
 * admin (bool).  PostgreSQL builds the JSON of the rows; nginx only adds
 * what it must decrypt.  A statement's cost follows the page it returns,
 * not the number of visits the caller may see: only the exact total counts
 * them, on an index (bench/README.md has the plans).
 */


#include "ngx_ahava_visits.h"


/* the visit v (which carries its booking's patientId) as JSON fields */
#define NGX_AHAVA_VISIT_FIELDS                                               \
    "'id', v.id, 'bookingId', v.\"bookingId\", 'status', v.status,"          \
    " 'patientId', v.\"patientId\", 'nurseId', v.\"nurseId\","               \
    " 'doctorId', v.\"doctorId\","                                           \
    " 'scheduledStart', " NGX_AHAVA_TS("v.\"scheduledStart\"") ","           \
    " 'actualStart', " NGX_AHAVA_TS("v.\"actualStart\"") ","                 \
    " 'actualEnd', " NGX_AHAVA_TS("v.\"actualEnd\"") ","                     \
    " 'doctorReview', v.\"doctorReview\","                                   \
    " 'doctorRating', v.\"doctorRating\","                                   \
    " 'createdAt', " NGX_AHAVA_TS("v.\"createdAt\"") ","                     \
    " 'updatedAt', " NGX_AHAVA_TS("v.\"updatedAt\"") ","                     \
    " 'patient', " NGX_AHAVA_PERSON("v.\"patientId\"") ","                   \
    " 'nurse', " NGX_AHAVA_PERSON("v.\"nurseId\"") ","                       \
    " 'doctor', " NGX_AHAVA_PERSON("v.\"doctorId\"")

/*
 * The visit v (with its booking's patientId) and its people p, n, d as
 * plain columns, in
 * the order of ngx_ahava_visit_cols (nginx writes the JSON: PostgreSQL's
 * own JSON building costs it more than the query itself)
 */
#define NGX_AHAVA_VISIT_COLUMNS                                              \
    "v.id, v.\"bookingId\", v.status, v.\"patientId\", v.\"nurseId\","        \
    " v.\"doctorId\", v.\"scheduledStart\", v.\"actualStart\","               \
    " v.\"actualEnd\", v.\"doctorReview\", v.\"doctorRating\","               \
    " v.\"createdAt\", v.\"updatedAt\","                                      \
    " p.id, p.\"firstName\", p.\"lastName\", n.id, n.\"firstName\","           \
    " n.\"lastName\", d.id, d.\"firstName\", d.\"lastName\""

/*
 * A person by key for each visit of the page.  The OFFSET 0 keeps each
 * lookup a nested loop: in the generic plan the page's LIMIT $3 is
 * estimated at a tenth of the table, and plain joins then scan users
 * (an admin's page cost 2 ms instead of 0.6).  COLLATE "C" reads the
 * index of sql/009 (id in byte order, with the names): no heap visit, and
 * each comparison a memcmp rather than the database collation's strcoll
 * (ids are ASCII: equality is the same); +12 % for a page (bench/README).
 */
#define NGX_AHAVA_PERSON_OF(alias, column)                                   \
    " LEFT JOIN LATERAL (SELECT u.id, u.\"firstName\", u.\"lastName\""        \
    " FROM users u WHERE u.id COLLATE \"C\" = v.\"" column "\" OFFSET 0) "     \
    alias " ON true"

#define NGX_AHAVA_VISIT_PEOPLE                                               \
    NGX_AHAVA_PERSON_OF("p", "patientId")                                    \
    NGX_AHAVA_PERSON_OF("n", "nurseId")                                      \
    NGX_AHAVA_PERSON_OF("d", "doctorId")


/*
 * GET /api/visits: one template, a statement per role filter, status
 * filter or none, sortBy and sortOrder (made once at configuration time),
 * so that each one has the plan of its index: (nurseId, createdAt),
 * (doctorId, createdAt), the patient's bookings, createdAt; and the exact
 * total an index-only count (the admin's: counters).  The page is cut before its people are
 * looked up.  $1 caller, $2 status (unused without),
 * $3 limit, $4 offset.  Rows: the total, then a visit's columns (one row
 * of NULLs when the page is empty).
 */

#define NGX_AHAVA_VISITS_LIST                                                \
    "SELECT t.total, v.* FROM (SELECT %s AS total FROM %s"                  \
    " WHERE %s AND %s) t LEFT JOIN LATERAL (SELECT "                         \
    NGX_AHAVA_VISIT_COLUMNS " FROM (SELECT v.*, b.\"patientId\""             \
    " FROM visits v JOIN bookings b ON b.id = v.\"bookingId\""               \
    " WHERE %s AND %s ORDER BY v.%s %s, v.id %s"                             \
    " LIMIT $3::int OFFSET $4::int) v" NGX_AHAVA_VISIT_PEOPLE                \
    " ORDER BY v.%s %s, v.id %s) v ON true"

/*
 * by role: PATIENT, NURSE, DOCTOR, ADMIN (SPEC §5: role-filtered).  An
 * admin sees every visit: the total is the sum of the counters triggers
 * keep per status (sql/005_visit_counts.sql), not a count of the table.
 */
static const char  *ngx_ahava_visits_count[] = {
    "count(*)", "count(*)", "count(*)", "coalesce(sum(v.n), 0)::bigint"
};

static const char  *ngx_ahava_visits_count_from[] = {
    "visits v JOIN bookings b ON b.id = v.\"bookingId\"",
    "visits v", "visits v", "ahava_visit_counts v"
};

static const char  *ngx_ahava_visits_filter[] = {
    "b.\"patientId\" = $1", "v.\"nurseId\" = $1", "v.\"doctorId\" = $1",
    "$1::text IS NOT NULL"
};

static const char  *ngx_ahava_visits_role[] = {
    "patient", "nurse", "doctor", "admin"
};

/* without and with ?status= */
static const char  *ngx_ahava_visits_status[] = {
    "$2::text IS NULL", "v.status = $2::text::\"VisitStatus\""
};

/* the sortBy values, in the route's order; status sorts as the enum */
static const char  *ngx_ahava_visits_sort[] = {
    "\"createdAt\"", "\"scheduledStart\"", "\"updatedAt\"", "status"
};


ngx_ahava_stmt_t  ngx_ahava_visits_list_stmts[NGX_AHAVA_VISITS_NLIST];


/*
 * A mutation of SPEC §5 as one statement (one transaction): ok finds the
 * visit the caller may see; upd changes it only if the caller's role may
 * (who) and its current state allows (when) — under READ COMMITTED a
 * concurrent writer makes the UPDATE re-check its WHERE on the new row
 * version, so two conflicting mutations cannot both win; extra CTEs write
 * what goes with it (the nurse's position, the audit row).  The row says
 * which of 404 / 403 / 400 / 409 / 200 it is, in the columns of
 * ngx_ahava_visits_col_e.  $1 visit, $2 caller, $3 role.
 *
 * ok locks the row (lock: FOR NO KEY UPDATE OF v, the UPDATE's own lock,
 * which a message's foreign key check does not wait for): it then holds
 * the latest committed version, so the values "before the change"
 * (previousStatus, previousNurseId, the assignee replaced, who is told,
 * the 409's status) are those of the writer this one waited for, not of
 * the statement's snapshot.  The location does not: its only use of them
 * is to tell a doctor replaced meanwhile too, and the lock is a WAL record
 * a point.
 */

#define NGX_AHAVA_VISIT_MUTATION(name, set, who, when, target, extra,      \
    event)                                                                   \
    NGX_AHAVA_VISIT_CHANGE(" FOR NO KEY UPDATE OF v", set, who, when,       \
                           target, extra,                                    \
                           NGX_AHAVA_VISIT_OUTBOX(name, event),              \
                           "v.*", NGX_AHAVA_VISIT_AFTER)

/* the visit after the change, as the detail shows it */
#define NGX_AHAVA_VISIT_AFTER                                                \
    "SELECT " NGX_AHAVA_VISIT_COLUMNS ","                                    \
    " coalesce(v.\"gpsCoordinates\", '[]'::jsonb), v.\"nurseReport\""        \
    " FROM (SELECT upd.*, b.\"patientId\" FROM upd"                         \
    " JOIN bookings b ON b.id = upd.\"bookingId\") v"                        \
    NGX_AHAVA_VISIT_PEOPLE

/* only who it concerns: an answer that is the event (the location's); its
 * RETURNING leaves the changed history out of the CTE */
#define NGX_AHAVA_VISIT_IDS                                                  \
    "v.id, v.\"bookingId\", v.status, v.\"nurseId\", v.\"doctorId\","        \
    " v.\"scheduledStart\""

#define NGX_AHAVA_VISIT_AFTER_IDS                                            \
    "SELECT upd.id, upd.\"bookingId\", upd.status, ok.\"patientId\","        \
    " upd.\"nurseId\", upd.\"doctorId\" FROM upd, ok"

#define NGX_AHAVA_VISIT_CHANGE(lock, set, who, when, target, extra, outbox, \
    returning, after)                                                        \
    "WITH ok AS (SELECT v.id, v.status, v.\"nurseId\", v.\"doctorId\","      \
    " b.\"patientId\" FROM visits v JOIN bookings b"                         \
    " ON b.id = v.\"bookingId\" WHERE v.id = $1 AND ($3::text = 'ADMIN'"     \
    " OR $2 IN (b.\"patientId\", v.\"nurseId\", v.\"doctorId\"))" lock "),"   \
    " upd AS (UPDATE visits v SET " set ","                                  \
    " \"updatedAt\" = LOCALTIMESTAMP(3) FROM ok WHERE v.id = ok.id"          \
    " AND " who("v") " AND " when " AND " target                             \
    " RETURNING " returning ")" extra ","                                    \
    outbox                                                                   \
    " SELECT (SELECT count(*) FROM ok),"                                     \
    " coalesce((SELECT " who("ok") " FROM ok), false), " target ","          \
    " (SELECT status::text FROM ok),"                                        \
    " (SELECT \"nurseId\" FROM ok), (SELECT \"doctorId\" FROM ok),"          \
    " (SELECT data FROM ob), (SELECT ids::text FROM ob), after.*"             \
    " FROM (SELECT 1) one LEFT JOIN (" after ") after ON true"

/*
 * The event of a change and the jobs it triggers, into the outbox with it
 * (sql/006_outbox.sql): the participants before and after, the actor $2
 * excepted.  One row: the event's data, the outbox rows' ids
 */
#define NGX_AHAVA_VISIT_OUTBOX(name, event)                                  \
    " ob AS (SELECT e.data, ahava_outbox_visit('" name "', upd.id, $2,"      \
    " e.data, ok.\"patientId\", upd.\"nurseId\", upd.\"doctorId\","          \
    " ok.\"nurseId\", ok.\"doctorId\", upd.\"scheduledStart\","              \
    " upd.status::text) AS ids FROM upd, ok, LATERAL (SELECT"                \
    " json_build_object('visitId', upd.id, " event ")::text AS data) e)"

/*
 * A live position's event (it has no job), into the outbox without
 * ahava_outbox_visit's PL/pgSQL call, which cost the location a tenth of
 * its rate (bench/README.md "The location").  The same recipients: the
 * participants but the actor, the nurse ($2); the doctor and the nurse
 * before the change too when a concurrent writer replaced them; each once
 * (a patient, a doctor and a nurse are users of different roles).
 */
#define NGX_AHAVA_LOCATION_OUTBOX(event)                                     \
    " ob AS (INSERT INTO ahava_outbox (topic, recipients, payload)"          \
    " SELECT 'NURSE_LOCATION_UPDATE', array_remove(array_remove(ARRAY["      \
    "ok.\"patientId\", CASE WHEN upd.\"doctorId\" <> ok.\"patientId\""       \
    " THEN upd.\"doctorId\" END, CASE WHEN ok.\"doctorId\" IS DISTINCT FROM" \
    " upd.\"doctorId\" AND ok.\"doctorId\" <> ok.\"patientId\""              \
    " THEN ok.\"doctorId\" END, ok.\"nurseId\"], $2::text), NULL),"          \
    " json_build_object('visitId', upd.id, " event ")::text"                 \
    " FROM upd, ok RETURNING payload AS data, ARRAY[id] AS ids)"

/* who may: by role ($3), over the visit row t */
#define NGX_AHAVA_ADMIN(t)         "($3::text = 'ADMIN')"
#define NGX_AHAVA_NURSE(t)                                                   \
    "($3::text = 'NURSE' AND " t ".\"nurseId\" = $2)"
#define NGX_AHAVA_NURSE_OR_ADMIN(t)                                          \
    "($3::text = 'ADMIN' OR ($3::text = 'NURSE' AND " t ".\"nurseId\" = $2))"
#define NGX_AHAVA_DOCTOR_OR_ADMIN(t)                                         \
    "($3::text = 'ADMIN'"                                                    \
    " OR ($3::text = 'DOCTOR' AND " t ".\"doctorId\" = $2))"
#define NGX_AHAVA_PATIENT_OR_ADMIN(t)                                        \
    "($3::text = 'ADMIN' OR ($3::text = 'PATIENT' AND ok.\"patientId\" = $2))"

#define NGX_AHAVA_NOT_FINAL   "v.status NOT IN ('COMPLETED', 'CANCELLED')"

/* the history, or an empty one for NULL or a non-array (Prisma's data) */
#define NGX_AHAVA_GPS_HISTORY                                                \
    "(CASE WHEN jsonb_typeof(v.\"gpsCoordinates\") = 'array'"                \
    " THEN v.\"gpsCoordinates\" ELSE '[]'::jsonb END)"

#define NGX_AHAVA_GPS_POINT                                                  \
    "jsonb_build_array(jsonb_build_object('lat', $4::float8,"                \
    " 'lng', $5::float8, 'timestamp', " NGX_AHAVA_TS("LOCALTIMESTAMP(3)")    \
    "))"

#define NGX_AHAVA_ASSIGNEE(role)                                             \
    "EXISTS (SELECT 1 FROM users t WHERE t.id = $4 AND t.role = '" role "'"  \
    " AND t.\"isActive\")"

/* the audit row of a mutation, committed with it; $5 is its new id */
#define NGX_AHAVA_VISIT_AUDIT(action, meta)                                  \
    ", " NGX_AHAVA_AUDIT_INSERT("$5", "$2", "$3", action, "visit", "upd.id",  \
                                "upd, ok", meta)


ngx_ahava_stmt_t  ngx_ahava_visits_stmts[] = {

    /* GET /api/visits/:id — rows of (kind, JSON, ciphertext): the visit
     * with its payments and GPS history, then its latest 50 messages
     * oldest first; by participation (SPEC §3), $3 true for an admin */
    { ngx_string("visit detail"),
      "WITH v AS (SELECT v.*, b.\"patientId\" FROM visits v"
      " JOIN bookings b ON b.id = v.\"bookingId\" WHERE v.id = $1"
      " AND ($3::bool OR $2 IN (b.\"patientId\", v.\"nurseId\","
      " v.\"doctorId\")))"
      " SELECT 0 AS k, json_build_object(" NGX_AHAVA_VISIT_FIELDS ","
      " 'gpsCoordinates', coalesce(v.\"gpsCoordinates\", '[]'::jsonb),"
      " 'payments', (SELECT coalesce(json_agg(json_build_object("
      "'id', p.id, 'amountInCents', p.\"amountInCents\","
      " 'currency', p.currency, 'status', p.status,"
      " 'paystackReference', p.\"paystackReference\","
      " 'createdAt', " NGX_AHAVA_TS("p.\"createdAt\"") ","
      " 'updatedAt', " NGX_AHAVA_TS("p.\"updatedAt\"") ")"
      " ORDER BY p.\"createdAt\", p.id), '[]')"
      " FROM payments p WHERE p.\"visitId\" = v.id))::text,"
      " v.\"nurseReport\", NULL::timestamp AS t, NULL::text AS mid FROM v"
      " UNION ALL"
      " SELECT 1, json_build_object(" NGX_AHAVA_MESSAGE_FIELDS ")::text,"
      " m.content, m.\"createdAt\", m.id"
      " FROM (SELECT m.* FROM messages m"
      " WHERE m.\"visitId\" = (SELECT id FROM v)"
      " ORDER BY m.\"createdAt\" DESC, m.id DESC LIMIT 50) m"
      " ORDER BY 1, 4, 5",
      3, 0, "" },

    /* PATCH /api/visits/:id/status {status}: $4 the states it may come
     * from, $5 the new one */
    { ngx_string("visit status"),
      NGX_AHAVA_VISIT_MUTATION(
          "VISIT_STATUS_UPDATED",
          "status = $5::text::\"VisitStatus\","
          " \"actualStart\" = CASE WHEN $5::text = 'IN_PROGRESS'"
          " THEN coalesce(v.\"actualStart\", LOCALTIMESTAMP(3))"
          " ELSE v.\"actualStart\" END,"
          " \"actualEnd\" = CASE WHEN $5::text = 'COMPLETED'"
          " THEN LOCALTIMESTAMP(3) ELSE v.\"actualEnd\" END",
          NGX_AHAVA_NURSE_OR_ADMIN,
          "v.status = ANY($4::text[]::\"VisitStatus\"[])",
          "TRUE", "",
          "'status', upd.status, 'previousStatus', ok.status,"
          " 'updatedBy', $2::text"),
      5, 0, "" },

    /* POST /api/visits/:id/location {lat, lng}: appended, the newest 1000
     * kept; the nurse's last known position with it.  The answer is the
     * point (the event's data), not the visit and its history: a nurse's
     * app sends one every few seconds */
    { ngx_string("visit location"),
      NGX_AHAVA_VISIT_CHANGE("",
          "\"gpsCoordinates\" = CASE"
          " WHEN jsonb_array_length(" NGX_AHAVA_GPS_HISTORY ") < 1000"
          " THEN " NGX_AHAVA_GPS_HISTORY " || " NGX_AHAVA_GPS_POINT
          " ELSE jsonb_path_query_array(" NGX_AHAVA_GPS_HISTORY ","
          " '$[last - 998 to last]') || " NGX_AHAVA_GPS_POINT " END",
          NGX_AHAVA_NURSE,
          "v.status IN ('EN_ROUTE', 'ARRIVED', 'IN_PROGRESS')",
          "TRUE",
          ", nurse AS (UPDATE users u SET \"lastKnownLat\" = $4::float8,"
          " \"lastKnownLng\" = $5::float8,"
          " \"lastLocationUpdate\" = LOCALTIMESTAMP(3),"
          " \"updatedAt\" = LOCALTIMESTAMP(3) FROM upd"
          " WHERE u.id = upd.\"nurseId\")",
          /* the point as stored (LOCALTIMESTAMP is the statement's), not
           * read back: each -> would detoast the whole history */
          NGX_AHAVA_LOCATION_OUTBOX(
              "'nurseId', $2::text, 'lat', $4::float8, 'lng', $5::float8,"
              " 'timestamp', " NGX_AHAVA_TS("LOCALTIMESTAMP(3)")),
          NGX_AHAVA_VISIT_IDS, NGX_AHAVA_VISIT_AFTER_IDS),
      5, 0, "" },

    /* POST /api/visits/:id/nurse-report {nurseReport}: $4 its ciphertext;
     * the event never carries the report */
    { ngx_string("visit nurse report"),
      NGX_AHAVA_VISIT_MUTATION(
          "NURSE_REPORT_ADDED",
          "\"nurseReport\" = $4",
          NGX_AHAVA_NURSE,
          "v.status IN ('IN_PROGRESS', 'COMPLETED')",
          "TRUE", "",
          "'nurseId', $2::text"),
      4, 0, "" },

    /* POST /api/visits/:id/doctor-review {doctorReview, doctorRating} */
    { ngx_string("visit doctor review"),
      NGX_AHAVA_VISIT_MUTATION(
          "DOCTOR_REVIEW_ADDED",
          "\"doctorReview\" = $4, \"doctorRating\" = $5::int",
          NGX_AHAVA_DOCTOR_OR_ADMIN,
          "v.\"nurseReport\" IS NOT NULL",
          "TRUE", "",
          "'reviewedBy', $2::text, 'doctorRating', upd.\"doctorRating\""),
      5, 0, "" },

    /* POST /api/visits/:id/cancel {reason?}: its patient while SCHEDULED
     * or EN_ROUTE, an admin while not final; audited with the change */
    { ngx_string("visit cancel"),
      NGX_AHAVA_VISIT_MUTATION(
          "VISIT_CANCELLED",
          "status = 'CANCELLED'",
          NGX_AHAVA_PATIENT_OR_ADMIN,
          "(CASE WHEN $3::text = 'PATIENT'"
          " THEN v.status IN ('SCHEDULED', 'EN_ROUTE')"
          " ELSE " NGX_AHAVA_NOT_FINAL " END)",
          "TRUE",
          NGX_AHAVA_VISIT_AUDIT("VISIT_CANCELLED",
              "jsonb_build_object('previousStatus', ok.status,"
              " 'reason', $4::text)"),
          "'previousStatus', ok.status, 'cancelledBy', $2::text,"
          " 'reason', $4::text"),
      5, 0, "" },

    /* POST /api/visits/:id/assign-nurse {nurseId}: an active NURSE */
    { ngx_string("visit assign nurse"),
      NGX_AHAVA_VISIT_MUTATION(
          "NURSE_ASSIGNED",
          "\"nurseId\" = $4",
          NGX_AHAVA_ADMIN,
          NGX_AHAVA_NOT_FINAL,
          NGX_AHAVA_ASSIGNEE("NURSE"),
          NGX_AHAVA_VISIT_AUDIT("NURSE_ASSIGNED",
              "jsonb_build_object('nurseId', $4::text,"
              " 'previousNurseId', ok.\"nurseId\")"),
          "'nurseId', upd.\"nurseId\", 'previousNurseId', ok.\"nurseId\""),
      5, 0, "" },

    /* POST /api/visits/:id/assign-doctor {doctorId}: an active DOCTOR */
    { ngx_string("visit assign doctor"),
      NGX_AHAVA_VISIT_MUTATION(
          "DOCTOR_ASSIGNED",
          "\"doctorId\" = $4",
          NGX_AHAVA_ADMIN,
          NGX_AHAVA_NOT_FINAL,
          NGX_AHAVA_ASSIGNEE("DOCTOR"),
          NGX_AHAVA_VISIT_AUDIT("DOCTOR_ASSIGNED",
              "jsonb_build_object('doctorId', $4::text,"
              " 'previousDoctorId', ok.\"doctorId\")"),
          "'doctorId', upd.\"doctorId\","
          " 'previousDoctorId', ok.\"doctorId\""),
      5, 0, "" },
};


/* The list's variants from its template, then every statement declared */

ngx_int_t
ngx_ahava_visits_declare(ngx_conf_t *cf)
{
    u_char            *sql, *name;
    size_t             len;
    ngx_uint_t         role, status, sort, desc, i;
    const char        *dir;
    ngx_ahava_stmt_t  *st;

    len = sizeof(NGX_AHAVA_VISITS_LIST) + 512;

    for (role = 0; role < NGX_AHAVA_NROLES - 1; role++) {
        for (status = 0; status < 2; status++) {
            for (sort = 0; sort < NGX_AHAVA_VISITS_SORTS; sort++) {
                for (desc = 0; desc < 2; desc++) {
                    i = NGX_AHAVA_VISITS_LIST_INDEX(role, status, sort, desc);
                    st = &ngx_ahava_visits_list_stmts[i];
                    dir = desc ? "DESC" : "ASC";

                    sql = ngx_pnalloc(cf->pool, len);
                    name = ngx_pnalloc(cf->pool, 64);
                    if (sql == NULL || name == NULL) {
                        return NGX_ERROR;
                    }

                    ngx_snprintf(sql, len - 1, NGX_AHAVA_VISITS_LIST "%Z",
                                 ngx_ahava_visits_count[role],
                                 ngx_ahava_visits_count_from[role],
                                 ngx_ahava_visits_filter[role],
                                 ngx_ahava_visits_status[status],
                                 ngx_ahava_visits_filter[role],
                                 ngx_ahava_visits_status[status],
                                 ngx_ahava_visits_sort[sort], dir, dir,
                                 ngx_ahava_visits_sort[sort], dir, dir);

                    st->name.data = name;
                    st->name.len = ngx_sprintf(name,
                                       "visits list (%s%s, %s %s)",
                                       ngx_ahava_visits_role[role],
                                       status ? ", status" : "",
                                       ngx_ahava_visits_sort[sort], dir)
                                   - name;
                    st->sql = (char *) sql;
                    st->nparams = 4;
                }
            }
        }
    }

    if (ngx_ahava_declare(cf, ngx_ahava_visits_list_stmts,
                          NGX_AHAVA_VISITS_NLIST)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_ahava_declare(cf, ngx_ahava_visits_stmts,
                             NGX_AHAVA_VISITS_NSTMTS);
}
