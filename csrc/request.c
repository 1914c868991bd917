/* request.c: one HTTP exchange as a Lua object: options, curl's data callbacks, streaming in
   both directions with backpressure, and cancellation. */
#include <ctype.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "dispatch.h"
#include "request.h"

#define DEFAULT_MAX_BODY ((size_t)64 << 20)
#define DEFAULT_HIGH_WATER ((size_t)1 << 20)
#define DEFAULT_TIMEOUT_MS 30000L        /* whole exchange; streams have none by default */
#define DEFAULT_CONNECT_TIMEOUT_MS 10000L

#if LIBCURL_VERSION_NUM < 0x075000
#error "coord needs libcurl 7.80 or later (CURLOPT_PREREQFUNCTION tells whether a request was sent)"
#endif

/* ---- curl callbacks: they only touch the request's own buffers and flags ---- */

static size_t on_write(char *p, size_t size, size_t nmemb, void *ud) {
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
    coord_loop_ready(r->loop, r);
  }
  return n;
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *ud) {
  coord_req *r = ud;
  size_t n = size * nmemb;
  if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    coord_buf_clear(&r->hdrs); /* a new response: 1xx or a redirect came before */
    r->headers_done = 0;
  }
  if (n <= 2 && (p[0] == '\r' || p[0] == '\n')) {
    long status = 0;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    if (status >= 200) {
      r->status = status;
      r->headers_done = 1;
      if (r->stream && r->waiting) {
        r->waiting = 0;
        coord_loop_ready(r->loop, r);
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

static size_t on_read(char *p, size_t size, size_t nmemb, void *ud) {
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
static int on_prereq(void *ud, char *ip, char *local_ip, int port, int local_port) {
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
  coord_req *r = NULL;
  curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&r);
  if (r == NULL || !r->active || r->easy != e || !r->upload || r->upload_eof) return;
  if (!r->send_paused || r->recv_paused) return; /* curl is sending, or we hold the reply */
  r->recv_over = 1;
  lp->stalled = 1;
}

/* ---- life cycle ---- */

static void active_unlink(coord_loop *lp, coord_req *r) {
  if (r->prev) r->prev->next = r->next;
  else lp->active = r->next;
  if (r->next) r->next->prev = r->prev;
  r->prev = r->next = NULL;
  lp->nactive--;
}

/* Called after curl_multi_socket_action has returned (never from a curl callback): takes
   the transfer off the multi handle, recycles the easy handle, queues the request for Lua. */
void coord_req_finish(coord_loop *lp, coord_req *r, CURLcode code) {
  if (!r->active) return;
  long status = 0;
  curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
  if (status) r->status = status;
  curl_multi_remove_handle(lp->multi, r->easy);
  active_unlink(lp, r);
  /* libcurl counts its own re-sends per handle, for the handle's whole life (five, then it
     gives up at once): only a reset clears that count, so a handle that may have re-sent
     (a second attempt, or a failure) is reset */
  int resent = r->sent > 1 || r->resend_refused || code != CURLE_OK;
  coord_loop_release_easy(lp, r->easy, resent ? 0 : r->easy_flags);
  r->easy = NULL;
  r->active = 0;
  r->done = 1;
  r->result = code;
  r->recv_paused = r->send_paused = 0;
  if (!r->canceled) coord_loop_ready(lp, r);
}

/* Drops the registry reference once nothing in the loop points at the request any more. */
void coord_req_settle(lua_State *L, coord_req *r) {
  if (r->active || r->in_ready || r->in_cancel) return;
  if (r->ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, r->ref);
    r->ref = LUA_NOREF;
  }
  r->loop = NULL;
}

/* Removes the request from every loop list without Lua. Used at lua_close only, by whichever
   of the loop's and the request's finalizers runs first. */
void coord_req_detach(coord_loop *lp, coord_req *r) {
  if (r->active) {
    curl_multi_remove_handle(lp->multi, r->easy);
    active_unlink(lp, r);
    curl_easy_cleanup(r->easy);
    r->easy = NULL;
    r->active = 0;
  }
  if (r->in_ready) {
    coord_req **pp = &lp->ready_head, *last = NULL;
    while (*pp && *pp != r) last = *pp, pp = &(*pp)->ready_next;
    if (*pp) *pp = r->ready_next;
    if (lp->ready_tail == r) lp->ready_tail = last;
    r->in_ready = 0;
  }
  if (r->in_cancel) {
    coord_req **pp = &lp->cancels;
    while (*pp && *pp != r) pp = &(*pp)->cancel_next;
    if (*pp) *pp = r->cancel_next;
    r->in_cancel = 0;
  }
  r->loop = NULL;
}

static coord_req *check_req(lua_State *L) { return luaL_checkudata(L, 1, COORD_REQ_MT); }

static int req_gc(lua_State *L) {
  coord_req *r = check_req(L);
  if (r->loop) coord_req_detach(r->loop, r);
  curl_slist_free_all(r->headers);
  r->headers = NULL;
  curl_slist_free_all(r->connect_to);
  r->connect_to = NULL;
  coord_buf_free(&r->body);
  coord_buf_free(&r->hdrs);
  coord_buf_free(&r->send);
  return 0;
}

/* cancel(): abandons the transfer. Only marks and queues; the next poll removes it from curl
   (finalizers and __close may run at awkward moments, so curl is not called from here). */
static int req_cancel(lua_State *L) {
  coord_req *r = check_req(L);
  if (r->canceled) return 0;
  r->canceled = 1;
  r->waiting = 0;
  if (r->active && !r->in_cancel) {
    r->in_cancel = 1;
    r->cancel_next = r->loop->cancels;
    r->loop->cancels = r;
  }
  return 0;
}

/* ---- options ---- */

/* Pushes field name of the table at t if it is set, checking its type; returns whether set. */
static int opt(lua_State *L, int t, const char *name, int type) {
  int got = lua_getfield(L, t, name);
  if (got == LUA_TNIL) {
    lua_pop(L, 1);
    return 0;
  }
  if (got != type && !(type == LUA_TNUMBER && lua_isnumber(L, -1)))
    return luaL_error(L, "bad request option '%s' (%s expected, got %s)", name,
                      lua_typename(L, type), luaL_typename(L, -1));
  return 1;
}

/* The string stays on the stack, so it lives until the request has been set up. */
static const char *opt_string(lua_State *L, int t, const char *name) {
  return opt(L, t, name, LUA_TSTRING) ? lua_tostring(L, -1) : NULL;
}

/* Milliseconds for a duration given in seconds; dflt when absent; 0 means none. */
static long opt_ms(lua_State *L, int t, const char *name, long dflt) {
  if (!opt(L, t, name, LUA_TNUMBER)) return dflt;
  double s = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (!(s >= 0 && s <= 31536000)) luaL_error(L, "bad request option '%s' (seconds between 0 and a year expected)", name);
  return s > 0 && s < 0.001 ? 1 : (long)(s * 1000);
}

static size_t opt_size(lua_State *L, int t, const char *name, size_t dflt) {
  if (!opt(L, t, name, LUA_TNUMBER)) return dflt;
  lua_Integer v = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : 0;
  if (v <= 0) luaL_error(L, "bad request option '%s' (positive integer expected)", name);
  lua_pop(L, 1);
  return (size_t)v;
}

static int opt_bool(lua_State *L, int t, const char *name, int dflt) {
  if (!opt(L, t, name, LUA_TBOOLEAN)) return dflt;
  int b = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return b;
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

static void check_header_text(lua_State *L, const char *s, size_t n, int is_name) {
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0' || (is_name && (s[i] == ':' || s[i] == ' ')))
      luaL_error(L, "bad request header %s '%s' (forbidden character)", is_name ? "name" : "value", s);
  }
  if (is_name && n == 0) luaL_error(L, "bad request header (empty name)");
}

static void add_header(lua_State *L, coord_req *r, const char *name, size_t nn, const char *val, size_t vn) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, name, nn);
  if (vn == 0) luaL_addchar(&b, ';'); /* curl's spelling of a header with an empty value */
  else {
    luaL_addstring(&b, ": ");
    luaL_addlstring(&b, val, vn);
  }
  luaL_pushresult(&b);
  struct curl_slist *l = curl_slist_append(r->headers, lua_tostring(L, -1));
  lua_pop(L, 1);
  if (l == NULL) luaL_error(L, "coord: out of memory");
  r->headers = l;
}

