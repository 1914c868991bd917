/* pb.c: a generic protobuf (proto3 wire format) codec driven by schemas given from Lua.
   pb_compile turns a table of message definitions into handles; pb_encode(handle, table)
   gives the wire bytes, pb_decode(handle, bytes) a table (or nil and a message). No message
   type is known here: the etcd schemas are in lua/coord/etcd/pb_schema.lua. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "buffer.h"
#include "pb.h"

#define MSG_MT "coord.pb.message"
#define MAX_DEPTH 64
#define MAX_NUMBER 536870911u /* 2^29 - 1, the largest field number */

enum {
  T_INT32, T_INT64, T_UINT32, T_UINT64, T_SINT32, T_SINT64, T_BOOL, T_ENUM,
  T_FIXED32, T_SFIXED32, T_FLOAT, T_FIXED64, T_SFIXED64, T_DOUBLE,
  T_STRING, T_BYTES, T_MESSAGE
};

static const char *const type_names[] = {
  "int32", "int64", "uint32", "uint64", "sint32", "sint64", "bool", "enum",
  "fixed32", "sfixed32", "float", "fixed64", "sfixed64", "double",
  "string", "bytes", NULL
};

/* the wire type each field type travels as */
static const unsigned char wire_of[] = {0, 0, 0, 0, 0, 0, 0, 0, 5, 5, 5, 1, 1, 1, 2, 2, 2};

typedef struct pb_field {
  uint32_t number;
  unsigned char type;
  unsigned char repeated;
  short oneof;   /* 1-based group within its message, 0 for none */
  int name;      /* index of the field's name in the set's name table */
  int msg;       /* T_MESSAGE: index of the field's message type in the set */
} pb_field;

typedef struct pb_msg {
  pb_field *fields; /* sorted by number */
  int nfields;
  int name;
} pb_msg;

/* One userdata block: the set, then its messages, then all their fields. Its user value
   is the name table (message and field names as Lua strings, pushed by index). */
typedef struct pb_set {
  int nmsgs;
  pb_msg *msgs;
} pb_set;

typedef struct pb_handle {
  int msg;
} pb_handle;

static int packable(int type) { return type < T_STRING; }

/* ---- schema compilation ---- */

static int cmp_field(const void *a, const void *b) {
  uint32_t x = ((const pb_field *)a)->number, y = ((const pb_field *)b)->number;
  return x < y ? -1 : x > y;
}

/* Appends the string at idx to the name table at `names`; returns its index. */
static int add_name(lua_State *L, int names, int idx) {
  int n = (int)lua_rawlen(L, names) + 1;
  lua_pushvalue(L, idx);
  lua_rawseti(L, names, n);
  return n;
}

