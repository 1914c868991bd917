/* hdrlist.c: a request's header list (CURLOPT_HTTPHEADER) from its headers table, checked
   entry by entry. A client sends the same headers table with every request, so the list made
   from a table seen before is kept (weakly keyed by the table) with a copy of the entries,
   and serves the next request for which the table still holds exactly those entries: the check is one lookup per
   entry instead of building and freeing a list. A request holds the list it was given (a
   uservalue), so a list stays alive while curl may read it. */
#include <string.h>
#include "hdrlist.h"

#define HDRLIST_MT "coord.hdrlist"

typedef struct hdrlist {
  struct curl_slist *list;
  int n; /* entries of the table it was made from; uservalue 1: their copy */
} hdrlist;

static void check_header_text(lua_State *L, const char *s, size_t n, int is_name) {
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0' || (is_name && (s[i] == ':' || s[i] == ' ')))
      luaL_error(L, "bad request header %s '%s' (forbidden character)", is_name ? "name" : "value", s);
  }
  if (is_name && n == 0) luaL_error(L, "bad request header (empty name)");
}

/* Appends "name: val" to *list (which stays valid to free if this raises). */
void coord_header_add(lua_State *L, struct curl_slist **list, const char *name, size_t nn, const char *val, size_t vn) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, name, nn);
  if (vn == 0) luaL_addchar(&b, ';'); /* curl's spelling of a header with an empty value */
  else {
    luaL_addstring(&b, ": ");
    luaL_addlstring(&b, val, vn);
  }
  luaL_pushresult(&b);
  struct curl_slist *l = curl_slist_append(*list, lua_tostring(L, -1));
  lua_pop(L, 1);
  if (l == NULL) luaL_error(L, "coord: out of memory");
  *list = l;
}

/* Appends the headers table at h, { ["Name"] = "value", ... } and/or { "Name: value", ... },
   to *list, checking every entry. With snap (an index, or 0), each entry is also copied into
   the table there; returns the number of entries. */
static int append(lua_State *L, struct curl_slist **list, int h, int snap) {
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, h)) {
    size_t kn, vn;
    int vt = lua_type(L, -1);
    if (lua_type(L, -2) == LUA_TNUMBER) {
      if (vt != LUA_TSTRING) luaL_error(L, "bad request header (\"Name: value\" string expected, got %s)", lua_typename(L, vt));
      const char *line = lua_tolstring(L, -1, &vn);
      const char *colon = memchr(line, ':', vn);
      if (colon == NULL) luaL_error(L, "bad request header '%s' (\"Name: value\" expected)", line);
      const char *v = colon + 1;
      while (*v == ' ') v++;
      check_header_text(L, line, (size_t)(colon - line), 1);
      check_header_text(L, v, vn - (size_t)(v - line), 0);
      coord_header_add(L, list, line, (size_t)(colon - line), v, vn - (size_t)(v - line));
    } else {
      if (lua_type(L, -2) != LUA_TSTRING || (vt != LUA_TSTRING && vt != LUA_TNUMBER))
        luaL_error(L, "bad request header (string name and string value expected, got %s = %s)",
                   luaL_typename(L, -2), lua_typename(L, vt));
      const char *k = lua_tolstring(L, -2, &kn);
      lua_pushvalue(L, -1); /* converting a number in place would confuse lua_next */
      const char *v = lua_tolstring(L, -1, &vn);
      check_header_text(L, k, kn, 1);
      check_header_text(L, v, vn, 0);
      coord_header_add(L, list, k, kn, v, vn);
      lua_pop(L, 1);
    }
    if (snap) {
      lua_pushvalue(L, -2);
      lua_pushvalue(L, -2);
      lua_rawset(L, snap);
    }
    n++;
    lua_pop(L, 1);
  }
  return n;
}


void coord_headers_append(lua_State *L, struct curl_slist **list, int h) { append(L, list, h, 0); }

/* Whether the table at h holds exactly the n entries of the copy at snap. */
static int unchanged(lua_State *L, int h, int snap, int n) {
  int count = 0;
  lua_pushnil(L);
  while (lua_next(L, h)) {
    lua_pushvalue(L, -2);
    lua_rawget(L, snap);
    /* 1 and 1.0 are equal but are sent as "1" and "1.0" */
    int same = lua_rawequal(L, -1, -2) && lua_isinteger(L, -1) == lua_isinteger(L, -2);
    lua_pop(L, 2);
    if (!same) {
      lua_pop(L, 1);
      return 0;
    }
    count++;
  }
  return count == n;
}

/* The header list for the headers table at h, in *list: the kept one if the table is
   unchanged, else a new one, kept in the table at cache. Sets it as uservalue uv of the
   request at req, which keeps it alive for the transfer. A table seen for the first time is
   only marked, and 0 returned: the caller builds a list of its own (a table made for one
   request, as a Consul call with a token makes, is not worth keeping). Raises on a bad entry. */
int coord_hdrlist_get(lua_State *L, int h, int cache, int req, int uv, struct curl_slist **list) {
  luaL_checkstack(L, 8, "request headers");
  lua_pushvalue(L, h);
  int t = lua_rawget(L, cache);
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushvalue(L, h);
    lua_pushboolean(L, 1);
    lua_rawset(L, cache);
    return 0;
  }
  if (t == LUA_TUSERDATA) {
    hdrlist *e = lua_touserdata(L, -1);
    lua_getiuservalue(L, -1, 1);
    if (unchanged(L, h, lua_gettop(L), e->n)) {
      lua_pop(L, 1);
      lua_setiuservalue(L, req, uv);
      *list = e->list;
      return 1;
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  hdrlist *e = lua_newuserdatauv(L, sizeof *e, 1);
  e->list = NULL;
  e->n = 0;
  luaL_setmetatable(L, HDRLIST_MT);
  lua_newtable(L);
  e->n = append(L, &e->list, h, lua_gettop(L));
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, h);
  lua_pushvalue(L, -2);
  lua_rawset(L, cache);
  lua_setiuservalue(L, req, uv);
  *list = e->list;
  return 1;
}

static int hdrlist_gc(lua_State *L) {
  hdrlist *e = luaL_checkudata(L, 1, HDRLIST_MT);
  curl_slist_free_all(e->list);
  e->list = NULL;
  return 0;
}

/* Pushes a new cache: a table with weak keys (the headers tables). */
void coord_hdrlist_cache(lua_State *L) {
  if (luaL_newmetatable(L, HDRLIST_MT)) {
    lua_pushcfunction(L, hdrlist_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
}
