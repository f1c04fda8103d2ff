
/*
 * Copyright (C) Ahava
 */


#ifndef _NGX_AHAVA_UTF8_H_INCLUDED_
#define _NGX_AHAVA_UTF8_H_INCLUDED_


#include <stddef.h>


/*
 * Incremental UTF-8 validator.  It fails on the first byte that no valid
 * continuation could follow (overlongs, surrogates and code points above
 * U+10FFFF are caught on their second byte), so a peer cannot make us
 * buffer a message that is already known to be invalid.
 */

typedef struct {
    unsigned char  need;        /* continuation bytes still expected */
    unsigned char  lo;          /* allowed range of the next one */
    unsigned char  hi;
    unsigned char  bad;         /* an invalid byte was seen (sticky) */
} ngx_ahava_utf8_t;


void ngx_ahava_utf8_init(ngx_ahava_utf8_t *u);

/* 0 while the bytes so far can start a valid text, -1 once they cannot */
int ngx_ahava_utf8_feed(ngx_ahava_utf8_t *u, const unsigned char *p,
    size_t n);

/* 1 if everything fed is valid and ends on a character boundary, else 0 */
int ngx_ahava_utf8_finished(const ngx_ahava_utf8_t *u);

/* one-shot form of the three above: 1 if valid, else 0 */
int ngx_ahava_utf8_valid(const unsigned char *p, size_t n);


#endif /* _NGX_AHAVA_UTF8_H_INCLUDED_ */