/* Fills one message from its definition (the table on top of the stack). */
static void compile_message(lua_State *L, pb_msg *m, const char *mname, int index_of, int names) {
  int def = lua_gettop(L);
  lua_newtable(L); /* oneof name -> group number */
  int groups = lua_gettop(L), ngroups = 0;
  lua_newtable(L); /* field names seen */
  int seen = lua_gettop(L);
  for (int i = 0; i < m->nfields; i++) {
    pb_field *f = &m->fields[i];
    if (lua_rawgeti(L, def, i + 1) != LUA_TTABLE) luaL_error(L, "pb_compile: %s field #%d: table expected", mname, i + 1);
    int fd = lua_gettop(L);
    int isnum;
    lua_rawgeti(L, fd, 1);
    lua_Integer num = lua_tointegerx(L, -1, &isnum);
    if (!isnum || num < 1 || num > (lua_Integer)MAX_NUMBER)
      luaL_error(L, "pb_compile: %s field #%d: field number expected", mname, i + 1);
    f->number = (uint32_t)num;
    if (lua_rawgeti(L, fd, 2) != LUA_TSTRING) luaL_error(L, "pb_compile: %s field #%d: name expected", mname, i + 1);
    const char *fname = lua_tostring(L, -1);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, seen) != LUA_TNIL) luaL_error(L, "pb_compile: %s.%s: name used twice", mname, fname);
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_pushboolean(L, 1);
    lua_rawset(L, seen);
    f->name = add_name(L, names, -1);
    if (lua_rawgeti(L, fd, 3) != LUA_TSTRING) luaL_error(L, "pb_compile: %s.%s: type expected", mname, fname);
    const char *tname = lua_tostring(L, -1);
    int t = 0;
    while (type_names[t] && strcmp(type_names[t], tname) != 0) t++;
    f->type = (unsigned char)t;
    f->msg = -1;
    if (!type_names[t]) {
      lua_pushvalue(L, -1);
      if (lua_rawget(L, index_of) != LUA_TNUMBER) luaL_error(L, "pb_compile: %s.%s: unknown type '%s'", mname, fname, tname);
      f->msg = (int)lua_tointeger(L, -1);
      f->type = T_MESSAGE;
      lua_pop(L, 1);
    }
    int label = lua_rawgeti(L, fd, 4);
    if (label != LUA_TNIL && !(label == LUA_TSTRING && strcmp(lua_tostring(L, -1), "repeated") == 0))
      luaL_error(L, "pb_compile: %s.%s: the 4th entry must be \"repeated\" or absent", mname, fname);
    f->repeated = label != LUA_TNIL;
    f->oneof = 0;
    if (lua_getfield(L, fd, "oneof") != LUA_TNIL) {
      if (lua_type(L, -1) != LUA_TSTRING || f->repeated)
        luaL_error(L, "pb_compile: %s.%s: oneof must name a group of singular fields", mname, fname);
      lua_pushvalue(L, -1);
      if (lua_rawget(L, groups) == LUA_TNUMBER) {
        f->oneof = (short)lua_tointeger(L, -1);
      } else {
        if (ngroups == 32) luaL_error(L, "pb_compile: %s: more than 32 oneofs", mname);
        f->oneof = (short)++ngroups;
        lua_pushvalue(L, -2);
        lua_pushinteger(L, ngroups);
        lua_rawset(L, groups);
      }
    }
    lua_settop(L, seen);
  }
  qsort(m->fields, (size_t)m->nfields, sizeof *m->fields, cmp_field);
  for (int i = 1; i < m->nfields; i++)
    if (m->fields[i].number == m->fields[i - 1].number)
      luaL_error(L, "pb_compile: %s: field number %d used twice", mname, (int)m->fields[i].number);
  lua_settop(L, def);
}

/* pb_compile(defs): defs maps message names to lists of fields
   { number, name, type [, "repeated"] [, oneof = "group"] }; type is a scalar type name or
   the name of a message in defs. Returns a table of message handles by name. Raises on a
   malformed definition. */
static int pb_compile(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_newtable(L); /* 2: message name -> index */
  lua_newtable(L); /* 3: the name table */
  int nmsgs = 0;
  size_t nfields = 0;
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TTABLE)
      luaL_error(L, "pb_compile: message names must be strings and definitions tables");
    nfields += lua_rawlen(L, -1);
    lua_pushvalue(L, -2);
    lua_pushinteger(L, nmsgs++);
    lua_rawset(L, 2);
    lua_pop(L, 1);
  }
  pb_set *set = lua_newuserdatauv(L, sizeof(pb_set) + (size_t)nmsgs * sizeof(pb_msg) + nfields * sizeof(pb_field), 1);
  int setidx = lua_gettop(L); /* 4 */
  set->nmsgs = nmsgs;
  set->msgs = (pb_msg *)(set + 1);
  pb_field *next = (pb_field *)(set->msgs + nmsgs);
  for (int i = 0; i < nmsgs; i++) set->msgs[i].nfields = 0, set->msgs[i].fields = next, set->msgs[i].name = 0;
  lua_newtable(L); /* 5: the result */
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    lua_pushvalue(L, -2);
    lua_rawget(L, 2);
    pb_msg *m = &set->msgs[lua_tointeger(L, -1)];
    lua_pop(L, 1);
    m->name = add_name(L, 3, -2);
    m->nfields = (int)lua_rawlen(L, -1);
    m->fields = next;
    next += m->nfields;
    compile_message(L, m, lua_tostring(L, -2), 2, 3);
    pb_handle *h = lua_newuserdatauv(L, sizeof *h, 1);
    h->msg = (int)(m - set->msgs);
    luaL_setmetatable(L, MSG_MT);
    lua_pushvalue(L, setidx);
    lua_setiuservalue(L, -2, 1);
    lua_pushvalue(L, -3);
    lua_insert(L, -2);
    lua_rawset(L, 5);
    lua_pop(L, 1);
  }
  lua_pushvalue(L, 3);
  lua_setiuservalue(L, setidx, 1);
  return 1;
}

