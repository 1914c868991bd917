/* request.c: one HTTP exchange as a Lua object: options, curl's data callbacks, streaming in
   both directions with backpressure, and cancellation. */
#include <ctype.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "failure.h"
#include "hdrlist.h"
#include "headers.h"
#include "request.h"
#include "track.h"

#define DEFAULT_MAX_BODY ((size_t)64 << 20)
#define DEFAULT_HIGH_WATER ((size_t)1 << 20)
#define DEFAULT_TIMEOUT_MS 30000L        /* whole exchange; streams have none by default */
#define DEFAULT_CONNECT_TIMEOUT_MS 10000L

#if LIBCURL_VERSION_NUM < 0x075000
#error "coord needs libcurl 7.80 or later (CURLOPT_PREREQFUNCTION tells whether a request was sent)"
#endif

/* ---- curl callbacks: they only touch the request's own buffers and flags ---- */

size_t coord_req_on_write(char *p, size_t size, size_t nmemb, void *ud) {
  coord_req *r = ud;
  size_t n = size * nmemb;
  size_t unread = coord_buf_unread(&r->body);
  if (r->stream && unread >= r->high_water && memchr(coord_buf_head(&r->body), '\n', unread)) {
    /* the reader is behind and has a whole line to take: hold the data in curl */
    r->recv_paused = 1;
    r->pauses++;
    return CURL_WRITEFUNC_PAUSE;
  }
  if (unread + n > r->max_body) {
    r->too_large = 1;
    return 0;
  }
  if (coord_buf_append(&r->body, p, n) != 0) {
    r->nomem = 1;
    return 0;
  }
  if (r->stream && r->waiting) {
    r->waiting = 0;
    coord_track_ready(r->loop, r);
  }
  return n;
}

size_t coord_req_on_header(char *p, size_t size, size_t nmemb, void *ud) {
  coord_req *r = ud;
  size_t n = size * nmemb;
  if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    coord_buf_clear(&r->hdrs); /* a new response: 1xx or a redirect came before */
    r->headers_done = 0;
  }
  if (n <= 2 && (p[0] == '\r' || p[0] == '\n')) {
    long status = 0;
    CURLcode rc = curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    if (rc != CURLE_OK) {
      r->fault = "curl_easy_getinfo(CURLINFO_RESPONSE_CODE)";
      r->fault_why = curl_easy_strerror(rc);
      return 0; /* fails the transfer */
    }
    if (status >= 200) {
      r->status = status;
      r->headers_done = 1;
      if (r->stream && r->waiting) {
        r->waiting = 0;
        coord_track_ready(r->loop, r);
      }
    }
    return n;
  }
  if (coord_buf_append(&r->hdrs, p, n) != 0) {
    r->nomem = 1;
    return 0;
  }
  return n;
}

size_t coord_req_on_read(char *p, size_t size, size_t nmemb, void *ud) {
  coord_req *r = ud;
  if (r->recv_over) return 0; /* the reply has ended: so does the body */
  size_t avail = coord_buf_unread(&r->send);
  if (avail == 0) {
    if (r->upload_eof) return 0;
    r->send_paused = 1;
    return CURL_READFUNC_PAUSE;
  }
  size_t n = size * nmemb < avail ? size * nmemb : avail;
  memcpy(p, coord_buf_head(&r->send), n);
  coord_buf_consume(&r->send, n);
  return n;
}

/* Called by libcurl right before each attempt sends its request, on a new or a reused
   connection. A request on a reused connection that died before any reply byte is sent
   again by libcurl itself: this is the only place that sees that second attempt, so it is
   counted here, and refused for a request that must not be sent twice. */
int coord_req_on_prereq(void *ud, char *ip, char *local_ip, int port, int local_port) {
  coord_req *r = ud;
  (void)ip, (void)local_ip, (void)port, (void)local_port;
  if (r->sent && !r->resend) {
    r->resend_refused = 1;
    return CURL_PREREQFUNC_ABORT;
  }
  if (r->sent < 255) r->sent++;
  return CURL_PREREQFUNC_OK;
}

