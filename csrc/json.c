/* json.c: a strict RFC 8259 JSON decoder and a small encoder. Integral numbers become Lua
   integers (exactly, up to 2^64-1; above 2^63-1 with the same 64 bits), other numbers floats;
   null is the light userdata NULL (the same value as cjson.null). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include "buffer.h"
#include "json.h"
#include "jsonlex.h"

#define MAX_DEPTH 512

typedef struct decoder {
  lua_State *L;
  const char *start, *p, *end;
  int depth;
} decoder;

static int fail(decoder *d, const char *what) {
  return luaL_error(d->L, "invalid JSON at offset %d: %s", (int)(d->p - d->start), what);
}

static void skip_ws(decoder *d) {
  d->p = coord_json_ws(d->p, d->end);
}

/* The value of four hex digits coord_json_string has checked. */
static unsigned hex4(const char *p) {
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    v = v << 4 | (unsigned)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
  }
  return v;
}

static void add_utf8(luaL_Buffer *b, unsigned cp) {
  char u[4];
  int n;
  if (cp < 0x80) u[0] = (char)cp, n = 1;
  else if (cp < 0x800) u[0] = (char)(0xC0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
  else if (cp < 0x10000)
    u[0] = (char)(0xE0 | cp >> 12), u[1] = (char)(0x80 | ((cp >> 6) & 0x3F)), u[2] = (char)(0x80 | (cp & 0x3F)), n = 3;
  else
    u[0] = (char)(0xF0 | cp >> 18), u[1] = (char)(0x80 | ((cp >> 12) & 0x3F)),
    u[2] = (char)(0x80 | ((cp >> 6) & 0x3F)), u[3] = (char)(0x80 | (cp & 0x3F)), n = 4;
  luaL_addlstring(b, u, (size_t)n);
}

/* d->p is just past the opening quote. */
static void decode_string(decoder *d) {
  int escaped;
  const char *at, *why;
  const char *q = coord_json_string(d->p, d->end, &escaped, &at, &why);
  if (q == NULL) {
    d->p = at;
    fail(d, why);
  }
  if (!escaped) { /* the common case */
    lua_pushlstring(d->L, d->p, (size_t)(q - d->p));
    d->p = q + 1;
    return;
  }
  /* every escape between d->p and q is a valid one */
  luaL_Buffer b;
  luaL_buffinit(d->L, &b);
  const char *p = d->p;
  while (p < q) {
    const char *bs = memchr(p, '\\', (size_t)(q - p));
    if (bs == NULL) bs = q;
    luaL_addlstring(&b, p, (size_t)(bs - p));
    if (bs == q) break;
    char e = bs[1];
    p = bs + 2;
    switch (e) {
      case 'b': luaL_addchar(&b, '\b'); break;
      case 'f': luaL_addchar(&b, '\f'); break;
      case 'n': luaL_addchar(&b, '\n'); break;
      case 'r': luaL_addchar(&b, '\r'); break;
      case 't': luaL_addchar(&b, '\t'); break;
      case 'u': {
        unsigned cp = hex4(p);
        p += 4;
        if (cp >= 0xD800 && cp < 0xDC00 && q - p >= 6 && p[0] == '\\' && p[1] == 'u') {
          unsigned lo = hex4(p + 2);
          if (lo >= 0xDC00 && lo < 0xE000) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            p += 6;
          }
        }
        add_utf8(&b, cp);
        break;
      }
      default: luaL_addchar(&b, e); break; /* '"', '\\' and '/' stand for themselves */
    }
  }
  d->p = q + 1;
  luaL_pushresult(&b);
}

static void decode_number(decoder *d) {
  int exact = 0;
  int64_t v = 0;
  const char *why = "";
  const char *s = coord_json_number(d->p, d->end, &exact, &v, &why);
  if (s == NULL) fail(d, why);
  if (exact) {
    lua_pushinteger(d->L, (lua_Integer)v);
  } else {
    char buf[64], *tmp = buf;
    size_t n = (size_t)(s - d->p);
    if (n >= sizeof buf && (tmp = malloc(n + 1)) == NULL) fail(d, "out of memory");
    memcpy(tmp, d->p, n);
    tmp[n] = '\0';
    double x = strtod(tmp, NULL);
    if (tmp != buf) free(tmp);
    lua_pushnumber(d->L, x);
  }
  d->p = s;
}

