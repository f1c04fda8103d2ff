
/*
 * Shared by the visits handlers: the visit's JSON as PostgreSQL builds it,
 * the request state, and the mutations of ngx_ahava_visits_update.c.
 */


#ifndef _NGX_AHAVA_VISITS_H_INCLUDED_
#define _NGX_AHAVA_VISITS_H_INCLUDED_


#include "ngx_ahava_core.h"


/* the visit as both endpoints show it; v has the booking's patientId */
#define NGX_AHAVA_VISIT_JSON                                                 \
    "'id', v.id, 'bookingId', v.\"bookingId\", 'status', v.status, "         \
    "'patientId', v.\"patientId\", 'nurseId', v.\"nurseId\", "               \
    "'doctorId', v.\"doctorId\", "                                           \
    "'scheduledStart', " NGX_AHAVA_TS("v.\"scheduledStart\"") ", "           \
    "'actualStart', " NGX_AHAVA_TS("v.\"actualStart\"") ", "                 \
    "'actualEnd', " NGX_AHAVA_TS("v.\"actualEnd\"") ", "                     \
    "'doctorReview', v.\"doctorReview\", "                                   \
    "'doctorRating', v.\"doctorRating\", "                                   \
    "'createdAt', " NGX_AHAVA_TS("v.\"createdAt\"") ", "                     \
    "'updatedAt', " NGX_AHAVA_TS("v.\"updatedAt\"") ", "                     \
    "'patient', " NGX_AHAVA_PERSON("v.\"patientId\"") ", "                   \
    "'nurse', " NGX_AHAVA_PERSON("v.\"nurseId\"") ", "                       \
    "'doctor', " NGX_AHAVA_PERSON("v.\"doctorId\"")

#define NGX_AHAVA_VISITS_WITH_PATIENT                                        \
    "(SELECT v.*, b.\"patientId\" FROM visits v "                            \
    "JOIN bookings b ON b.id = v.\"bookingId\") v"


typedef enum {
    NGX_AHAVA_VISITS_LIST = 0,
    NGX_AHAVA_VISITS_DETAIL,
    NGX_AHAVA_VISITS_UPDATE
} ngx_ahava_visits_route_e;


typedef struct ngx_ahava_visit_action_s  ngx_ahava_visit_action_t;


typedef struct {
    ngx_ahava_visits_route_e   route;
    ngx_str_t                  visit_id;
    ngx_uint_t                 limit;
    ngx_uint_t                 offset;
    ngx_ahava_visit_action_t  *action;
    char                      *visit_id_param;
} ngx_ahava_visits_ctx_t;



extern const char *ngx_ahava_visit_statuses[];

ngx_ahava_visit_action_t *ngx_ahava_visit_action(ngx_str_t *name);
ngx_uint_t ngx_ahava_visit_action_method(ngx_ahava_visit_action_t *action);
ngx_int_t ngx_ahava_visit_update(ngx_http_request_t *r);


#endif /* _NGX_AHAVA_VISITS_H_INCLUDED_ */
