/* buffer.c: growable byte buffer; consumed bytes are reclaimed when the buffer must grow. */
#include <stdlib.h>
#include <string.h>
#include "buffer.h"

/* Returns 0, or -1 when memory is exhausted (the buffer is left as it was). */
int coord_buf_append(coord_buf *b, const char *p, size_t n) {
  if (n == 0) return 0;
  if (b->len + n > b->cap && b->off > 0) {
    memmove(b->data, b->data + b->off, b->len - b->off);
    b->len -= b->off;
    b->off = 0;
  }
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + n) {
      if (cap > ((size_t)-1) / 2) return -1;
      cap *= 2;
    }
    char *d = b->owned ? realloc(b->data, cap) : malloc(cap);
    if (d == NULL) return -1;
    if (!b->owned && b->len) memcpy(d, b->data, b->len);
    b->data = d;
    b->cap = cap;
    b->owned = 1;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

void coord_buf_consume(coord_buf *b, size_t n) {
  b->off += n;
  if (b->off >= b->len) b->off = b->len = 0;
}

void coord_buf_clear(coord_buf *b) { b->off = b->len = 0; }

void coord_buf_free(coord_buf *b) {
  if (b->owned) free(b->data);
  b->data = NULL;
  b->off = b->len = b->cap = 0;
  b->owned = 0;
}