/* A streamed upload whose body is paused (nothing to send) and whose reply has ended (the
   server closed the connection, or finished its reply): curl 7.88 stops polling the socket
   but keeps the transfer until the body goes on, so a dead peer would sit in CLOSE-WAIT
   until the next write. Called from the socket callback when curl stops watching a socket
   (only records); coord_req_unstall then lets the body end, which ends the transfer. */
void coord_req_unpolled(coord_loop *lp, CURL *e) {
  coord_req *r = coord_track_find(lp, e);
  if (r == NULL || !r->upload || r->upload_eof) return;
  if (!r->send_paused || r->recv_paused) return; /* curl is sending, or we hold the reply */
  r->recv_over = 1;
  lp->stalled = 1;
}

/* ---- life cycle ---- */

/* Called after curl_multi_socket_action has returned (never from a curl callback): takes
   the transfer off the multi handle, recycles the easy handle, queues the request for Lua. */
void coord_req_finish(coord_loop *lp, coord_req *r, CURLcode code) {
  if (!r->active) return;
  long status = 0;
  /* should curl not tell, the status the header callback saw stands */
  if (curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK && status) r->status = status;
  /* libcurl counts its own re-sends per handle, for the handle's whole life (five, then it
     gives up at once): only a reset clears that count, so a handle that may have re-sent
     (a second attempt, or a failure) is reset */
  int resent = r->sent > 1 || r->resend_refused || code != CURLE_OK;
  coord_easy_done(lp, coord_track_deactivate(lp, r), resent ? 0 : r->easy_flags);
  if (code == CURLE_OK) { /* only a failure's message is read; curl has let go of it */
    free(r->errbuf);
    r->errbuf = NULL;
  }
  r->done = 1;
  r->result = code;
  r->recv_paused = r->send_paused = 0;
  if (!r->canceled) coord_track_ready(lp, r);
}

/* A libcurl or libuv call made for the request failed: the request fails with that (the
   first such failure is kept). Only records and queues: the next poll takes the transfer
   off curl, so this is safe from curl's callbacks. */
void coord_req_fault(coord_loop *lp, coord_req *r, const char *what, const char *why) {
  if (r->fault == NULL) {
    r->fault = what;
    r->fault_why = why;
  }
  coord_track_cancel(lp, r);
}

/* Removes the request from every loop list without Lua. Used at lua_close only, by whichever
   of the loop's and the request's finalizers runs first. */
void coord_req_detach(coord_loop *lp, coord_req *r) {
  if (r->active) coord_easy_discard(lp, coord_track_deactivate(lp, r));
  coord_track_forget(lp, r);
}

static coord_req *check_req(lua_State *L) { return luaL_checkudata(L, 1, COORD_REQ_MT); }

/* Frees what a request owns besides its userdata. */
static void release_parts(coord_req *r) {
  curl_slist_free_all(r->headers);
  r->headers = NULL;
  curl_slist_free_all(r->connect_to);
  r->connect_to = NULL;
  coord_buf_free(&r->body);
  coord_buf_free(&r->hdrs);
  coord_buf_free(&r->send);
  free(r->errbuf);
  r->errbuf = NULL;
}

static int req_gc(lua_State *L) {
  coord_req *r = check_req(L);
  if (r->loop) coord_req_detach(r->loop, r);
  release_parts(r);
  return 0;
}

/* cancel(): abandons the transfer. Only marks and queues; the next poll removes it from curl
   (finalizers and __close may run at awkward moments, so curl is not called from here). */
static int req_cancel(lua_State *L) {
  coord_req *r = check_req(L);
  if (r->canceled) return 0;
  r->canceled = 1;
  r->waiting = 0;
  if (r->active) coord_track_cancel(r->loop, r);
  return 0;
}

/* ---- options ---- */

/* The option names, in the order of coord_req_new's upvalues 2.. (upvalue 1 is the loop's
   holder): an option is read with lua_rawget and the interned name, which skips interning the
   C string and the metatable lookup a missing field costs lua_getfield. A table with a
   metatable is read with lua_getfield as before (its __index may supply options). */
