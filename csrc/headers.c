/* headers.c: response headers for Lua: the table of a raw header block, and single values
   read without building it. */
#include <ctype.h>
#include <string.h>
#include <strings.h>
#include "headers.h"

/* The value of a header line that starts at v and ends at ve (before "\n"), trimmed. */
static const char *trim(const char *v, const char **ve) {
  while (v < *ve && (*v == ' ' || *v == '\t')) v++;
  while (*ve > v && ((*ve)[-1] == '\r' || (*ve)[-1] == ' ' || (*ve)[-1] == '\t')) (*ve)--;
  return v;
}

/* Pushes { name = value } for the header lines in hdrs: names lower-cased, values trimmed,
   a repeated header's values joined with ", " in arrival order (RFC 9110, 5.3). */
void coord_push_headers(lua_State *L, const char *p, size_t len) {
  lua_createtable(L, 0, 8);
  const char *end = p + len;
  char name[256];
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    const char *next = eol ? eol + 1 : end;
    const char *colon = memchr(p, ':', (size_t)((eol ? eol : end) - p));
    if (colon && colon > p && (size_t)(colon - p) < sizeof name && !(colon - p >= 5 && memcmp(p, "HTTP/", 5) == 0)) {
      size_t nn = (size_t)(colon - p);
      for (size_t i = 0; i < nn; i++) name[i] = (char)tolower((unsigned char)p[i]);
      const char *ve = eol ? eol : end;
      const char *v = trim(colon + 1, &ve);
      lua_pushlstring(L, name, nn);
      lua_pushvalue(L, -1);
      if (lua_rawget(L, -3) == LUA_TSTRING) {
        lua_pushliteral(L, ", ");
        lua_pushlstring(L, v, (size_t)(ve - v));
        lua_concat(L, 3);
      } else {
        lua_pop(L, 1);
        lua_pushlstring(L, v, (size_t)(ve - v));
      }
      lua_rawset(L, -3);
    }
    p = next;
  }
}

/* parse_headers(raw): the header table of a raw header block (see coord_push_headers). */
static int l_parse_headers(lua_State *L) {
  size_t n;
  const char *raw = luaL_checklstring(L, 1, &n);
  coord_push_headers(L, raw, n);
  return 1;
}

#define MAX_HEADER_NAMES 16

/* header(raw, name, ...): for each name (at most 16), the value of that header
   (case-insensitive), repeated values joined with ", ", or nil. One pass over the raw block
   without building a table, however many names are asked for (a Consul reply's metadata is
   six headers). */
static int l_header(lua_State *L) {
  size_t n;
  const char *p = luaL_checklstring(L, 1, &n), *end = p + n;
  int nnames = lua_gettop(L) - 1;
  const char *names[MAX_HEADER_NAMES];
  size_t lens[MAX_HEADER_NAMES];
  if (nnames < 1) luaL_checklstring(L, 2, NULL); /* raises the usual "string expected" */
  luaL_argcheck(L, nnames <= MAX_HEADER_NAMES, MAX_HEADER_NAMES + 2, "too many header names");
  for (int i = 0; i < nnames; i++) names[i] = luaL_checklstring(L, i + 2, &lens[i]);
  luaL_checkstack(L, nnames + 3, "header names");
  int first = lua_gettop(L) + 1; /* the results: nil until found */
  for (int i = 0; i < nnames; i++) lua_pushnil(L);
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    const char *le = eol ? eol : end;
    const char *colon = memchr(p, ':', (size_t)(le - p));
    for (int i = 0; colon && i < nnames; i++) {
      if (lens[i] != (size_t)(colon - p) || strncasecmp(p, names[i], lens[i]) != 0) continue;
      const char *ve = le;
      const char *v = trim(colon + 1, &ve);
      if (lua_isnil(L, first + i)) {
        lua_pushlstring(L, v, (size_t)(ve - v));
      } else {
        lua_pushvalue(L, first + i);
        lua_pushliteral(L, ", ");
        lua_pushlstring(L, v, (size_t)(ve - v));
        lua_concat(L, 3);
      }
      lua_replace(L, first + i);
    }
    p = eol ? eol + 1 : end;
  }
  return nnames;
}

void coord_headers_register(lua_State *L) {
  static const luaL_Reg fns[] = {{"parse_headers", l_parse_headers}, {"header", l_header}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
