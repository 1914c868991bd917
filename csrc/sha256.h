/* sha256.h: an incremental SHA-256 (FIPS 180-4), exposed to Lua by core.c. */
#ifndef COORD_SHA256_H
#define COORD_SHA256_H

#include "compat.h"

void coord_sha256_register(lua_State *L);

#endif