/* Pushes the set of a handle and its name table; returns the set. */
static pb_set *handle_set(lua_State *L, int arg, pb_handle **h) {
  *h = luaL_checkudata(L, arg, MSG_MT);
  lua_getiuservalue(L, arg, 1);
  pb_set *set = lua_touserdata(L, -1);
  lua_getiuservalue(L, -1, 1);
  return set;
}

static int handle_tostring(lua_State *L) {
  pb_handle *h;
  pb_set *set = handle_set(L, 1, &h);
  lua_rawgeti(L, -1, set->msgs[h->msg].name);
  lua_pushfstring(L, "pb message %s", lua_tostring(L, -1));
  return 1;
}

/* ---- decoding ---- */

typedef struct decoder {
  lua_State *L;
  const pb_set *set;
  const unsigned char *start;
  int names;
  int defaults; /* fill absent singular scalars with their proto3 defaults */
  const char *err;
  const unsigned char *errat;
} decoder;

static int fail(decoder *d, const unsigned char *at, const char *what) {
  d->err = what;
  d->errat = at;
  return -1;
}

/* Reads a varint of at most 10 bytes whose value fits in 64 bits. */
static inline int read_varint(decoder *d, const unsigned char **pp, const unsigned char *end, uint64_t *out) {
  const unsigned char *p = *pp;
  if (p < end && *p < 0x80) { /* tags and small values: one byte */
    *out = *p;
    *pp = p + 1;
    return 0;
  }
  uint64_t v = 0;
  for (int i = 0; i < 10; i++) {
    if (p >= end) return fail(d, *pp, "truncated varint");
    unsigned b = *p++;
    if (i == 9 && b > 1) return fail(d, *pp, "varint overflows 64 bits");
    v |= (uint64_t)(b & 0x7f) << (7 * i);
    if (!(b & 0x80)) break;
  }
  *pp = p;
  *out = v;
  return 0;
}

static int read_length(decoder *d, const unsigned char **pp, const unsigned char *end, size_t *len) {
  const unsigned char *at = *pp;
  uint64_t v;
  if (read_varint(d, pp, end, &v)) return -1;
  if (v > (uint64_t)(end - *pp)) return fail(d, at, "length past the end");
  *len = (size_t)v;
  return 0;
}

static uint64_t le(const unsigned char *p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

/* Skips the value of an unknown field whose tag began at tagat. */
static int skip_field(decoder *d, const unsigned char *tagat, const unsigned char **pp, const unsigned char *end,
                      uint64_t tag, int depth) {
  const unsigned char *at = *pp;
  uint64_t v;
  size_t n;
  switch (tag & 7) {
    case 0: return read_varint(d, pp, end, &v);
    case 1: n = 8; break;
    case 5: n = 4; break;
    case 2:
      if (read_length(d, pp, end, &n)) return -1;
      *pp += n;
      return 0;
    case 3: /* a group: skip to its end-group tag */
      if (depth >= MAX_DEPTH) return fail(d, tagat, "nested too deeply");
      for (;;) {
        uint64_t t;
        const unsigned char *tat = *pp;
        if (read_varint(d, pp, end, &t)) return -1;
        if ((t & 7) == 4) return (t >> 3) == (tag >> 3) ? 0 : fail(d, tat, "mismatched end of group");
        if (skip_field(d, tat, pp, end, t, depth + 1)) return -1;
      }
    case 4: return fail(d, tagat, "end of group without a start");
    default: return fail(d, tagat, "invalid wire type");
  }
  if ((size_t)(end - *pp) < n) return fail(d, at, "truncated fixed-width value");
  *pp += n;
  return 0;
}

static const pb_field *find_field(const pb_msg *m, uint32_t number) {
  int lo = 0, hi = m->nfields - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    uint32_t n = m->fields[mid].number;
    if (n == number) return &m->fields[mid];
    if (n < number) lo = mid + 1;
    else hi = mid - 1;
  }
  return NULL;
}