enum {
  K_URL, K_METHOD, K_BODY, K_STREAM, K_UPLOAD, K_TIMEOUT, K_CONNECT_TIMEOUT, K_UNIX_SOCKET,
  K_HTTP_VERSION, K_PIPEWAIT, K_MAX_BODY, K_BUFFER, K_TLS, K_HEADERS, K_CONNECT_TO, K_RESEND,
  K_CA_FILE, K_CA_PATH, K_CERT_FILE, K_KEY_FILE, K_KEY_PASSWORD, K_VERIFY, K_VERIFY_HOST, K_ADDRESS_SCOPE,
  NKEYS
};
static const char *const key_names[NKEYS] = {
  "url", "method", "body", "stream", "upload", "timeout", "connect_timeout", "unix_socket",
  "http_version", "pipewait", "max_body", "buffer", "tls", "headers", "connect_to", "resend",
  "ca_file", "ca_path", "cert_file", "key_file", "key_password", "verify", "verify_host",
  "address_scope"};

/* Pushes field k of the table at (absolute index) t; returns its type. */
static int get_key(lua_State *L, int t, int k) {
  if (lua_getmetatable(L, t)) {
    lua_pop(L, 1);
    return lua_getfield(L, t, key_names[k]);
  }
  lua_pushvalue(L, lua_upvalueindex(2 + k));
  return lua_rawget(L, t);
}

/* Pushes option k of the table at t if it is set, checking its type; returns whether set. */
static int opt(lua_State *L, int t, int k, int type) {
  int got = get_key(L, t, k);
  if (got == LUA_TNIL) {
    lua_pop(L, 1);
    return 0;
  }
  if (got != type && !(type == LUA_TNUMBER && lua_isnumber(L, -1)))
    return luaL_error(L, "bad request option '%s' (%s expected, got %s)", key_names[k],
                      lua_typename(L, type), luaL_typename(L, -1));
  return 1;
}

/* The string stays on the stack, so it lives until the request has been set up. */
static const char *opt_string(lua_State *L, int t, int k) {
  return opt(L, t, k, LUA_TSTRING) ? lua_tostring(L, -1) : NULL;
}

/* Milliseconds for a duration given in seconds; dflt when absent; 0 means none. */
static long opt_ms(lua_State *L, int t, int k, long dflt) {
  if (!opt(L, t, k, LUA_TNUMBER)) return dflt;
  double s = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (!(s >= 0 && s <= 31536000)) luaL_error(L, "bad request option '%s' (seconds between 0 and a year expected)", key_names[k]);
  return s > 0 && s < 0.001 ? 1 : (long)(s * 1000);
}

static size_t opt_size(lua_State *L, int t, int k, size_t dflt) {
  if (!opt(L, t, k, LUA_TNUMBER)) return dflt;
  lua_Integer v = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : 0;
  if (v <= 0) luaL_error(L, "bad request option '%s' (positive integer expected)", key_names[k]);
  lua_pop(L, 1);
  return (size_t)v;
}

static int opt_bool(lua_State *L, int t, int k, int dflt) {
  if (!opt(L, t, k, LUA_TBOOLEAN)) return dflt;
  int b = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return b;
}

/* address_scope: an IPv6 scope id (CURLOPT_ADDRESS_SCOPE, an unsigned 32-bit number); 0 when absent. */
static long opt_scope(lua_State *L, int t) {
  if (!opt(L, t, K_ADDRESS_SCOPE, LUA_TNUMBER)) return 0;
  lua_Integer v = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : -1;
  if (v < 0 || v > 0xffffffffLL) luaL_error(L, "bad request option 'address_scope' (integer from 0 to 2^32-1 expected)");
  lua_pop(L, 1);
  return (long)v;
}

/* A method is an RFC 9110 token: it goes into the request line as it is. */
static void check_method(lua_State *L, const char *m, size_t n) {
  static const char extra[] = "!#$%&'*+-.^_`|~";
  if (n == 0) luaL_error(L, "bad request option 'method' (empty)");
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)m[i];
    if (!isalnum(c) && (c == '\0' || !strchr(extra, c))) {
      char hex[8];
      snprintf(hex, sizeof hex, "0x%02x", (unsigned)c);
      luaL_error(L, "bad request option 'method' (an HTTP token expected, got character %s)", hex);
    }
  }
}

