/* dispatch.c: builds the Lua view of a transfer's outcome: the error kind and message of a
   failed one, and the header table of a response. Runs only on the Lua side of a poll. */
#include <ctype.h>
#include <string.h>
#include <strings.h>
#include "dispatch.h"

/* The value of a header line that starts at v and ends at ve (before "\n"), trimmed. */
static const char *trim(const char *v, const char **ve) {
  while (v < *ve && (*v == ' ' || *v == '\t')) v++;
  while (*ve > v && ((*ve)[-1] == '\r' || (*ve)[-1] == ' ' || (*ve)[-1] == '\t')) (*ve)--;
  return v;
}

static const char *kind_of(CURLcode c) {
  switch (c) {
    case CURLE_OPERATION_TIMEDOUT: return "timeout";
    case CURLE_COULDNT_CONNECT: return "connect";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY: return "resolve";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_USE_SSL_FAILED: return "tls";
    case CURLE_ABORTED_BY_CALLBACK: return "canceled";
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING: return "closed";
    default: return "protocol"; /* malformed URL, garbage, truncation, HTTP/2 framing ... */
  }
}

/* The message of a failed transfer, in words. */
static void push_message(lua_State *L, coord_req *r) {
  if (r->resend_refused)
    lua_pushliteral(L, "the connection closed before any reply after the request was sent; "
                       "it was not sent again (its outcome is unknown)");
  else if (r->too_large)
    lua_pushfstring(L, "reply exceeds the limit of %I bytes (option max_body)", (lua_Integer)r->max_body);
  else if (r->nomem)
    lua_pushliteral(L, "out of memory while receiving the reply");
  else if (r->result == CURLE_URL_MALFORMAT || r->result == CURLE_UNSUPPORTED_PROTOCOL)
    lua_pushfstring(L, "malformed URL: %s", r->errbuf[0] ? r->errbuf : curl_easy_strerror(r->result));
  else
    lua_pushstring(L, r->errbuf[0] ? r->errbuf : curl_easy_strerror(r->result));
}

/* Pushes nil, kind, message, maybe_applied, cause and returns 5 if the transfer failed;
   returns 0 otherwise. maybe_applied: some attempt's request may have left this process, so
   "connect" and "resolve" only ever mean that nothing was sent. A request that must not be
   sent twice (resend off) and failed after sending has the kind "unknown", its transport
   kind in cause; a timeout stays "timeout". */
int coord_push_failure(lua_State *L, coord_req *r) {
  int maybe = r->sent > 0;
  const char *kind, *cause = NULL;
  if (r->canceled) kind = "canceled";
  else if (r->result == CURLE_OK) return 0;
  else kind = r->resend_refused ? "closed" : kind_of(r->result);
  if (maybe && !r->canceled && strcmp(kind, "timeout") != 0) {
    int unsent_kind = strcmp(kind, "connect") == 0 || strcmp(kind, "resolve") == 0;
    if (!r->resend || unsent_kind) {
      cause = kind;
      kind = r->resend ? "closed" : "unknown"; /* a read's retry that failed to connect */
    }
  }
  luaL_pushfail(L);
  lua_pushstring(L, kind);
  if (r->canceled) lua_pushliteral(L, "request canceled");
  else push_message(L, r);
  lua_pushboolean(L, maybe);
  if (cause) lua_pushstring(L, cause);
  else lua_pushnil(L);
  return 5;
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

void coord_dispatch_register(lua_State *L) {
  static const luaL_Reg fns[] = {{"parse_headers", l_parse_headers}, {"header", l_header}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