static int decode_message(decoder *d, int msg, const unsigned char *p, const unsigned char *end, int depth, int fresh);

/* Reads one value of field f (wire type already checked) and pushes it. */
static int push_value(decoder *d, const pb_field *f, const unsigned char **pp, const unsigned char *end, int depth) {
  lua_State *L = d->L;
  const unsigned char *at = *pp;
  uint64_t v;
  size_t n;
  switch (wire_of[f->type]) {
    case 0:
      if (read_varint(d, pp, end, &v)) return -1;
      switch (f->type) {
        case T_INT32: case T_ENUM: lua_pushinteger(L, (int32_t)(uint32_t)v); break;
        case T_UINT32: lua_pushinteger(L, (uint32_t)v); break;
        case T_SINT32: {
          uint32_t u = (uint32_t)v;
          lua_pushinteger(L, (int32_t)((u >> 1) ^ (0u - (u & 1))));
          break;
        }
        case T_SINT64: lua_pushinteger(L, (lua_Integer)((v >> 1) ^ (0 - (v & 1)))); break;
        case T_BOOL: lua_pushboolean(L, v != 0); break;
        default: lua_pushinteger(L, (lua_Integer)v); break; /* int64, uint64: the same 64 bits */
      }
      return 0;
    case 5: {
      if ((size_t)(end - *pp) < 4) return fail(d, at, "truncated fixed32");
      uint32_t u = (uint32_t)le(*pp, 4);
      *pp += 4;
      if (f->type == T_FLOAT) {
        float x;
        memcpy(&x, &u, 4);
        lua_pushnumber(L, (lua_Number)x);
      } else {
        lua_pushinteger(L, f->type == T_SFIXED32 ? (lua_Integer)(int32_t)u : (lua_Integer)u);
      }
      return 0;
    }
    case 1:
      if ((size_t)(end - *pp) < 8) return fail(d, at, "truncated fixed64");
      v = le(*pp, 8);
      *pp += 8;
      if (f->type == T_DOUBLE) {
        double x;
        memcpy(&x, &v, 8);
        lua_pushnumber(L, x);
      } else {
        lua_pushinteger(L, (lua_Integer)v);
      }
      return 0;
    default:
      if (read_length(d, pp, end, &n)) return -1;
      if (f->type != T_MESSAGE) {
        lua_pushlstring(L, (const char *)*pp, n);
        *pp += n;
        return 0;
      }
      lua_createtable(L, 0, d->set->msgs[f->msg].nfields);
      if (decode_message(d, f->msg, *pp, *pp + n, depth + 1, 1)) return -1;
      *pp += n;
      return 0;
  }
}

/* Decodes the bytes [p, end) into the table on top of the stack (fresh: a new table, not one
   being merged into). */