static int literal(decoder *d, const char *word, size_t n) {
  const char *p = coord_json_literal(d->p, d->end, word, n);
  if (p == NULL) return 0;
  d->p = p;
  return 1;
}

static void decode_value(decoder *d);

/* Members wait on the stack and go into the table BATCH at a time: the usual small object or
   array gets a table of its final size at once, instead of one that grows (and rehashes its
   members) as they arrive. */
#define BATCH 16

/* Moves the `pending` members above the table at index t into it; creates the table (sized
   for them) first if it does not exist yet. An object's pairs go in in document order, so the
   last of duplicate keys wins. */
static void flush(lua_State *L, int t, int is_object, int *created, int pending, lua_Integer *n) {
  if (!*created) {
    lua_createtable(L, is_object ? 0 : pending, is_object ? pending : 0);
    lua_replace(L, t);
    *created = 1;
  }
  if (is_object) {
    for (int k = 0; k < pending; k++) {
      lua_pushvalue(L, t + 1 + 2 * k);
      lua_pushvalue(L, t + 2 + 2 * k);
      lua_rawset(L, t);
    }
  } else {
    for (int k = 0; k < pending; k++) {
      lua_pushvalue(L, t + 1 + k);
      lua_rawseti(L, t, ++*n);
    }
  }
  lua_settop(L, t);
}

static void decode_container(decoder *d, char close) {
  lua_State *L = d->L;
  int is_object = close == '}';
  if (++d->depth > MAX_DEPTH) fail(d, "nested too deeply");
  luaL_checkstack(L, 2 * BATCH + 4, "JSON nesting");
  d->p++;
  lua_pushnil(L); /* the table's slot, filled by the first flush */
  int t = lua_gettop(L), created = 0, pending = 0;
  lua_Integer n = 0;
  skip_ws(d);
  if (d->p < d->end && *d->p == close) {
    d->p++;
    flush(L, t, is_object, &created, 0, &n);
    d->depth--;
    return;
  }
  for (;;) {
    skip_ws(d);
    if (is_object) {
      if (d->p >= d->end || *d->p != '"') fail(d, "object key expected");
      d->p++;
      decode_string(d);
      skip_ws(d);
      if (d->p >= d->end || *d->p != ':') fail(d, "':' expected");
      d->p++;
      skip_ws(d);
    }
    decode_value(d);
    if (++pending == BATCH) {
      flush(L, t, is_object, &created, pending, &n);
      pending = 0;
    }
    skip_ws(d);
    if (d->p < d->end && *d->p == ',') {
      d->p++;
      continue;
    }
    if (d->p < d->end && *d->p == close) {
      d->p++;
      break;
    }
    fail(d, is_object ? "',' or '}' expected" : "',' or ']' expected");
  }
  flush(L, t, is_object, &created, pending, &n);
  d->depth--;
}

static void decode_value(decoder *d) {
  if (d->p >= d->end) fail(d, "unexpected end");
  switch (*d->p) {
    case '{': decode_container(d, '}'); return;
    case '[': decode_container(d, ']'); return;
    case '"': d->p++; decode_string(d); return;
    case 't': if (literal(d, "true", 4)) { lua_pushboolean(d->L, 1); return; } break;
    case 'f': if (literal(d, "false", 5)) { lua_pushboolean(d->L, 0); return; } break;
    case 'n': if (literal(d, "null", 4)) { lua_pushlightuserdata(d->L, NULL); return; } break;
    default: decode_number(d); return;
  }
  fail(d, "unexpected character");
}

static int do_decode(lua_State *L) {
  decoder *d = lua_touserdata(L, 1);
  skip_ws(d);
  decode_value(d);
  skip_ws(d);
  if (d->p != d->end) fail(d, "trailing characters");
  return 1;
}

/* decode(s): the value, or nil and "invalid JSON at offset N: why". */
static int json_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  decoder d = {L, s, s, s + n, 0};
  lua_pushcfunction(L, do_decode);
  lua_pushlightuserdata(L, &d);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    luaL_pushfail(L);
    lua_insert(L, -2);
    return 2;
  }
  return 1;
}

/* ---- encoding ---- */

/* The encoder writes into a malloc'd buffer (values are pushed while it runs, which a
   luaL_Buffer does not allow); it runs under lua_pcall so the buffer is freed on error. */
typedef struct encoder {
  lua_State *L;
  coord_buf out;
} encoder;

static void put(encoder *e, const char *s, size_t n) {
  if (coord_buf_append(&e->out, s, n) != 0) luaL_error(e->L, "out of memory");
}

