
/*
 * Shared by the visits handlers: the statements of the module (their SQL
 * is in ngx_ahava_visits_sql.c, in one place) and the steps of the routes.
 */


#ifndef _NGX_AHAVA_VISITS_H_INCLUDED_
#define _NGX_AHAVA_VISITS_H_INCLUDED_


#include "ngx_ahava_core.h"


/* the sortBy values of GET /api/visits, in the order of the variants */
#define NGX_AHAVA_VISITS_SORTS      4

/* the list: a statement per role filter × status filter × sortBy ×
 * sortOrder; role 0 is PATIENT */
#define NGX_AHAVA_VISITS_NLIST                                               \
    ((NGX_AHAVA_NROLES - 1) * 2 * NGX_AHAVA_VISITS_SORTS * 2)

#define NGX_AHAVA_VISITS_LIST_INDEX(role, status, sort, desc)                \
    ((((role) * 2 + (status)) * NGX_AHAVA_VISITS_SORTS + (sort)) * 2 + (desc))


typedef enum {
    NGX_AHAVA_VISIT_DETAIL = 0,
    NGX_AHAVA_VISIT_STATUS,
    NGX_AHAVA_VISIT_LOCATION,
    NGX_AHAVA_VISIT_REPORT,
    NGX_AHAVA_VISIT_REVIEW,
    NGX_AHAVA_VISIT_CANCEL,
    NGX_AHAVA_VISIT_ASSIGN_NURSE,
    NGX_AHAVA_VISIT_ASSIGN_DOCTOR,
    NGX_AHAVA_VISITS_NSTMTS
} ngx_ahava_visits_stmt_e;


/*
 * The columns of a mutation's result row (the shared shape of every
 * mutation statement, see NGX_AHAVA_VISIT_MUTATION), then the visit after
 * it, as the list shows it, with its GPS history and report
 */
typedef enum {
    NGX_AHAVA_MUT_VISIBLE = 0,      /* 1: the caller may see the visit */
    NGX_AHAVA_MUT_PERMITTED,        /* t: the caller's role may do it */
    NGX_AHAVA_MUT_TARGET_OK,        /* t: the assignee is fine */
    NGX_AHAVA_MUT_PREVIOUS,         /* the status before */
    NGX_AHAVA_MUT_OLD_NURSE,        /* the nurse and doctor before */
    NGX_AHAVA_MUT_OLD_DOCTOR,
    NGX_AHAVA_MUT_EVENT,            /* the event's data, JSON */
    NGX_AHAVA_MUT_OUTBOX,           /* its outbox rows' ids, {1,2} */
    NGX_AHAVA_MUT_VISIT,            /* its id; NULL: not changed (409) */
    NGX_AHAVA_MUT_PATIENT = NGX_AHAVA_MUT_VISIT + 3,  /* participants after */
    NGX_AHAVA_MUT_NURSE,
    NGX_AHAVA_MUT_DOCTOR
} ngx_ahava_visits_col_e;


extern ngx_ahava_stmt_t  ngx_ahava_visits_stmts[];
extern ngx_ahava_col_t   ngx_ahava_visit_cols[];
extern ngx_ahava_stmt_t  ngx_ahava_visits_list_stmts[];
extern const char       *ngx_ahava_visit_statuses[];

ngx_int_t ngx_ahava_visits_declare(ngx_conf_t *cf);
ngx_ahava_pg_query_t *ngx_ahava_visits_role_query(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx, ngx_ahava_stmt_t *stmt);

ngx_ahava_rc_e ngx_ahava_visit_status(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
ngx_ahava_rc_e ngx_ahava_visit_location(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
ngx_ahava_rc_e ngx_ahava_visit_report(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
ngx_ahava_rc_e ngx_ahava_visit_review(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
ngx_ahava_rc_e ngx_ahava_visit_cancel(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
ngx_ahava_rc_e ngx_ahava_visit_assign_nurse(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
ngx_ahava_rc_e ngx_ahava_visit_assign_doctor(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);

/* visit reports (ngx_ahava_visits_export.c) */
ngx_int_t ngx_ahava_export_declare(ngx_conf_t *cf);
ngx_ahava_rc_e ngx_ahava_visit_export(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);
ngx_ahava_rc_e ngx_ahava_export_status(ngx_http_request_t *r,
    ngx_ahava_ctx_t *ctx);

extern ngx_ahava_field_t  ngx_ahava_visit_status_fields[];
extern ngx_ahava_field_t  ngx_ahava_visit_location_fields[];
extern ngx_ahava_field_t  ngx_ahava_visit_report_fields[];
extern ngx_ahava_field_t  ngx_ahava_visit_review_fields[];
extern ngx_ahava_field_t  ngx_ahava_visit_cancel_fields[];
extern ngx_ahava_field_t  ngx_ahava_visit_nurse_fields[];
extern ngx_ahava_field_t  ngx_ahava_visit_doctor_fields[];


#endif /* _NGX_AHAVA_VISITS_H_INCLUDED_ */
