/* pick.c: reads chosen fields of a JSON text without decoding the rest. A picker is compiled
   once from paths ("header.revision:i", "1.Value:B"); json_pick(text, picker) checks that the
   whole text is JSON (as strictly as json.c's decoder) and returns true and the picked values
   in path order, converted, with nil for those absent. When the text is not JSON, is not an
   object or array, a picked value has another type than its path asks for, a path's
   container is not of its kind, a picked name repeats, or a string to pick has escapes, it
   returns nil: the caller then decodes the whole text. */
#include <stdint.h>
#include <string.h>
#include "codec.h"
#include "pick.h"
#include "jsonlex.h"

#define MAX_NODES 32
#define MAX_SLOTS 16
#define MAX_KEY 48
#define MAX_DEPTH 512
#define PICKER "coord.json_picker"

/* One step of a path: an object member (key) or, for a decimal step, an array element. */
typedef struct node {
  char key[MAX_KEY];
  size_t klen;
  lua_Integer index; /* >= 1: an array element; 0: an object member */
  int child, sibling; /* first child and next sibling, -1 for none */
  int slot;           /* the value's place among the results (1-based), 0 for none */
  char conv;          /* what the value must be, see json_picker */
} node;

typedef struct picker {
  int nodes, slots;
  node node[MAX_NODES]; /* node[0] is the text's top value */
} picker;

typedef struct scan {
  lua_State *L;
  const char *p, *end;
  const picker *pk;
  int depth, base;
  uint32_t seen; /* nodes already met: a repeated one makes the pick fail */
} scan;

static int add_node(lua_State *L, picker *pk, int parent, const char *key, size_t klen) {
  for (int c = pk->node[parent].child; c >= 0; c = pk->node[c].sibling) {
    if (pk->node[c].klen == klen && memcmp(pk->node[c].key, key, klen) == 0) return c;
  }
  if (pk->nodes == MAX_NODES) luaL_error(L, "json_picker: more than %d path steps", MAX_NODES);
  if (klen == 0 || klen >= MAX_KEY) luaL_error(L, "json_picker: empty or too long path step");
  node *n = &pk->node[pk->nodes];
  memcpy(n->key, key, klen);
  n->klen = klen;
  n->index = 0;
  for (size_t i = 0; i < klen; i++) {
    if (key[i] < '0' || key[i] > '9' || n->index > 1000000) {
      n->index = 0;
      break;
    }
    n->index = n->index * 10 + (key[i] - '0');
  }
  n->child = -1;
  n->slot = 0;
  n->conv = 0;
  n->sibling = pk->node[parent].child;
  pk->node[parent].child = pk->nodes;
  return pk->nodes++;
}

/* json_picker(paths): paths is a list of "step.step...:c" where a step is an object member's
   name or a decimal array index (1-based) and c says what the value must be and becomes:
   s a string without escapes; S the same or null (core.null); b base64 text, decoded; B the
   same or null; i a signed 64-bit decimal string, u an unsigned one (core.i64, core.u64);
   n a JSON integer (exact, as json_decode reads it); p anything: true when present. */
static int json_picker(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer npaths = luaL_len(L, 1);
  if (npaths < 1 || npaths > MAX_SLOTS) return luaL_argerror(L, 1, "1 to 16 paths expected");
  picker *pk = lua_newuserdatauv(L, sizeof *pk, 0);
  memset(pk, 0, sizeof *pk);
  pk->nodes = 1;
  pk->node[0].child = pk->node[0].sibling = -1;
  for (lua_Integer i = 1; i <= npaths; i++) {
    lua_geti(L, 1, i);
    size_t len;
    const char *path = lua_tolstring(L, -1, &len);
    if (!path) return luaL_argerror(L, 1, "paths must be strings");
    const char *colon = strrchr(path, ':');
    if (!colon || colon[1] == '\0' || colon[2] != '\0' || !strchr("sSbBiunp", colon[1]))
      return luaL_error(L, "json_picker: path '%s' must end in ':' and one of sSbBiunp", path);
    int at = 0;
    const char *s = path;
    while (s < colon) {
      const char *dot = memchr(s, '.', (size_t)(colon - s));
      const char *e = dot ? dot : colon;
      at = add_node(L, pk, at, s, (size_t)(e - s));
      s = e + 1;
    }
    if (at == 0 || pk->node[at].slot) return luaL_error(L, "json_picker: path '%s' empty or repeated", path);
    pk->node[at].slot = (int)i;
    pk->node[at].conv = colon[1];
    lua_pop(L, 1);
  }
  pk->slots = (int)npaths;
  luaL_setmetatable(L, PICKER);
  return 1;
}

