/* jsonlex.h: JSON's tokens (RFC 8259), scanned in one place for the two readers of JSON
   text, json.c's decoder and pick.c's picker, so that both accept exactly the same texts.
   Each scanner reads from p up to end, touches no Lua state, and returns the position just
   past its token, or NULL with *why saying what is wrong (and, for strings, *at where). */
#ifndef COORD_JSONLEX_H
#define COORD_JSONLEX_H

#include <stdint.h>
#include <string.h>

/* 1 for a byte that stands for itself inside a string; 0 for '"', '\\' and control
   characters. One lookup per byte in the scan for the end of a string. */
static const unsigned char coord_json_plain[256] = {
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    1,1,0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,0,1,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
};

static inline const char *coord_json_ws(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
  return p;
}

static inline int coord_json_hex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* p is just past a string's opening quote: returns the position of its closing quote.
   *escaped: whether the string holds escapes, each of them checked (\" \\ \/ \b \f \n \r \t,
   or \u and four hex digits), so a decoder can turn them into bytes without checking again.
   NULL when the string is not valid, *at then being the offending byte (or end). */
static inline const char *coord_json_string(const char *p, const char *end, int *escaped, const char **at,
                                            const char **why) {
  *escaped = 0;
  for (;;) {
    while (p < end && coord_json_plain[(unsigned char)*p]) p++;
    *at = p;
    if (p >= end) return *why = "unterminated string", NULL;
    unsigned char c = (unsigned char)*p;
    if (c == '"') return p;
    if (c < 0x20) return *why = "control character in string", NULL;
    *escaped = 1; /* c is '\\' */
    if (end - p < 2) return *why = "unterminated escape", NULL;
    char e = p[1];
    if (e == 'u') {
      if (end - p < 6 || !coord_json_hex(p[2]) || !coord_json_hex(p[3]) || !coord_json_hex(p[4]) ||
          !coord_json_hex(p[5]))
        return *why = "bad \\u escape", NULL;
      p += 6;
    } else if (e != '\0' && strchr("\"\\/bfnrt", e)) {
      p += 2;
    } else {
      return *why = "bad escape", NULL;
    }
  }
}

/* A number at p. *exact when it is an integer that fits 64 bits (from -2^63 to 2^64-1), *v
   then its value (above 2^63-1 with the same 64 bits, as a negative lua_Integer); the caller
   reads any other number as a float. NULL when it is not a JSON number. */
static inline const char *coord_json_number(const char *p, const char *end, int *exact, int64_t *v,
                                            const char **why) {
  int neg = 0, integral = 1, overflow = 0;
  uint64_t u = 0;
  if (p < end && *p == '-') neg = 1, p++;
  if (p >= end || *p < '0' || *p > '9') return *why = "bad number", NULL;
  if (*p == '0' && p + 1 < end && p[1] >= '0' && p[1] <= '9') return *why = "leading zero", NULL;
  for (; p < end && *p >= '0' && *p <= '9'; p++) {
    unsigned d = (unsigned)(*p - '0');
    if (u > (UINT64_MAX - d) / 10) overflow = 1;
    else u = u * 10 + d;
  }
  if (p < end && *p == '.') {
    integral = 0;
    p++;
    if (p >= end || *p < '0' || *p > '9') return *why = "bad fraction", NULL;
    while (p < end && *p >= '0' && *p <= '9') p++;
  }
  if (p < end && (*p == 'e' || *p == 'E')) {
    integral = 0;
    p++;
    if (p < end && (*p == '+' || *p == '-')) p++;
    if (p >= end || *p < '0' || *p > '9') return *why = "bad exponent", NULL;
    while (p < end && *p >= '0' && *p <= '9') p++;
  }
  *exact = integral && !overflow && (!neg || u <= (uint64_t)INT64_MAX + 1);
  *v = neg ? (int64_t)(0 - u) : (int64_t)u;
  return p;
}

/* The literal word (true, false, null) at p, or NULL. */
static inline const char *coord_json_literal(const char *p, const char *end, const char *word, size_t n) {
  return (size_t)(end - p) >= n && memcmp(p, word, n) == 0 ? p + n : NULL;
}

#endif
