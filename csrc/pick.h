/* pick.h: chosen fields of a JSON text without decoding the rest (pick.c). */
#ifndef COORD_PICK_H
#define COORD_PICK_H

#include "compat.h"

/* Registers json_picker and json_pick in the table on top of the stack, which must hold the
   codec functions already (b64decode). */
void coord_pick_register(lua_State *L);

#endif