/* connect_to = { "HOST:PORT:CONNECT-TO-HOST:CONNECT-TO-PORT", ... } (CURLOPT_CONNECT_TO):
   the URL's host (and so the TLS server name and certificate check) stays, the connection goes
   elsewhere. Each entry has four fields (an IPv6 address in brackets) and no space or control
   character, so it cannot smuggle anything into curl's parser. */
static void read_connect_to(lua_State *L, int t, coord_req *r) {
  if (!opt(L, t, K_CONNECT_TO, LUA_TTABLE)) return;
  int l = lua_gettop(L);
  lua_Integer n = luaL_len(L, l);
  for (lua_Integer i = 1; i <= n; i++) {
    if (lua_rawgeti(L, l, i) != LUA_TSTRING)
      luaL_error(L, "bad request option 'connect_to' (string expected at index %d, got %s)", (int)i, luaL_typename(L, -1));
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    int colons = 0, bracket = 0;
    for (size_t k = 0; k < len; k++) {
      unsigned char c = (unsigned char)s[k];
      if (c <= 0x20 || c >= 0x7f) luaL_error(L, "bad request option 'connect_to' (forbidden character at index %d)", (int)i);
      if (c == '[') bracket++;
      else if (c == ']') bracket--;
      else if (c == ':' && bracket == 0) colons++;
    }
    if (colons != 3 || bracket != 0)
      luaL_error(L, "bad request option 'connect_to' (\"HOST:PORT:CONNECT-TO-HOST:CONNECT-TO-PORT\" expected at index %d)", (int)i);
    struct curl_slist *sl = curl_slist_append(r->connect_to, s);
    if (sl == NULL) luaL_error(L, "coord: out of memory");
    r->connect_to = sl;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

static long http_version(lua_State *L, const char *v) {
  if (v == NULL) return CURL_HTTP_VERSION_NONE;
  if (strcmp(v, "1.0") == 0) return CURL_HTTP_VERSION_1_0;
  if (strcmp(v, "1.1") == 0) return CURL_HTTP_VERSION_1_1;
  if (strcmp(v, "2") == 0) return CURL_HTTP_VERSION_2_0;
  if (strcmp(v, "2tls") == 0) return CURL_HTTP_VERSION_2TLS;
  if (strcmp(v, "2-prior-knowledge") == 0) return CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE;
  return luaL_error(L, "bad request option 'http_version' ('1.0', '1.1', '2', '2tls' or '2-prior-knowledge' expected, got '%s')", v);
}

/* Returns whether a tls table was given. */
static int read_tls(lua_State *L, int t, coord_tls *o) {
  memset(o, 0, sizeof *o);
  o->verify = o->verify_host = 1;
  if (!opt(L, t, K_TLS, LUA_TTABLE)) return 0;
  int s = lua_gettop(L); /* the table and its strings stay on the stack */
  o->ca_file = opt_string(L, s, K_CA_FILE);
  o->ca_path = opt_string(L, s, K_CA_PATH);
  o->cert_file = opt_string(L, s, K_CERT_FILE);
  o->key_file = opt_string(L, s, K_KEY_FILE);
  o->key_password = opt_string(L, s, K_KEY_PASSWORD);
  o->verify = opt_bool(L, s, K_VERIFY, 1);
  o->verify_host = opt_bool(L, s, K_VERIFY_HOST, o->verify);
  return 1;
}

/* A request that libcurl refused to start (an option it rejects, such as a URL longer than
   it accepts) fails like one that failed in flight: it is done, with the failure, and its
   owner is handed to Lua by the next poll. Returns the request. */
static int failed_start(lua_State *L, coord_loop *lp, coord_req *r, const char *what, const char *why) {
  r->fault = what;
  r->fault_why = why;
  r->done = 1;
  r->loop = lp;
  coord_track_ready(lp, r);
  lua_pushvalue(L, 2);
  return 1;
}

/* The request object at idx if it can carry a new request: a plain (not streamed) request
   that has finished and is on none of the loop's lists, so neither curl nor the loop refers
   to it. Anything else (nil included) gives NULL. */
static coord_req *reusable(lua_State *L, int idx) {
  coord_req *r = luaL_testudata(L, idx, COORD_REQ_MT);
  if (r == NULL || !r->done || r->stream || r->upload || r->loop != NULL || r->ref != LUA_NOREF) return NULL;
  return r;
}

/* request(opts, owner [, old]): starts a transfer and returns its object. owner is what
   poll() hands back when the request has something for Lua. old, a finished request whose
   results have been taken, is reused for this one (one allocation less) when it can be; the
   result is then old itself. Every option is read and checked before a curl handle is
   taken, so a bad option raises without leaking anything. */
static int req_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 3);
  coord_loop *lp = coord_loop_get(L, lua_upvalueindex(1));
  coord_req *r = reusable(L, 3);
  if (r) {
    release_parts(r);
  } else {
    lua_pop(L, 1);
    r = lua_newuserdatauv(L, sizeof *r, 3);
    luaL_setmetatable(L, COORD_REQ_MT);
  }
  memset(r, 0, offsetof(coord_req, body_inline));
  coord_buf_init(&r->body, r->body_inline, sizeof r->body_inline);
  coord_buf_init(&r->hdrs, r->hdrs_inline, sizeof r->hdrs_inline);
  coord_track_init(r);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, 3, 1);
  lua_pushnil(L);
  lua_setiuservalue(L, 3, 2); /* a reused request's body */
  lua_pushnil(L);
  lua_setiuservalue(L, 3, 3); /* and its header list */
  lua_replace(L, 2); /* stack: opts, req, then option values kept alive */

  luaL_checkstack(L, 24, "request options");
  /* outside the userdata, which stays small enough for malloc's fast path */
  if ((r->errbuf = malloc(CURL_ERROR_SIZE)) == NULL) return luaL_error(L, "coord: out of memory");
  r->errbuf[0] = '\0';
  coord_easy_opts o;
  memset(&o, 0, sizeof o);
  o.owner = r;
  o.errbuf = r->errbuf;
  o.url = opt_string(L, 1, K_URL);
  if (o.url == NULL) return luaL_error(L, "bad request option 'url' (string expected, got nil)");
  o.method = opt_string(L, 1, K_METHOD);
  if (o.method) check_method(L, o.method, lua_rawlen(L, -1));
  if (opt(L, 1, K_BODY, LUA_TSTRING)) {
    o.body = lua_tolstring(L, -1, &o.body_len);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, 2, 2); /* keeps the body alive: curl reads it in place */
  }
  r->stream = opt_bool(L, 1, K_STREAM, 0);
  r->upload = o.upload = opt_bool(L, 1, K_UPLOAD, 0);
  if (o.body && r->upload) return luaL_error(L, "bad request options ('body' and 'upload' exclude each other)");
  o.timeout_ms = opt_ms(L, 1, K_TIMEOUT, r->stream || r->upload ? 0 : DEFAULT_TIMEOUT_MS);
  o.connect_timeout_ms = opt_ms(L, 1, K_CONNECT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT_MS);
  o.unix_socket = opt_string(L, 1, K_UNIX_SOCKET);
  o.http_version = http_version(L, opt_string(L, 1, K_HTTP_VERSION));
  o.pipewait = opt_bool(L, 1, K_PIPEWAIT, 0);
  o.address_scope = opt_scope(L, 1);
  r->max_body = opt_size(L, 1, K_MAX_BODY, DEFAULT_MAX_BODY);
  r->high_water = opt_size(L, 1, K_BUFFER, DEFAULT_HIGH_WATER);
  o.has_tls = read_tls(L, 1, &o.tls);
  if (opt(L, 1, K_HEADERS, LUA_TTABLE)) {
    int h = lua_gettop(L);
    if (r->upload || !coord_hdrlist_get(L, h, lua_upvalueindex(2 + NKEYS), 2, 3, &o.headers))
      coord_headers_append(L, &r->headers, h);
    lua_pop(L, 1);
  }
  read_connect_to(L, 1, r);
  if (r->upload) coord_header_add(L, &r->headers, "Transfer-Encoding", 17, "chunked", 7);
  if (r->headers) o.headers = r->headers;
  o.connect_to = r->connect_to;
  if (!o.method) o.method = o.body || r->upload ? "POST" : "GET";
  o.is_get = strcmp(o.method, "GET") == 0;
  o.is_head = strcmp(o.method, "HEAD") == 0;
  r->resend = opt_bool(L, 1, K_RESEND, o.is_get || o.is_head);

  coord_track_hold(L, r, 2); /* may raise: taken before anything is acquired */
  CURL *e = coord_easy_take(lp);
  if (e == NULL) {
    coord_track_unhold(L, r);
    return luaL_error(L, "coord: cannot create a curl handle (out of memory?)");
  }
  unsigned flags;
  CURLcode rc = coord_easy_configure(e, &o, &flags);
  if (rc != CURLE_OK) {
    coord_easy_release(lp, e, flags);
    return failed_start(L, lp, r, "curl_easy_setopt", curl_easy_strerror(rc));
  }
  r->easy_flags = flags;
  CURLMcode mrc = curl_multi_add_handle(lp->multi, e);
  if (mrc != CURLM_OK) {
    coord_easy_release(lp, e, 0);
    return failed_start(L, lp, r, "curl_multi_add_handle", curl_multi_strerror(mrc));
  }
  coord_track_activate(lp, r, e);
  coord_watchdog_arm(lp, r, o.timeout_ms);
  lua_pushvalue(L, 2);
  return 1;
}

