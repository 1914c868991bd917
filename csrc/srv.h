/* srv.h: DNS SRV lookups with c-ares on the coord loop (see srv.c). */
#ifndef COORD_SRV_H
#define COORD_SRV_H

#include "loop.h"

void coord_srv_apply_cancels(lua_State *L, coord_loop *lp);
lua_Integer coord_srv_drain(lua_State *L, coord_loop *lp, int out, lua_Integer n);
void coord_srv_detach_all(coord_loop *lp);
int coord_srv_lookup(lua_State *L);
void coord_srv_register(lua_State *L);

#endif
