/* easy.h: curl easy handles: the idle pool, the options a request sets on one, and the undoing
   of those options before the handle is reused. */
#ifndef COORD_EASY_H
#define COORD_EASY_H

#include <curl/curl.h>

typedef struct coord_loop coord_loop;

#define COORD_POOL_MAX 128 /* idle easy handles kept for reuse */

typedef struct coord_easy_pool {
  CURL *idle[COORD_POOL_MAX];
  int n;
} coord_easy_pool;

typedef struct coord_tls {
  const char *ca_file, *ca_path, *cert_file, *key_file, *key_password;
  int verify, verify_host;
} coord_tls;

/* What one request asks of its handle, read from Lua by request.c. The strings and lists
   belong to the caller and must live until the transfer ends. */
typedef struct coord_easy_opts {
  void *owner; /* the coord_req: data of the callbacks, CURLOPT_PRIVATE */
  char *errbuf;
  const char *url, *method, *body, *unix_socket;
  size_t body_len;
  long timeout_ms, connect_timeout_ms, http_version; /* CURL_HTTP_VERSION_NONE: libcurl's */
  long address_scope;                                /* 0: none */
  int is_get, is_head, upload, pipewait, has_tls;
  coord_tls tls;
  struct curl_slist *headers, *connect_to;
} coord_easy_opts;

/* How a configured handle is cleaned for reuse (coord_easy_configure says which): PLAIN when
   it set no option that only a full reset undoes (TLS, unix socket, connect_to, address scope,
   upload, HEAD);
   VERSION and PIPEWAIT when it set those two, which are undone one by one. 0: a full reset. */
enum { COORD_EASY_PLAIN = 1, COORD_EASY_VERSION = 2, COORD_EASY_PIPEWAIT = 4 };

CURL *coord_easy_take(coord_loop *lp);
CURLcode coord_easy_configure(CURL *e, const coord_easy_opts *o, unsigned *flags);
void coord_easy_release(coord_loop *lp, CURL *e, unsigned flags);
void coord_easy_done(coord_loop *lp, CURL *e, unsigned flags);
void coord_easy_discard(coord_loop *lp, CURL *e);
void coord_easy_pool_free(coord_easy_pool *p);

#endif
