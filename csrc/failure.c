/* failure.c: what a failed transfer means, in Lua values: its error kind (from libcurl's
   code and what the request recorded), its message, and whether it may have been applied.
   Runs only on the Lua side of a poll. */
#include <string.h>
#include "failure.h"

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
  else if (r->fault)
    lua_pushfstring(L, "%s failed: %s", r->fault, r->fault_why);
  else if (r->result == CURLE_URL_MALFORMAT || r->result == CURLE_UNSUPPORTED_PROTOCOL)
    lua_pushfstring(L, "malformed URL: %s", r->errbuf && r->errbuf[0] ? r->errbuf : curl_easy_strerror(r->result));
  else
    lua_pushstring(L, r->errbuf && r->errbuf[0] ? r->errbuf : curl_easy_strerror(r->result));
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
  else if (r->fault) kind = "protocol"; /* libcurl or libuv failed where it should not */
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
