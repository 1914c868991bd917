/* headers.h: response headers as Lua values (headers.c). */
#ifndef COORD_HEADERS_H
#define COORD_HEADERS_H

#include <stddef.h>
#include "compat.h"

void coord_push_headers(lua_State *L, const char *raw, size_t len);
void coord_headers_register(lua_State *L);

#endif