/* ---- Lua methods ---- */

/* curl_easy_pause with the pause bits the request still wants; a failure fails it. */
static void set_pause(coord_req *r) {
  int bits = (r->recv_paused ? CURLPAUSE_RECV : 0) | (r->send_paused ? CURLPAUSE_SEND : 0);
  CURLcode rc = curl_easy_pause(r->easy, bits);
  if (rc != CURLE_OK) coord_req_fault(r->loop, r, "curl_easy_pause", curl_easy_strerror(rc));
}

static void resume_recv(coord_req *r) {
  if (r->recv_paused && r->active && coord_buf_unread(&r->body) < r->high_water) {
    r->recv_paused = 0;
    set_pause(r);
  }
}

static void resume_send(coord_req *r) {
  if (r->send_paused && r->active) {
    r->send_paused = 0;
    set_pause(r);
  }
}

/* Called after curl_multi_socket_action has returned: resumes the paused body of every
   request marked by coord_req_unpolled; its read callback then ends the body. */
void coord_req_unstall(coord_loop *lp) {
  lp->stalled = 0;
  for (coord_req *r = lp->active; r != NULL; r = r->next) {
    if (r->recv_over) resume_send(r);
  }
}

/* result(): for a finished request, status, the raw header block and body; or nil, kind,
   message. Headers stay raw until asked for (see parse_headers and header). */