static void put_string(encoder *e, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  put(e, "\"", 1);
  size_t run = 0; /* bytes copied as they are, flushed in one piece */
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c != '"' && c != '\\') {
      run++;
      continue;
    }
    put(e, s + i - run, run);
    run = 0;
    char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
    if (c == '"' || c == '\\') u[1] = (char)c, put(e, u, 2);
    else if (c == '\n') put(e, "\\n", 2);
    else if (c == '\r') put(e, "\\r", 2);
    else if (c == '\t') put(e, "\\t", 2);
    else put(e, u, 6);
  }
  put(e, s + n - run, run);
  put(e, "\"", 1);
}

/* An array is a non-empty sequence, or any table whose metatable has __jsontype = "array". */
static int is_array(lua_State *L, int idx, lua_Integer *len) {
  if (luaL_getmetafield(L, idx, "__jsontype") != LUA_TNIL) {
    int arr = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "array") == 0;
    lua_pop(L, 1);
    *len = (lua_Integer)lua_rawlen(L, idx);
    return arr;
  }
  lua_Integer n = 0, max = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1) {
      lua_pop(L, 1);
      return 0;
    }
    lua_Integer k = lua_tointeger(L, -1);
    if (k > max) max = k;
    n++;
  }
  *len = max;
  return n > 0 && max == n;
}

static void encode_value(encoder *e, int idx, int depth) {
  lua_State *L = e->L;
  char num[64];
  switch (lua_type(L, idx)) {
    case LUA_TNIL: put(e, "null", 4); return;
    case LUA_TBOOLEAN:
      if (lua_toboolean(L, idx)) put(e, "true", 4);
      else put(e, "false", 5);
      return;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        snprintf(num, sizeof num, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, idx));
      } else {
        double x = lua_tonumber(L, idx);
        if (isnan(x) || isinf(x)) luaL_error(L, "cannot encode %f as JSON", x);
        snprintf(num, sizeof num, "%.17g", x);
      }
      put(e, num, strlen(num));
      return;
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      put_string(e, s, n);
      return;
    }
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == NULL) {
        put(e, "null", 4);
        return;
      }
      break;
    case LUA_TTABLE: {
      if (depth > MAX_DEPTH) luaL_error(L, "cannot encode JSON: nested too deeply (a cycle?)");
      luaL_checkstack(L, 4, "JSON nesting");
      lua_Integer len;
      if (is_array(L, idx, &len)) {
        put(e, "[", 1);
        for (lua_Integer i = 1; i <= len; i++) {
          if (i > 1) put(e, ",", 1);
          lua_rawgeti(L, idx, i);
          encode_value(e, lua_gettop(L), depth + 1);
          lua_pop(L, 1);
        }
        put(e, "]", 1);
        return;
      }
      put(e, "{", 1);
      int first = 1;
      lua_pushnil(L);
      while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING)
          luaL_error(L, "cannot encode JSON: object key of type %s", luaL_typename(L, -2));
        if (!first) put(e, ",", 1);
        first = 0;
        size_t n;
        const char *k = lua_tolstring(L, -2, &n);
        put_string(e, k, n);
        put(e, ":", 1);
        encode_value(e, lua_gettop(L), depth + 1);
        lua_pop(L, 1);
      }
      put(e, "}", 1);
      return;
    }
    default: break;
  }
  luaL_error(L, "cannot encode a %s as JSON", luaL_typename(L, idx));
}

static int do_encode(lua_State *L) {
  encoder *e = lua_touserdata(L, 2);
  e->L = L;
  encode_value(e, 1, 0);
  return 0;
}

/* encode(v): JSON text. Integers are written exactly. Raises on what JSON cannot hold
   (functions, NaN, non-string keys, cycles). */
static int json_encode(lua_State *L) {
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  encoder e = {L, {NULL, 0, 0, 0, 0}};
  lua_pushcfunction(L, do_encode);
  lua_pushvalue(L, 1);
  lua_pushlightuserdata(L, &e);
  int status = lua_pcall(L, 2, 0, 0);
  if (status == LUA_OK) lua_pushlstring(L, coord_buf_head(&e.out), coord_buf_unread(&e.out));
  coord_buf_free(&e.out);
  if (status != LUA_OK) return lua_error(L);
  return 1;
}

void coord_json_register(lua_State *L) {
  static const luaL_Reg fns[] = {{"json_decode", json_decode}, {"json_encode", json_encode}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
}