static int decode_message(decoder *d, int msg, const unsigned char *p, const unsigned char *end, int depth, int fresh) {
  lua_State *L = d->L;
  const pb_msg *m = &d->set->msgs[msg];
  if (depth > MAX_DEPTH) return fail(d, p, "nested too deeply");
  if (!lua_checkstack(L, 8)) return fail(d, p, "nested too deeply");
  int t = lua_gettop(L);
  if (d->defaults && fresh) { /* set first, overwritten by what the wire holds */
    for (int i = 0; i < m->nfields; i++) {
      const pb_field *f = &m->fields[i];
      if (f->repeated || f->oneof || f->type == T_MESSAGE) continue;
      lua_rawgeti(L, d->names, f->name);
      if (f->type == T_BOOL) lua_pushboolean(L, 0);
      else if (f->type == T_STRING || f->type == T_BYTES) lua_pushliteral(L, "");
      else if (f->type == T_FLOAT || f->type == T_DOUBLE) lua_pushnumber(L, 0);
      else lua_pushinteger(L, 0);
      lua_rawset(L, t);
    }
  }
  while (p < end) {
    const unsigned char *at = p;
    uint64_t tag;
    if (read_varint(d, &p, end, &tag)) return -1;
    if (tag >> 3 == 0 || tag >> 3 > MAX_NUMBER) return fail(d, at, "invalid field number");
    const pb_field *f = find_field(m, (uint32_t)(tag >> 3));
    unsigned wt = (unsigned)(tag & 7);
    if (f == NULL) {
      if (skip_field(d, at, &p, end, tag, depth)) return -1;
      continue;
    }
    lua_rawgeti(L, d->names, f->name);
    if (f->repeated) {
      lua_pushvalue(L, -1);
      if (lua_rawget(L, t) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_createtable(L, 4, 0);
        lua_pushvalue(L, -2);
        lua_pushvalue(L, -2);
        lua_rawset(L, t);
      }
      lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
      if (wt == 2 && packable(f->type)) {
        size_t len;
        if (read_length(d, &p, end, &len)) return -1;
        const unsigned char *q = p;
        p += len;
        while (q < p) {
          if (push_value(d, f, &q, p, depth)) return -1;
          lua_rawseti(L, -2, ++n);
        }
      } else if (wt == wire_of[f->type]) {
        if (push_value(d, f, &p, end, depth)) return -1;
        lua_rawseti(L, -2, ++n);
      } else {
        return fail(d, at, "wrong wire type for a known field");
      }
      lua_settop(L, t);
      continue;
    }
    if (wt != wire_of[f->type]) return fail(d, at, "wrong wire type for a known field");
    if (f->type == T_MESSAGE) { /* a message seen twice is merged, as protobuf says */
      lua_pushvalue(L, -1);
      if (lua_rawget(L, t) == LUA_TTABLE) {
        size_t len;
        if (read_length(d, &p, end, &len)) return -1;
        if (decode_message(d, f->msg, p, p + len, depth + 1, 0)) return -1;
        p += len;
        lua_rawset(L, t);
        continue;
      }
      lua_pop(L, 1);
    }
    if (push_value(d, f, &p, end, depth)) return -1;
    lua_rawset(L, t);
    if (f->oneof) { /* the last member of a oneof seen wins */
      for (int i = 0; i < m->nfields; i++) {
        if (m->fields[i].oneof != f->oneof || &m->fields[i] == f) continue;
        lua_rawgeti(L, d->names, m->fields[i].name);
        lua_pushnil(L);
        lua_rawset(L, t);
      }
    }
  }
  return 0;
}

/* pb_decode(handle, bytes [, defaults]): the message as a table, or nil and "invalid protobuf
   at offset N: why". Fields absent on the wire are absent, unless `defaults` is true: then every
   singular scalar outside a oneof is there with its proto3 default (0, false, ""), the shape
   the JSON path's tables have. Never reads outside `bytes`. */
static int pb_decode(lua_State *L) {
  pb_handle *h;
  size_t n;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 2, &n);
  int defaults = lua_toboolean(L, 3);
  lua_settop(L, 2);
  pb_set *set = handle_set(L, 1, &h);
  decoder d = {L, set, s, lua_gettop(L), defaults, NULL, NULL};
  lua_createtable(L, 0, set->msgs[h->msg].nfields);
  if (decode_message(&d, h->msg, s, s + n, 1, 1) == 0) return 1;
  lua_settop(L, d.names);
  luaL_pushfail(L);
  lua_pushfstring(L, "invalid protobuf at offset %d: %s", (int)(d.errat - d.start), d.err);
  return 2;
}

/* ---- encoding ---- */

typedef struct encoder {
  lua_State *L;
  const pb_set *set;
  coord_buf out;
} encoder;

#define NAMES 2 /* stack index of the name table while encoding */

static void put(encoder *e, const void *p, size_t n) {
  if (coord_buf_append(&e->out, p, n) != 0) luaL_error(e->L, "out of memory");
}

static size_t varint_size(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) v >>= 7, n++;
  return n;
}

static void write_varint(unsigned char *p, uint64_t v) {
  while (v >= 0x80) *p++ = (unsigned char)(v | 0x80), v >>= 7;
  *p = (unsigned char)v;
}