static int req_result(lua_State *L) {
  coord_req *r = check_req(L);
  if (!r->done) return luaL_error(L, "coord: request has not finished");
  lua_pushnil(L);
  lua_setiuservalue(L, 1, 2); /* the request body: curl is done with it */
  int n = coord_push_failure(L, r);
  if (n) return n;
  lua_pushinteger(L, r->status);
  lua_pushlstring(L, coord_buf_head(&r->hdrs), coord_buf_unread(&r->hdrs));
  coord_buf_free(&r->hdrs);
  lua_pushlstring(L, coord_buf_head(&r->body), coord_buf_unread(&r->body));
  coord_buf_free(&r->body);
  return 3;
}

/* response(): a stream's status and headers once they have arrived; false while they have
   not (the owner is queued when they do); nil, kind, message if the transfer failed first. */
static int req_response(lua_State *L) {
  coord_req *r = check_req(L);
  if (r->headers_done) {
    lua_pushinteger(L, r->status);
    coord_push_headers(L, coord_buf_head(&r->hdrs), coord_buf_unread(&r->hdrs));
    return 2;
  }
  if (r->done || r->canceled) {
    int n = coord_push_failure(L, r);
    if (n) return n;
    return luaL_error(L, "coord: transfer ended without a response");
  }
  r->waiting = 1;
  lua_pushboolean(L, 0);
  return 1;
}

/* Hands len bytes of the stream to Lua and drops `used` (>= len) from the buffer; a paused
   transfer resumes once the reader has caught up. */
