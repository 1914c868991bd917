/* codec.h: base64 and exact 64-bit integers, exposed to Lua by core.c. */
#ifndef COORD_CODEC_H
#define COORD_CODEC_H

#include "compat.h"

void coord_codec_register(lua_State *L);

#include <stddef.h>
#include <stdint.h>
/* Parses an unsigned decimal of n bytes up to limit into *out: NULL, else why it is not one. */
const char *coord_parse_decimal(const char *s, size_t n, uint64_t limit, uint64_t *out);
/* Pushes the bytes n bytes of base64 text (padded or not) decode to and returns 1; pushes
   nothing and returns 0 when the text is not base64 (as core.b64decode reads it). */
int coord_b64_push(lua_State *L, const char *text, size_t n);

#endif