/* headers = { ["Name"] = "value", ... } and/or { "Name: value", ... } */
static void read_headers(lua_State *L, int t, coord_req *r) {
  if (!opt(L, t, "headers", LUA_TTABLE)) return;
  int h = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, h)) {
    size_t kn, vn;
    int vt = lua_type(L, -1);
    if (lua_type(L, -2) == LUA_TNUMBER) {
      if (vt != LUA_TSTRING) luaL_error(L, "bad request header (\"Name: value\" string expected, got %s)", lua_typename(L, vt));
      const char *line = lua_tolstring(L, -1, &vn);
      const char *colon = memchr(line, ':', vn);
      if (colon == NULL) luaL_error(L, "bad request header '%s' (\"Name: value\" expected)", line);
      const char *v = colon + 1;
      while (*v == ' ') v++;
      check_header_text(L, line, (size_t)(colon - line), 1);
      check_header_text(L, v, vn - (size_t)(v - line), 0);
      add_header(L, r, line, (size_t)(colon - line), v, vn - (size_t)(v - line));
    } else {
      if (lua_type(L, -2) != LUA_TSTRING || (vt != LUA_TSTRING && vt != LUA_TNUMBER))
        luaL_error(L, "bad request header (string name and string value expected, got %s = %s)",
                   luaL_typename(L, -2), lua_typename(L, vt));
      const char *k = lua_tolstring(L, -2, &kn);
      lua_pushvalue(L, -1); /* converting a number in place would confuse lua_next */
      const char *v = lua_tolstring(L, -1, &vn);
      check_header_text(L, k, kn, 1);
      check_header_text(L, v, vn, 0);
      add_header(L, r, k, kn, v, vn);
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* connect_to = { "HOST:PORT:CONNECT-TO-HOST:CONNECT-TO-PORT", ... } (CURLOPT_CONNECT_TO):
   the URL's host (and so the TLS server name and certificate check) stays, the connection goes
   elsewhere. Each entry has four fields (an IPv6 address in brackets) and no space or control
   character, so it cannot smuggle anything into curl's parser. */
static void read_connect_to(lua_State *L, int t, coord_req *r) {
  if (!opt(L, t, "connect_to", LUA_TTABLE)) return;
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

typedef struct tls_opts {
  const char *ca_file, *ca_path, *cert_file, *key_file, *key_password;
  int verify, verify_host;
} tls_opts;

/* Returns whether a tls table was given. */
static int read_tls(lua_State *L, int t, tls_opts *o) {
  memset(o, 0, sizeof *o);
  o->verify = o->verify_host = 1;
  if (!opt(L, t, "tls", LUA_TTABLE)) return 0;
  int s = lua_gettop(L); /* the table and its strings stay on the stack */
  o->ca_file = opt_string(L, s, "ca_file");
  o->ca_path = opt_string(L, s, "ca_path");
  o->cert_file = opt_string(L, s, "cert_file");
  o->key_file = opt_string(L, s, "key_file");
  o->key_password = opt_string(L, s, "key_password");
  o->verify = opt_bool(L, s, "verify", 1);
  o->verify_host = opt_bool(L, s, "verify_host", o->verify);
  return 1;
}

static void set_tls(CURL *e, const tls_opts *o) {
  if (o->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, o->ca_file);
  if (o->ca_path) curl_easy_setopt(e, CURLOPT_CAPATH, o->ca_path);
  if (o->cert_file) curl_easy_setopt(e, CURLOPT_SSLCERT, o->cert_file);
  if (o->key_file) curl_easy_setopt(e, CURLOPT_SSLKEY, o->key_file);
  if (o->key_password) curl_easy_setopt(e, CURLOPT_KEYPASSWD, o->key_password);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, (long)o->verify);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, o->verify_host ? 2L : 0L);
}

/* The options every transfer uses, set once per easy handle: when it is created and after a
   curl_easy_reset (coord_loop_easy / coord_loop_release_easy). A pooled handle keeps them,
   so a request does not pay for setting them again (the protocol list is parsed each time). */
void coord_req_init_easy(CURL *e) {
#if LIBCURL_VERSION_NUM >= 0x075500
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
  curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, 30L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, 10L);
}