static void put_varint(encoder *e, uint64_t v) {
  unsigned char b[10];
  write_varint(b, v);
  put(e, b, varint_size(v));
}

static void put_le(encoder *e, uint64_t v, int n) {
  unsigned char b[8];
  for (int i = 0; i < n; i++) b[i] = (unsigned char)(v >> (8 * i));
  put(e, b, (size_t)n);
}

static int field_error(encoder *e, int msg, const pb_field *f, const char *what) {
  lua_State *L = e->L;
  lua_rawgeti(L, NAMES, e->set->msgs[msg].name);
  lua_rawgeti(L, NAMES, f->name);
  return luaL_error(L, "pb_encode: %s.%s: %s", lua_tostring(L, -2), lua_tostring(L, -1), what);
}

static void encode_message(encoder *e, int msg, int t, int depth);

/* The value at idx as field f's wire payload (no tag). Returns 0 when it is the proto3
   default (so a singular field outside a oneof can be left out). */
static int put_value(encoder *e, int msg, const pb_field *f, int idx, int depth) {
  lua_State *L = e->L;
  int ltype = lua_type(L, idx);
  if (f->type == T_STRING || f->type == T_BYTES) {
    if (ltype != LUA_TSTRING) field_error(e, msg, f, "string expected");
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    put_varint(e, n);
    put(e, s, n);
    return n != 0;
  }
  if (f->type == T_MESSAGE) {
    if (ltype != LUA_TTABLE) field_error(e, msg, f, "table expected");
    if (depth >= MAX_DEPTH) field_error(e, msg, f, "nested too deeply (a cycle?)");
    /* the length goes before the body: reserve one byte, widen it when the body is longer */
    size_t at = e->out.len;
    put(e, "", 1);
    encode_message(e, f->msg, idx, depth + 1);
    size_t body = e->out.len - at - 1, w = varint_size(body);
    if (w > 1) {
      put(e, "\0\0\0\0\0\0\0\0\0", w - 1);
      memmove(e->out.data + at + w, e->out.data + at + 1, body);
    }
    write_varint((unsigned char *)e->out.data + at, body);
    return 1;
  }
  if (f->type == T_BOOL) {
    if (ltype != LUA_TBOOLEAN) field_error(e, msg, f, "boolean expected");
    int b = lua_toboolean(L, idx);
    put_varint(e, (uint64_t)b);
    return b;
  }
  if (f->type == T_FLOAT || f->type == T_DOUBLE) {
    if (ltype != LUA_TNUMBER) field_error(e, msg, f, "number expected");
    double x = (double)lua_tonumber(L, idx);
    uint64_t bits;
    if (f->type == T_FLOAT) {
      float y = (float)x;
      uint32_t u;
      memcpy(&u, &y, 4);
      bits = u;
      put_le(e, bits, 4);
    } else {
      memcpy(&bits, &x, 8);
      put_le(e, bits, 8);
    }
    return bits != 0;
  }
  int isint;
  lua_Integer i = lua_tointegerx(L, idx, &isint);
  if (ltype != LUA_TNUMBER || !isint) field_error(e, msg, f, "integer expected");
  uint64_t u = (uint64_t)i;
  switch (f->type) {
    case T_INT32: case T_ENUM: case T_SINT32: case T_SFIXED32:
      if (i < INT32_MIN || i > INT32_MAX) field_error(e, msg, f, "out of the int32 range");
      break;
    case T_UINT32: case T_FIXED32:
      if (i < 0 || i > (lua_Integer)UINT32_MAX) field_error(e, msg, f, "out of the uint32 range");
      break;
    default: break;
  }
  switch (f->type) {
    case T_SINT32: {
      uint32_t w = (uint32_t)u;
      put_varint(e, (w << 1) ^ (0u - (w >> 31)));
      break;
    }
    case T_SINT64: put_varint(e, (u << 1) ^ (0 - (u >> 63))); break;
    case T_FIXED32: case T_SFIXED32: put_le(e, u, 4); break;
    case T_FIXED64: case T_SFIXED64: put_le(e, u, 8); break;
    default: put_varint(e, u); break; /* int32 negatives go sign-extended, as protobuf says */
  }
  return i != 0;
}