static void skip_ws(scan *s) {
  s->p = coord_json_ws(s->p, s->end);
}

/* s->p is just past the opening quote; leaves it past the closing one. The string's text is
   [*str, *str + *len) when it has no escapes (*escaped = 0). 0 when it is not valid. */
static int string_end(scan *s, const char **str, size_t *len, int *escaped) {
  const char *at, *why;
  const char *q = coord_json_string(s->p, s->end, escaped, &at, &why);
  if (q == NULL) return 0;
  *str = s->p;
  *len = (size_t)(q - s->p);
  s->p = q + 1;
  return 1;
}

/* A number as json.c reads it; *integer and *v when it is an integer json_decode makes exact. */
static int number_end(scan *s, int *integer, lua_Integer *v) {
  int64_t x;
  const char *why;
  const char *p = coord_json_number(s->p, s->end, integer, &x, &why);
  if (p == NULL) return 0;
  *v = (lua_Integer)x;
  s->p = p;
  return 1;
}

static int literal(scan *s, const char *word, size_t n) {
  const char *p = coord_json_literal(s->p, s->end, word, n);
  if (p == NULL) return 0;
  s->p = p;
  return 1;
}

/* Converts a picked string into slot: base64 as core.b64decode reads it; a signed ('i') or
   unsigned ('u') decimal as core.i64 and core.u64 read it. */
static int convert(scan *s, char conv, const char *str, size_t len, int slot) {
  lua_State *L = s->L;
  if (conv == 'i' || conv == 'u') {
    int neg = conv == 'i' && len > 0 && str[0] == '-';
    uint64_t v;
    uint64_t limit = conv == 'u' ? UINT64_MAX : neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    if (coord_parse_decimal(str + neg, len - (size_t)neg, limit, &v) != NULL) return 0;
    lua_pushinteger(L, neg ? (lua_Integer)(0 - v) : (lua_Integer)v);
    lua_replace(L, s->base + slot);
    return 1;
  }
  /* (decoded straight from the text: no string of the base64 text, no Lua call) */
  if (!coord_b64_push(L, str, len)) return 0;
  lua_replace(L, s->base + slot);
  return 1;
}

static int value(scan *s, int nd);

/* An object or array at s->p; nd is its node (-1: nothing in it is picked). */
static int container(scan *s, int nd) {
  char close = *s->p == '{' ? '}' : ']';
  int is_object = close == '}';
  if (nd >= 0 && s->pk->node[nd].child >= 0) {
    /* the kind of container the first child's step wants */
    int c = s->pk->node[nd].child;
    if ((s->pk->node[c].index > 0) == is_object) return 0;
  }
  if (++s->depth > MAX_DEPTH) return 0;
  s->p++;
  skip_ws(s);
  if (s->p < s->end && *s->p == close) {
    s->p++;
    s->depth--;
    return 1;
  }
  lua_Integer k = 0;
  for (;;) {
    int child = -1;
    skip_ws(s);
    if (is_object) {
      const char *key;
      size_t klen;
      int escaped;
      if (s->p >= s->end || *s->p != '"') return 0;
      s->p++;
      if (!string_end(s, &key, &klen, &escaped)) return 0;
      if (nd >= 0) {
        for (int c = s->pk->node[nd].child; c >= 0; c = s->pk->node[c].sibling) {
          if (escaped) return 0; /* a name to compare could hide behind an escape */
          const node *n = &s->pk->node[c];
          if (n->klen == klen && memcmp(n->key, key, klen) == 0) child = c;
        }
      }
      skip_ws(s);
      if (s->p >= s->end || *s->p != ':') return 0;
      s->p++;
      skip_ws(s);
    } else if (nd >= 0) {
      k++;
      for (int c = s->pk->node[nd].child; c >= 0; c = s->pk->node[c].sibling) {
        if (s->pk->node[c].index == k) child = c;
      }
    }
    if (!value(s, child)) return 0;
    skip_ws(s);
    if (s->p < s->end && *s->p == ',') {
      s->p++;
      continue;
    }
    if (s->p < s->end && *s->p == close) {
      s->p++;
      break;
    }
    return 0;
  }
  s->depth--;
  return 1;
}

