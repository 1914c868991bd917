/* codec.h: base64 and exact 64-bit integers, exposed to Lua by core.c. */
#ifndef COORD_CODEC_H
#define COORD_CODEC_H

#include "compat.h"

void coord_codec_register(lua_State *L);

#endif