static void encode_message(encoder *e, int msg, int t, int depth) {
  lua_State *L = e->L;
  const pb_msg *m = &e->set->msgs[msg];
  luaL_checkstack(L, 6, "pb_encode nesting");
  unsigned oneofs_set = 0; /* a bit per oneof group (the first 32) */
  for (int i = 0; i < m->nfields; i++) {
    const pb_field *f = &m->fields[i];
    lua_rawgeti(L, NAMES, f->name);
    if (lua_rawget(L, t) == LUA_TNIL) {
      lua_pop(L, 1);
      continue;
    }
    int v = lua_gettop(L);
    uint64_t key = (uint64_t)f->number << 3;
    if (f->repeated) {
      if (lua_type(L, v) != LUA_TTABLE) field_error(e, msg, f, "table (a list) expected");
      lua_Integer n = (lua_Integer)lua_rawlen(L, v);
      if (n > 0 && packable(f->type)) { /* proto3 packs repeated scalars: one record, its length first */
        put_varint(e, key | 2);
        size_t at = e->out.len;
        put(e, "", 1);
        for (lua_Integer k = 1; k <= n; k++) {
          lua_rawgeti(L, v, k);
          put_value(e, msg, f, v + 1, depth);
          lua_pop(L, 1);
        }
        size_t body = e->out.len - at - 1, w = varint_size(body);
        if (w > 1) {
          put(e, "\0\0\0\0\0\0\0\0\0", w - 1);
          memmove(e->out.data + at + w, e->out.data + at + 1, body);
        }
        write_varint((unsigned char *)e->out.data + at, body);
      } else {
        for (lua_Integer k = 1; k <= n; k++) {
          lua_rawgeti(L, v, k);
          put_varint(e, key | wire_of[f->type]);
          put_value(e, msg, f, v + 1, depth);
          lua_pop(L, 1);
        }
      }
      lua_pop(L, 1);
      continue;
    }
    if (f->oneof) {
      unsigned bit = 1u << ((f->oneof - 1) & 31);
      if (oneofs_set & bit) field_error(e, msg, f, "another field of its oneof is set too");
      oneofs_set |= bit;
    }
    size_t mark = e->out.len;
    put_varint(e, key | wire_of[f->type]);
    /* proto3: a singular scalar at its default is left out, a oneof member or message never */
    if (!put_value(e, msg, f, v, depth) && !f->oneof && f->type != T_MESSAGE) e->out.len = mark;
    lua_pop(L, 1);
  }
}

static int do_encode(lua_State *L) {
  encoder *e = lua_touserdata(L, 3);
  pb_handle *h = lua_touserdata(L, 4);
  e->L = L;
  encode_message(e, h->msg, 1, 1);
  return 0;
}

/* pb_encode(handle, table): the wire bytes of the message. Keys the schema does not name are
   ignored; a value of the wrong type (or out of its field's range) raises. */
static int pb_encode(lua_State *L) {
  pb_handle *h;
  luaL_checktype(L, 2, LUA_TTABLE);
  pb_set *set = handle_set(L, 1, &h);
  char storage[256];
  encoder e = {L, set, {NULL, 0, 0, 0, 0}};
  coord_buf_init(&e.out, storage, sizeof storage);
  lua_pushcfunction(L, do_encode);
  lua_pushvalue(L, 2);                   /* 1: the table */
  lua_pushvalue(L, -3);                  /* 2: the name table */
  lua_pushlightuserdata(L, &e);          /* 3 */
  lua_pushlightuserdata(L, h);           /* 4 */
  int status = lua_pcall(L, 4, 0, 0);
  if (status == LUA_OK) lua_pushlstring(L, coord_buf_head(&e.out), coord_buf_unread(&e.out));
  coord_buf_free(&e.out);
  if (status != LUA_OK) return lua_error(L);
  return 1;
}

void coord_pb_register(lua_State *L) {
  luaL_newmetatable(L, MSG_MT);
  lua_pushcfunction(L, handle_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  static const luaL_Reg fns[] = {
      {"pb_compile", pb_compile}, {"pb_encode", pb_encode}, {"pb_decode", pb_decode}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
