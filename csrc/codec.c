/* codec.c: base64 (RFC 4648, standard alphabet) and exact parsing of 64-bit decimal integers. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "codec.h"

static const char b64chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int b64encode(lua_State *L) {
  size_t n;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, (n + 2) / 3 * 4);
  size_t i, o = 0;
  for (i = 0; i + 2 < n; i += 3) {
    uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
    out[o++] = b64chars[v >> 18];
    out[o++] = b64chars[(v >> 12) & 63];
    out[o++] = b64chars[(v >> 6) & 63];
    out[o++] = b64chars[v & 63];
  }
  if (i < n) {
    uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0);
    out[o++] = b64chars[v >> 18];
    out[o++] = b64chars[(v >> 12) & 63];
    out[o++] = i + 1 < n ? b64chars[(v >> 6) & 63] : '=';
    out[o++] = '=';
  }
  luaL_pushresultsize(&b, o);
  return 1;
}

/* Each byte's 6-bit value, or 64 for a byte outside the alphabet. A table lookup per
   character instead of a chain of range tests: etcd keys and values and Consul values are
   decoded on every read. */
static const unsigned char b64values[256] = {
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 62, 64, 64, 64, 63,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 64, 64, 64, 64, 64, 64,
    64,  0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14,
    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 64, 64, 64, 64, 64,
    64, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
};

/* Decodes n bytes of padded or unpadded base64 into out (room for n / 4 * 3 + 3 bytes):
   the decoded length, or (size_t)-1 with *bad the offset of a bad character, or
   (size_t)-2 for a bad length. */
static size_t b64_decode(const unsigned char *s, size_t n, char *out, size_t *bad) {
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  size_t i = 0;
  /* whole groups of four characters first: three bytes each, one validity test per group */
  for (; i + 4 <= n; i += 4) {
    unsigned a = b64values[s[i]], b2 = b64values[s[i + 1]], c = b64values[s[i + 2]], d = b64values[s[i + 3]];
    if ((a | b2 | c | d) & 64) break; /* the loop below finds the bad character */
    uint32_t v = a << 18 | b2 << 12 | c << 6 | d;
    out[o++] = (char)(v >> 16);
    out[o++] = (char)(v >> 8);
    out[o++] = (char)v;
  }
  for (; i < n; i++) {
    unsigned v = b64values[s[i]];
    if (v == 64) {
      *bad = i;
      return (size_t)-1;
    }
    acc = acc << 6 | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (char)((acc >> bits) & 0xff);
    }
  }
  return o;
}

int coord_b64_push(lua_State *L, const char *text, size_t n) {
  const unsigned char *s = (const unsigned char *)text;
  while (n > 0 && s[n - 1] == '=') n--;
  if (n % 4 == 1) return 0;
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, n / 4 * 3 + 3);
  size_t bad, o = b64_decode(s, n, out, &bad);
  if (o == (size_t)-1) {
    luaL_pushresultsize(&b, 0);
    lua_pop(L, 1);
    return 0;
  }
  luaL_pushresultsize(&b, o);
  return 1;
}

/* Decodes padded or unpadded base64; returns nil and a message on any invalid input. */
static int b64decode(lua_State *L) {
  size_t n;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  while (n > 0 && s[n - 1] == '=') n--;
  if (n % 4 == 1) {
    luaL_pushfail(L);
    lua_pushliteral(L, "invalid base64: bad length");
    return 2;
  }
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, n / 4 * 3 + 3);
  size_t bad, o = b64_decode(s, n, out, &bad);
  if (o == (size_t)-1) {
    luaL_pushfail(L);
    lua_pushfstring(L, "invalid base64: bad character at offset %d", (int)bad);
    return 2;
  }
  luaL_pushresultsize(&b, o);
  return 1;
}

/* Parses an unsigned decimal string into *out; 0 on success, else a static message. */
static const char *parse_decimal(const char *s, size_t n, uint64_t limit, uint64_t *out) {
  uint64_t v = 0;
  if (n == 0) return "empty string";
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return "not a decimal integer";
    unsigned d = (unsigned)(s[i] - '0');
    if (v > (limit - d) / 10) return "out of range";
    v = v * 10 + d;
  }
  *out = v;
  return NULL;
}

/* parse_decimal for the other files (pick.c). */
const char *coord_parse_decimal(const char *s, size_t n, uint64_t limit, uint64_t *out) {
  return parse_decimal(s, n, limit, out);
}

/* u64(s): a decimal string up to 2^64-1 as the Lua integer with the same 64 bits.
   Integers pass through unchanged; anything else is nil plus a message. */
static int parse_u64(lua_State *L) {
  if (lua_isinteger(L, 1)) {
    lua_settop(L, 1);
    return 1;
  }
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  uint64_t v;
  const char *err = parse_decimal(s, n, UINT64_MAX, &v);
  if (err) {
    luaL_pushfail(L);
    lua_pushfstring(L, "invalid unsigned 64-bit integer '%s': %s", s, err);
    return 2;
  }
  lua_pushinteger(L, (lua_Integer)v);
  return 1;
}

/* i64(s): a signed decimal string within [-2^63, 2^63-1] as a Lua integer. */
static int parse_i64(lua_State *L) {
  if (lua_isinteger(L, 1)) {
    lua_settop(L, 1);
    return 1;
  }
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  int neg = n > 0 && s[0] == '-';
  uint64_t v;
  const char *err = parse_decimal(s + neg, n - (size_t)neg,
                                  neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX, &v);
  if (err) {
    luaL_pushfail(L);
    lua_pushfstring(L, "invalid 64-bit integer '%s': %s", s, err);
    return 2;
  }
  lua_pushinteger(L, neg ? (lua_Integer)(0 - v) : (lua_Integer)v);
  return 1;
}

/* u64tostring(i): the decimal text of i read as unsigned (the inverse of u64). */
static int u64tostring(lua_State *L) {
  lua_Integer i = luaL_checkinteger(L, 1);
  char buf[24];
  snprintf(buf, sizeof buf, "%llu", (unsigned long long)(uint64_t)i);
  lua_pushstring(L, buf);
  return 1;
}

void coord_codec_register(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"b64encode", b64encode}, {"b64decode", b64decode}, {"u64", parse_u64},
      {"i64", parse_i64},       {"u64tostring", u64tostring}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
