
/*
 * What other modules share of a message: its columns and how the API
 * shows them (the WebSocket replay sends messages exactly as
 * NEW_MESSAGE events carry them).
 */


#ifndef _NGX_AHAVA_MESSAGES_H_INCLUDED_
#define _NGX_AHAVA_MESSAGES_H_INCLUDED_


#include "ngx_ahava_core.h"


/* a message m as plain columns, in the order of ngx_ahava_message_cols */
#define NGX_AHAVA_MESSAGE_COLUMNS                                            \
    "m.id, m.\"visitId\", m.\"senderId\", m.\"recipientId\", m.type,"          \
    " m.\"isRead\", m.\"attachmentUrl\", m.\"attachmentType\","                \
    " m.\"createdAt\", m.\"updatedAt\", m.content"

/* the index of createdAt among them */
#define NGX_AHAVA_MESSAGE_CREATED_AT  8

extern ngx_ahava_col_t  ngx_ahava_message_cols[];


#endif /* _NGX_AHAVA_MESSAGES_H_INCLUDED_ */
