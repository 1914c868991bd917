/* easy.c: everything set on a curl easy handle and everything undone before it is reused: the
   options every transfer shares (set once per handle), a request's own options, the idle pool.
   Every curl_easy_setopt is checked: a failure fails the request that asked for it. */
#include <string.h>
#include "request.h"

#define SET(e, opt, val)                                      \
  do {                                                        \
    CURLcode rc_ = curl_easy_setopt((e), (opt), (val));       \
    if (rc_ != CURLE_OK) return rc_;                          \
  } while (0)

/* The options every transfer uses, set when a handle is created and after a curl_easy_reset:
   a pooled handle keeps them, so a request does not pay for them again (the protocol list is
   parsed each time it is set). */
static CURLcode set_shared(CURL *e) {
#if LIBCURL_VERSION_NUM >= 0x075500
  SET(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
  SET(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  SET(e, CURLOPT_NOSIGNAL, 1L);
  SET(e, CURLOPT_WRITEFUNCTION, coord_req_on_write);
  SET(e, CURLOPT_HEADERFUNCTION, coord_req_on_header);
  SET(e, CURLOPT_PREREQFUNCTION, coord_req_on_prereq);
  SET(e, CURLOPT_TCP_KEEPALIVE, 1L);
  SET(e, CURLOPT_TCP_KEEPIDLE, 30L);
  SET(e, CURLOPT_TCP_KEEPINTVL, 10L);
  return CURLE_OK;
}

/* An idle handle with the shared options set, or NULL when none can be made. */
CURL *coord_easy_take(coord_loop *lp) {
  if (lp->pool.n > 0) return lp->pool.idle[--lp->pool.n];
  CURL *e = curl_easy_init();
  if (e && set_shared(e) != CURLE_OK) {
    curl_easy_cleanup(e);
    e = NULL;
  }
  return e;
}

static CURLcode set_tls(CURL *e, const coord_tls *o) {
  if (o->ca_file) SET(e, CURLOPT_CAINFO, o->ca_file);
  if (o->ca_path) SET(e, CURLOPT_CAPATH, o->ca_path);
  if (o->cert_file) SET(e, CURLOPT_SSLCERT, o->cert_file);
  if (o->key_file) SET(e, CURLOPT_SSLKEY, o->key_file);
  if (o->key_password) SET(e, CURLOPT_KEYPASSWD, o->key_password);
  SET(e, CURLOPT_SSL_VERIFYPEER, (long)o->verify);
  SET(e, CURLOPT_SSL_VERIFYHOST, o->verify_host ? 2L : 0L);
  return CURLE_OK;
}

static CURLcode set_request(CURL *e, const coord_easy_opts *o) {
  SET(e, CURLOPT_PRIVATE, (char *)o->owner);
  SET(e, CURLOPT_URL, o->url);
  SET(e, CURLOPT_ERRORBUFFER, o->errbuf);
  SET(e, CURLOPT_WRITEDATA, o->owner);
  SET(e, CURLOPT_HEADERDATA, o->owner);
  SET(e, CURLOPT_PREREQDATA, o->owner);
  SET(e, CURLOPT_TIMEOUT_MS, o->timeout_ms); /* pooled handles keep options: always set */
  SET(e, CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
  if (o->unix_socket) SET(e, CURLOPT_UNIX_SOCKET_PATH, o->unix_socket);
  if (o->http_version != CURL_HTTP_VERSION_NONE) SET(e, CURLOPT_HTTP_VERSION, o->http_version);
  if (o->pipewait) SET(e, CURLOPT_PIPEWAIT, 1L);
  if (o->headers) SET(e, CURLOPT_HTTPHEADER, o->headers);
  if (o->connect_to) SET(e, CURLOPT_CONNECT_TO, o->connect_to);
  /* Besides its IPv6 meaning (ignored for IPv4 and for addresses that are not link-local),
     the scope id is part of the key libcurl groups connections by (scope, port, host): a
     transfer with another scope never shares a connection with the others. libcurl 7.88
     marks a host's whole group as unable to multiplex once one of its connections speaks
     HTTP/1.1, so an HTTP/1.1 stream kept in the group would stop HTTP/2 multiplexing. */
  if (o->address_scope) SET(e, CURLOPT_ADDRESS_SCOPE, o->address_scope);
  if (o->is_head) {
    SET(e, CURLOPT_NOBODY, 1L);
  } else if (o->upload) {
    SET(e, CURLOPT_POST, 1L);
    SET(e, CURLOPT_READFUNCTION, coord_req_on_read);
    SET(e, CURLOPT_READDATA, o->owner);
  } else if (o->body || (!o->is_get && strcmp(o->method, "DELETE") != 0)) {
    /* POST and PUT without a body still send Content-Length: 0 */
    SET(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len);
    SET(e, CURLOPT_POSTFIELDS, o->body ? o->body : "");
  }
  if ((!o->is_get || o->body) && !o->is_head && strcmp(o->method, "POST") != 0)
    SET(e, CURLOPT_CUSTOMREQUEST, o->method);
  if (o->has_tls) return set_tls(e, &o->tls);
  return CURLE_OK;
}

/* Sets a request's options on a handle from coord_easy_take and says in *flags how to clean
   it afterwards. On failure the handle is half configured: *flags is 0 (a full reset). */
CURLcode coord_easy_configure(CURL *e, const coord_easy_opts *o, unsigned *flags) {
  *flags = 0;
  CURLcode rc = set_request(e, o);
  if (rc != CURLE_OK) return rc;
  *flags = (!o->has_tls && !o->unix_socket && !o->connect_to && !o->address_scope && !o->upload && !o->is_head
                ? COORD_EASY_PLAIN : 0) |
           (o->http_version != CURL_HTTP_VERSION_NONE ? COORD_EASY_VERSION : 0) |
           (o->pipewait ? COORD_EASY_PIPEWAIT : 0);
  return CURLE_OK;
}

/* Undoes what set_request set on a plain handle. Much cheaper than a reset, which would make
   set_shared run again: the etcd client sets http_version on every request. */
static CURLcode unset_plain(CURL *e, unsigned flags) {
  if (flags & COORD_EASY_VERSION) SET(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_NONE);
  if (flags & COORD_EASY_PIPEWAIT) SET(e, CURLOPT_PIPEWAIT, 0L);
  SET(e, CURLOPT_HTTPHEADER, NULL);
  SET(e, CURLOPT_POSTFIELDS, NULL);
  SET(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)-1);
  SET(e, CURLOPT_CUSTOMREQUEST, NULL);
  SET(e, CURLOPT_HTTPGET, 1L);
  SET(e, CURLOPT_ERRORBUFFER, NULL);
  SET(e, CURLOPT_PRIVATE, NULL);
  return CURLE_OK;
}

/* Keeps a handle that is not on the multi handle for the next request, cleaned as flags say;
   a handle that cannot be cleaned, or one too many for the pool, is closed. */
void coord_easy_release(coord_loop *lp, CURL *e, unsigned flags) {
  if (lp->pool.n >= COORD_POOL_MAX) {
    curl_easy_cleanup(e);
    return;
  }
  if (!(flags & COORD_EASY_PLAIN) || unset_plain(e, flags) != CURLE_OK) {
    curl_easy_reset(e);
    if (set_shared(e) != CURLE_OK) {
      curl_easy_cleanup(e);
      return;
    }
  }
  lp->pool.idle[lp->pool.n++] = e;
}

/* Takes a transfer's handle off the multi handle and releases it. Called after
   curl_multi_socket_action has returned, never from a curl callback. */
void coord_easy_done(coord_loop *lp, CURL *e, unsigned flags) {
  if (curl_multi_remove_handle(lp->multi, e) != CURLM_OK) {
    curl_easy_cleanup(e); /* which takes it off the multi handle itself */
    return;
  }
  coord_easy_release(lp, e, flags);
}

/* Closes a transfer's handle for good (lua_close). It is taken off the multi handle first:
   curl_easy_cleanup alone would do that as well, but then (curl 7.88, under LeakSanitizer)
   leaks the buffers of a transfer in flight. */
void coord_easy_discard(coord_loop *lp, CURL *e) {
  if (curl_multi_remove_handle(lp->multi, e) != CURLM_OK) {
    /* nothing else to try: closing it is all that is left either way */
  }
  curl_easy_cleanup(e);
}

void coord_easy_pool_free(coord_easy_pool *p) {
  while (p->n > 0) curl_easy_cleanup(p->idle[--p->n]);
}
