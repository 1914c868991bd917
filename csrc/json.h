/* json.h: JSON decoding and encoding with exact 64-bit integers (lua-cjson reads every number
   as a float, which loses Consul's indexes and flags). */
#ifndef COORD_JSON_H
#define COORD_JSON_H

#include "compat.h"

void coord_json_register(lua_State *L);

#endif
