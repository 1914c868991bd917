/* pb.h: a generic, schema-driven protobuf wire codec (the schemas live in Lua), exposed by core.c. */
#ifndef COORD_PB_H
#define COORD_PB_H

#include "compat.h"

void coord_pb_register(lua_State *L);

#endif
