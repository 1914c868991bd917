/* failure.h: the Lua values of a failed transfer (failure.c). */
#ifndef COORD_FAILURE_H
#define COORD_FAILURE_H

#include "request.h"

int coord_push_failure(lua_State *L, coord_req *r);

#endif
