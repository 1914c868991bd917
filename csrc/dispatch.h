/* dispatch.h: turning a finished transfer into Lua values on the running state. */
#ifndef COORD_DISPATCH_H
#define COORD_DISPATCH_H

#include "request.h"

int coord_push_failure(lua_State *L, coord_req *r);
void coord_push_headers(lua_State *L, const char *raw, size_t len);
void coord_dispatch_register(lua_State *L);

#endif
