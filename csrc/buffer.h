/* buffer.h: a growable byte buffer with a read offset, used for bodies, headers and streams. */
#ifndef COORD_BUFFER_H
#define COORD_BUFFER_H

#include <stddef.h>

typedef struct coord_buf {
  char *data;
  size_t len;  /* bytes written */
  size_t off;  /* bytes already consumed by the reader */
  size_t cap;
  int owned;   /* data was malloc'd here (else it is the owner's inline storage, or NULL) */
} coord_buf;

/* Starts the buffer on storage the owner provides (no allocation until it outgrows it). */
static inline void coord_buf_init(coord_buf *b, char *storage, size_t cap) {
  b->data = storage;
  b->len = b->off = 0;
  b->cap = cap;
  b->owned = 0;
}

int coord_buf_append(coord_buf *b, const char *p, size_t n);
void coord_buf_consume(coord_buf *b, size_t n);
void coord_buf_clear(coord_buf *b);
void coord_buf_free(coord_buf *b);

static inline size_t coord_buf_unread(const coord_buf *b) { return b->len - b->off; }
static inline const char *coord_buf_head(const coord_buf *b) { return b->data + b->off; }

#endif
