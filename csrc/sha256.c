/* sha256.c: core.sha256(): an incremental SHA-256 hasher, h:update(s) and h:digest() (the
   32 raw bytes). Used to check the checksum etcd appends to a snapshot while it streams.
   The state is plain memory inside the userdata: nothing to release. */
#include <stdint.h>
#include <string.h>
#include "sha256.h"

#define HASHER "coord.sha256"

typedef struct {
  uint32_t h[8];
  uint64_t len; /* bytes hashed so far */
  unsigned char block[64];
  size_t used; /* bytes waiting in block */
  int done;
} hasher;

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void compress(hasher *s, const unsigned char *p) {
  uint32_t w[64];
  for (int i = 0; i < 16; i++)
    w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
  for (int i = 16; i < 64; i++) {
    uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3];
  uint32_t e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
  for (int i = 0; i < 64; i++) {
    uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
    uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    h = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = b;
    b = a;
    a = t1 + t2;
  }
  s->h[0] += a;
  s->h[1] += b;
  s->h[2] += c;
  s->h[3] += d;
  s->h[4] += e;
  s->h[5] += f;
  s->h[6] += g;
  s->h[7] += h;
}

static void feed(hasher *s, const unsigned char *p, size_t n) {
  s->len += n;
  if (s->used > 0) {
    size_t take = 64 - s->used < n ? 64 - s->used : n;
    memcpy(s->block + s->used, p, take);
    s->used += take;
    p += take;
    n -= take;
    if (s->used < 64) return;
    compress(s, s->block);
    s->used = 0;
  }
  for (; n >= 64; p += 64, n -= 64) compress(s, p);
  memcpy(s->block, p, n);
  s->used = n;
}

static hasher *check_hasher(lua_State *L) {
  hasher *s = luaL_checkudata(L, 1, HASHER);
  if (s->done) luaL_argerror(L, 1, "digest already taken");
  return s;
}

static int new_hasher(lua_State *L) {
  static const uint32_t init[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  hasher *s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  memcpy(s->h, init, sizeof init);
  luaL_setmetatable(L, HASHER);
  return 1;
}

/* h:update(s): hashes s after what came before; returns h. */
static int update(lua_State *L) {
  hasher *s = check_hasher(L);
  size_t n;
  const char *p = luaL_checklstring(L, 2, &n);
  feed(s, (const unsigned char *)p, n);
  lua_settop(L, 1);
  return 1;
}

/* h:digest(): the 32-byte SHA-256 of everything fed; the hasher cannot be fed again. */
static int digest(lua_State *L) {
  hasher *s = check_hasher(L);
  uint64_t bits = s->len * 8;
  unsigned char pad[72] = {0x80};
  size_t padlen = (s->used < 56 ? 56 : 120) - s->used;
  for (int i = 0; i < 8; i++) pad[padlen + (size_t)i] = (unsigned char)(bits >> (56 - 8 * i));
  feed(s, pad, padlen + 8);
  unsigned char out[32];
  for (int i = 0; i < 8; i++) {
    out[4 * i] = (unsigned char)(s->h[i] >> 24);
    out[4 * i + 1] = (unsigned char)(s->h[i] >> 16);
    out[4 * i + 2] = (unsigned char)(s->h[i] >> 8);
    out[4 * i + 3] = (unsigned char)s->h[i];
  }
  s->done = 1;
  lua_pushlstring(L, (const char *)out, sizeof out);
  return 1;
}

void coord_sha256_register(lua_State *L) {
  static const luaL_Reg methods[] = {{"update", update}, {"digest", digest}, {NULL, NULL}};
  if (luaL_newmetatable(L, HASHER)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, new_hasher);
  lua_setfield(L, -2, "sha256");
}