/* request(opts, owner): starts a transfer and returns its object. owner is what poll()
   hands back when the request has something for Lua. Every option is read and checked
   before a curl handle is taken, so a bad option raises without leaking anything. */
int coord_req_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 2);
  coord_loop *lp = coord_loop_get(L, lua_upvalueindex(1));
  coord_req *r = lua_newuserdatauv(L, sizeof *r, 2);
  memset(r, 0, offsetof(coord_req, errbuf));
  r->errbuf[0] = '\0';
  coord_buf_init(&r->body, r->body_inline, sizeof r->body_inline);
  coord_buf_init(&r->hdrs, r->hdrs_inline, sizeof r->hdrs_inline);
  r->ref = LUA_NOREF;
  luaL_setmetatable(L, COORD_REQ_MT);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, 1);
  lua_replace(L, 2); /* stack: opts, req, then option values kept alive */

  luaL_checkstack(L, 24, "request options");
  const char *url = opt_string(L, 1, "url");
  if (url == NULL) return luaL_error(L, "bad request option 'url' (string expected, got nil)");
  const char *method = opt_string(L, 1, "method");
  if (method) check_method(L, method, lua_rawlen(L, -1));
  size_t bodylen = 0;
  const char *body = NULL;
  if (opt(L, 1, "body", LUA_TSTRING)) {
    body = lua_tolstring(L, -1, &bodylen);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, 2, 2); /* keeps the body alive: curl reads it in place */
  }
  r->stream = opt_bool(L, 1, "stream", 0);
  r->upload = opt_bool(L, 1, "upload", 0);
  if (body && r->upload) return luaL_error(L, "bad request options ('body' and 'upload' exclude each other)");
  long timeout = opt_ms(L, 1, "timeout", r->stream || r->upload ? 0 : DEFAULT_TIMEOUT_MS);
  long connect_timeout = opt_ms(L, 1, "connect_timeout", DEFAULT_CONNECT_TIMEOUT_MS);
  const char *unix_socket = opt_string(L, 1, "unix_socket");
  long version = http_version(L, opt_string(L, 1, "http_version"));
  int pipewait = opt_bool(L, 1, "pipewait", 0);
  r->max_body = opt_size(L, 1, "max_body", DEFAULT_MAX_BODY);
  r->high_water = opt_size(L, 1, "buffer", DEFAULT_HIGH_WATER);
  tls_opts tls;
  int has_tls = read_tls(L, 1, &tls);
  read_headers(L, 1, r);
  read_connect_to(L, 1, r);
  if (r->upload) add_header(L, r, "Transfer-Encoding", 17, "chunked", 7);
  if (!method) method = body || r->upload ? "POST" : "GET";
  int is_get = strcmp(method, "GET") == 0, is_head = strcmp(method, "HEAD") == 0;
  r->resend = opt_bool(L, 1, "resend", is_get || is_head);

  CURL *e = coord_loop_easy(lp);
  if (e == NULL) return luaL_error(L, "coord: cannot create a curl handle (out of memory?)");
  curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)r);
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
  curl_easy_setopt(e, CURLOPT_PREREQDATA, r);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout); /* pooled handles keep options: always set */
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, connect_timeout);
  if (unix_socket) curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, unix_socket);
  if (version != CURL_HTTP_VERSION_NONE) curl_easy_setopt(e, CURLOPT_HTTP_VERSION, version);
  if (pipewait) curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
  if (r->headers) curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
  if (r->connect_to) curl_easy_setopt(e, CURLOPT_CONNECT_TO, r->connect_to);
  if (is_head) curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  else if (r->upload) {
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(e, CURLOPT_READDATA, r);
  } else if (body || (!is_get && strcmp(method, "DELETE") != 0)) {
    /* POST and PUT without a body still send Content-Length: 0 */
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)bodylen);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body ? body : "");
  }
  if ((!is_get || body) && !is_head && strcmp(method, "POST") != 0)
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  if (has_tls) set_tls(e, &tls);
  r->easy_flags = (!has_tls && !unix_socket && !r->connect_to && !r->upload && !is_head ? COORD_EASY_PLAIN : 0) |
                  (version != CURL_HTTP_VERSION_NONE ? COORD_EASY_VERSION : 0) |
                  (pipewait ? COORD_EASY_PIPEWAIT : 0);

  lua_pushvalue(L, 2);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX); /* may raise: done before curl holds the request */
  if (curl_multi_add_handle(lp->multi, e) != CURLM_OK) {
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    coord_loop_release_easy(lp, e, 0);
    return luaL_error(L, "coord: curl refused the transfer");
  }
  r->ref = ref;
  r->easy = e;
  r->loop = lp;
  r->active = 1;
  r->next = lp->active;
  if (lp->active) lp->active->prev = r;
  lp->active = r;
  lp->nactive++;
  lua_pushvalue(L, 2);
  return 1;
}

/* ---- Lua methods ---- */

static void resume_recv(coord_req *r) {
  if (r->recv_paused && r->active && coord_buf_unread(&r->body) < r->high_water) {
    r->recv_paused = 0;
    curl_easy_pause(r->easy, r->send_paused ? CURLPAUSE_SEND : CURLPAUSE_CONT);
  }
}

static void resume_send(coord_req *r) {
  if (r->send_paused && r->active) {
    r->send_paused = 0;
    curl_easy_pause(r->easy, r->recv_paused ? CURLPAUSE_RECV : CURLPAUSE_CONT);
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
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, (lua_Integer)coord_buf_unread(&r->body));
  lua_setfield(L, -2, "buffered");
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
