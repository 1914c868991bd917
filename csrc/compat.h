/* compat.h: shims between Lua versions, kept in one place. */
#ifndef COORD_COMPAT_H
#define COORD_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM < 504
#error "coord needs Lua 5.4 (lua_newuserdatauv, lua_resume with nres, to-be-closed variables)"
#endif

#define COORD_EXPORT __attribute__((visibility("default")))

#endif