static int take(lua_State *L, coord_req *r, size_t len, size_t used) {
  lua_pushlstring(L, coord_buf_head(&r->body), len);
  coord_buf_consume(&r->body, used);
  resume_recv(r);
  return 1;
}

/* After a read found nothing: the end of the stream, its failure, or false (wait). */
static int read_end(lua_State *L, coord_req *r) {
  if (r->done || r->canceled) {
    int n = coord_push_failure(L, r);
    if (n) return n;
    luaL_pushfail(L);
    lua_pushliteral(L, "eof");
    return 2;
  }
  r->waiting = 1;
  lua_pushboolean(L, 0);
  return 1;
}

/* read_line(): the next line without its "\n" (or "\r\n"). At the end of the stream a last
   unterminated line is returned; then nil, "eof"; or nil, kind, message on failure. */
static int req_read_line(lua_State *L) {
  coord_req *r = check_req(L);
  size_t unread = coord_buf_unread(&r->body);
  const char *head = coord_buf_head(&r->body);
  const char *nl = unread ? memchr(head, '\n', unread) : NULL;
  if (r->canceled) return read_end(L, r);
  if (nl || (r->done && unread > 0 && r->result == CURLE_OK)) {
    size_t used = nl ? (size_t)(nl - head) + 1 : unread;
    size_t len = nl ? used - 1 : used;
    if (nl && len > 0 && head[len - 1] == '\r') len--;
    return take(L, r, len, used);
  }
  return read_end(L, r);
}

/* read(): every byte received and not yet read, or the same end results as read_line. */
static int req_read(lua_State *L) {
  coord_req *r = check_req(L);
  size_t unread = coord_buf_unread(&r->body);
  if (unread > 0 && !r->canceled) return take(L, r, unread, unread);
  return read_end(L, r);
}

/* write(data): queues bytes of a streamed request body. */
static int req_write(lua_State *L) {
  coord_req *r = check_req(L);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  if (!r->upload) return luaL_error(L, "coord: request was not started with upload = true");
  if (!r->active || r->upload_eof) {
    luaL_pushfail(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  if (coord_buf_append(&r->send, s, n) != 0) return luaL_error(L, "coord: out of memory");
  resume_send(r);
  lua_pushboolean(L, 1);
  return 1;
}

/* finish(): ends a streamed request body. */
static int req_finish_body(lua_State *L) {
  coord_req *r = check_req(L);
  r->upload_eof = 1;
  resume_send(r);
  return 0;
}

static int req_stats(lua_State *L) {
  coord_req *r = check_req(L);
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, (lua_Integer)coord_buf_unread(&r->body));
  lua_setfield(L, -2, "buffered");
  lua_pushboolean(L, r->headers_done);
  lua_setfield(L, -2, "answered"); /* the reply's header block is in */
  lua_pushinteger(L, (lua_Integer)coord_buf_unread(&r->send));
  lua_setfield(L, -2, "unsent");
  lua_pushinteger(L, (lua_Integer)r->pauses);
  lua_setfield(L, -2, "pauses");
  lua_pushboolean(L, r->recv_paused);
  lua_setfield(L, -2, "paused");
  lua_pushboolean(L, r->done);
  lua_setfield(L, -2, "done");
  return 1;
}

/* Replaces the loop's holder on top of the stack with the function request(opts, owner):
   upvalues the holder, the option names, the cache of header lists (hdrlist.c). */
void coord_req_push_new(lua_State *L) {
  luaL_checkstack(L, NKEYS, "request option names");
  for (int k = 0; k < NKEYS; k++) lua_pushstring(L, key_names[k]);
  coord_hdrlist_cache(L);
  lua_pushcclosure(L, req_new, 2 + NKEYS);
}

void coord_req_register(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"result", req_result}, {"response", req_response}, {"read_line", req_read_line},
      {"read", req_read},     {"write", req_write},       {"finish", req_finish_body},
      {"cancel", req_cancel}, {"stats", req_stats},       {NULL, NULL}};
  luaL_newmetatable(L, COORD_REQ_MT);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, req_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, req_cancel);
  lua_setfield(L, -2, "__close");
  lua_pop(L, 1);
}
