/* file.h: writing a whole file atomically and durably, exposed to Lua by core.c. */
#ifndef COORD_FILE_H
#define COORD_FILE_H

#include "compat.h"

void coord_file_register(lua_State *L);

#endif