static int value(scan *s, int nd) {
  if (s->p >= s->end) return 0;
  const node *n = NULL;
  if (nd >= 0) {
    if (s->seen & (1u << nd)) return 0;
    s->seen |= 1u << nd;
    n = &s->pk->node[nd];
  }
  char conv = n && n->slot ? n->conv : 0;
  char c = *s->p;
  if (c == '{' || c == '[') {
    if (conv && conv != 'p') return 0;
    if (conv == 'p') {
      lua_pushboolean(s->L, 1);
      lua_replace(s->L, s->base + n->slot);
    }
    return container(s, nd);
  }
  if (n && n->child >= 0) return 0; /* a path goes on into a value that is no container */
  switch (c) {
    case '"': {
      const char *str;
      size_t len;
      int escaped;
      s->p++;
      if (!string_end(s, &str, &len, &escaped)) return 0;
      if (!conv) return 1;
      if (conv == 'p') break;
      if (escaped || conv == 'n') return 0;
      if (conv == 's' || conv == 'S') {
        lua_pushlstring(s->L, str, len);
        lua_replace(s->L, s->base + n->slot);
        return 1;
      }
      return convert(s, conv, str, len, n->slot);
    }
    case 't': if (!literal(s, "true", 4)) return 0; if (conv && conv != 'p') return 0; break;
    case 'f': if (!literal(s, "false", 5)) return 0; if (conv && conv != 'p') return 0; break;
    case 'n':
      if (!literal(s, "null", 4)) return 0;
      if (conv == 'S' || conv == 'B') {
        lua_pushlightuserdata(s->L, NULL);
        lua_replace(s->L, s->base + n->slot);
        return 1;
      }
      if (conv && conv != 'p') return 0;
      break;
    default: {
      int integer;
      lua_Integer v;
      if (!number_end(s, &integer, &v)) return 0;
      if (conv == 'n') {
        if (!integer) return 0;
        lua_pushinteger(s->L, v);
        lua_replace(s->L, s->base + n->slot);
        return 1;
      }
      if (conv && conv != 'p') return 0;
      break;
    }
  }
  if (conv == 'p') {
    lua_pushboolean(s->L, 1);
    lua_replace(s->L, s->base + n->slot);
  }
  return 1;
}

/* json_pick(text, picker): true and the picked values, or nil (see the top of this file). */
static int json_pick(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  const picker *pk = luaL_checkudata(L, 2, PICKER);
  luaL_checkstack(L, pk->slots + 8, "json_pick");
  lua_settop(L, 2);
  lua_pushboolean(L, 1);
  for (int i = 0; i < pk->slots; i++) lua_pushnil(L);
  scan s = {L, text, text + len, pk, 0, 3, 0};
  s.base = 3;
  skip_ws(&s);
  int ok = s.p < s.end && (*s.p == '{' || *s.p == '[') && value(&s, 0);
  skip_ws(&s);
  if (!ok || s.p != s.end) {
    luaL_pushfail(L);
    return 1;
  }
  return pk->slots + 1;
}

void coord_pick_register(lua_State *L) {
  luaL_newmetatable(L, PICKER);
  lua_pop(L, 1);
  lua_pushcfunction(L, json_picker);
  lua_setfield(L, -2, "json_picker");
  lua_pushcfunction(L, json_pick);
  lua_setfield(L, -2, "json_pick");
}
