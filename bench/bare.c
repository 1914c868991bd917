/*
 * bare: the best case for the libcurl-multi-on-libuv stack, with no Lua.
 *
 *   bare URL N C [POST-BODY]
 *
 * Drives N HTTP requests to URL with C requests in flight, through libcurl's
 * multi interface driven by curl_multi_socket_action() on a libuv loop
 * (CURLMOPT_SOCKETFUNCTION on uv_poll_t, CURLMOPT_TIMERFUNCTION on uv_timer_t),
 * in the style of curl's docs/examples/multi-uv.c. It keeps C easy handles and
 * re-adds each one as soon as its previous request finished, so the multi
 * handle's connection cache reuses the C keep-alive connections.
 * With POST-BODY it POSTs the body with "Content-Type: application/json"; the environment
 * variable BARE_METHOD names another method to send it with (e.g. PUT, for Consul's KV).
 * BARE_CAINFO names a CA file to verify an https:// server with (libcurl then negotiates
 * HTTP/2 through ALPN, as it does by default).
 * BARE_GRPC_BODY names a file whose bytes (a gRPC-framed message) are POSTed instead, as a gRPC
 * unary call: "Content-Type: application/grpc", "TE: trailers", HTTP/2 (with prior knowledge on
 * http://, h2c; libcurl 8 for that), every request waiting for the one multiplexed connection
 * (CURLOPT_PIPEWAIT); a reply then also needs the trailer "grpc-status: 0".
 *
 * Every reply must be HTTP 200; anything else counts as an error. At the end
 * it prints one line on stdout:
 *
 *   requests=<n> errors=<e> seconds=<wall>
 *
 * and a line with the byte count on stderr. Exit status: 0 when every request
 * succeeded, 1 when some failed, 2 on usage or setup errors.
 *
 * Build: gcc -O2 -Wall -Wextra -Werror bare.c -luv -lcurl
 */
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

/* One per socket that curl asked us to watch; owned by the uv_poll_t. */
typedef struct {
  uv_poll_t poll; /* first member: the handle pointer is the context pointer */
  curl_socket_t sockfd;
} sock_ctx;

typedef struct {
  CURL *easy;
  uint64_t bytes;  /* body bytes of the request in flight */
  int grpc_status; /* gRPC: the grpc-status trailer's value, -1 until seen */
} request;

static int grpc; /* BARE_GRPC_BODY is set */

static uv_loop_t *loop;
static uv_timer_t timeout;
static CURLM *multi;

static long total;     /* N */
static long started;   /* requests handed to the multi handle */
static long completed; /* requests finished, successfully or not */
static long errors;
static uint64_t bytes_total;
static int finished;
static uint64_t t_start, t_end;

static void die(const char *what, const char *why) {
  fprintf(stderr, "bare: %s: %s\n", what, why);
  exit(2);
}

/* Print the first few failures, then only count them. */
static int quiet(void) { return errors > 5; }

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata) {
  (void)ptr;
  request *r = userdata;
  r->bytes += size * nmemb;
  return size * nmemb;
}

/* gRPC: headers and trailers; only grpc-status is kept. */
static size_t on_header(char *ptr, size_t size, size_t nmemb, void *userdata) {
  request *r = userdata;
  size_t n = size * nmemb;
  static const char name[] = "grpc-status:";
  if (n > sizeof name - 1 && strncasecmp(ptr, name, sizeof name - 1) == 0)
    r->grpc_status = atoi(ptr + sizeof name - 1);
  return n;
}

static void close_sock_ctx(uv_handle_t *handle) {
  free((sock_ctx *)handle);
}

/* Drain every finished transfer; re-add the easy handle while work remains. */
static void check_multi_info(void) {
  CURLMsg *msg;
  int pending;

  while ((msg = curl_multi_info_read(multi, &pending)) != NULL) {
    if (msg->msg != CURLMSG_DONE)
      continue;
    /* msg is only valid until the next call into curl: copy what we need. */
    CURL *easy = msg->easy_handle;
    CURLcode result = msg->data.result;
    request *r = NULL;
    long status = 0;

    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&r);
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    completed++;
    if (result != CURLE_OK) {
      errors++;
      if (!quiet())
        fprintf(stderr, "bare: transfer failed: %s (curl code %d)\n",
                curl_easy_strerror(result), (int)result);
    } else if (status != 200) {
      errors++;
      if (!quiet())
        fprintf(stderr, "bare: HTTP status %ld, expected 200\n", status);
    } else if (grpc && r->grpc_status != 0) {
      errors++;
      if (!quiet())
        fprintf(stderr, "bare: grpc-status %d, expected 0\n", r->grpc_status);
    }
    bytes_total += r->bytes;
    r->bytes = 0;
    r->grpc_status = -1;

    curl_multi_remove_handle(multi, easy);
    if (started < total) {
      started++;
      CURLMcode rc = curl_multi_add_handle(multi, easy);
      if (rc != CURLM_OK)
        die("curl_multi_add_handle", curl_multi_strerror(rc));
    }
  }

  if (completed == total && !finished) {
    finished = 1;
    t_end = uv_hrtime();
    uv_stop(loop);
  }
}

static void on_poll(uv_poll_t *handle, int status, int events) {
  sock_ctx *ctx = (sock_ctx *)handle;
  int flags = 0;
  int running;

  if (status < 0) {
    flags = CURL_CSELECT_ERR;
  } else {
    if (events & UV_READABLE)
      flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
      flags |= CURL_CSELECT_OUT;
  }
  curl_multi_socket_action(multi, ctx->sockfd, flags, &running);
  check_multi_info();
}

static void on_timeout(uv_timer_t *handle) {
  (void)handle;
  int running;
  curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_multi_info();
}

/* CURLMOPT_TIMERFUNCTION: only (re)arm or stop the uv timer, never call curl. */
static int start_timeout(CURLM *m, long timeout_ms, void *userp) {
  (void)m;
  (void)userp;
  if (timeout_ms < 0) {
    uv_timer_stop(&timeout);
  } else {
    if (timeout_ms == 0)
      timeout_ms = 1; /* run curl from the loop, not from inside this callback */
    uv_timer_start(&timeout, on_timeout, (uint64_t)timeout_ms, 0);
  }
  return 0;
}

/* CURLMOPT_SOCKETFUNCTION */
static int handle_socket(CURL *easy, curl_socket_t s, int action, void *userp,
                         void *socketp) {
  (void)easy;
  (void)userp;
  sock_ctx *ctx = socketp;

  switch (action) {
  case CURL_POLL_IN:
  case CURL_POLL_OUT:
  case CURL_POLL_INOUT: {
    int events = 0;
    if (action != CURL_POLL_OUT)
      events |= UV_READABLE;
    if (action != CURL_POLL_IN)
      events |= UV_WRITABLE;
    if (ctx == NULL) {
      ctx = malloc(sizeof *ctx);
      if (ctx == NULL)
        die("malloc", strerror(errno));
      ctx->sockfd = s;
      int rc = uv_poll_init_socket(loop, &ctx->poll, s);
      if (rc != 0)
        die("uv_poll_init_socket", uv_strerror(rc));
      curl_multi_assign(multi, s, ctx);
    }
    int rc = uv_poll_start(&ctx->poll, events, on_poll);
    if (rc != 0)
      die("uv_poll_start", uv_strerror(rc));
    break;
  }
  case CURL_POLL_REMOVE:
    if (ctx != NULL) {
      uv_poll_stop(&ctx->poll);
      uv_close((uv_handle_t *)&ctx->poll, close_sock_ctx); /* frees ctx */
      curl_multi_assign(multi, s, NULL);
    }
    break;
  default:
    break;
  }
  return 0;
}

/* At exit: close whatever curl did not ask us to remove. */
static void close_leftover(uv_handle_t *handle, void *arg) {
  (void)arg;
  if (uv_is_closing(handle))
    return;
  if (handle->type == UV_POLL)
    uv_close(handle, close_sock_ctx);
  else
    uv_close(handle, NULL);
}

static long parse_count(const char *s, const char *what) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno != 0 || *s == '\0' || *end != '\0' || v <= 0)
    die(what, "must be a positive integer");
  return v;
}

int main(int argc, char **argv) {
  if (argc < 4 || argc > 5) {
    fprintf(stderr, "usage: %s URL N C [POST-BODY]  (env BARE_METHOD, BARE_CAINFO, BARE_GRPC_BODY)\n", argv[0]);
    return 2;
  }
  const char *url = argv[1];
  total = parse_count(argv[2], "N");
  long conc = parse_count(argv[3], "C");
  const char *body = argc == 5 ? argv[4] : NULL;
  const char *method = getenv("BARE_METHOD");
  const char *cainfo = getenv("BARE_CAINFO");
  const char *grpc_file = getenv("BARE_GRPC_BODY");
  char grpc_body[4096];
  long grpc_len = 0;
  if (grpc_file != NULL && *grpc_file != '\0') {
    FILE *f = fopen(grpc_file, "rb");
    if (f == NULL)
      die(grpc_file, strerror(errno));
    grpc_len = (long)fread(grpc_body, 1, sizeof grpc_body, f);
    if (ferror(f) || !feof(f) || grpc_len == 0)
      die(grpc_file, "unreadable, empty or over 4096 bytes");
    fclose(f);
    grpc = 1;
  }
  if (conc > total)
    conc = total;

  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    die("curl_global_init", "failed");
  loop = uv_default_loop();
  uv_timer_init(loop, &timeout);

  multi = curl_multi_init();
  if (multi == NULL)
    die("curl_multi_init", "failed");
  curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, handle_socket);
  curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, start_timeout);

  struct curl_slist *headers = NULL;
  if (grpc) {
    headers = curl_slist_append(headers, "Content-Type: application/grpc");
    if (headers != NULL)
      headers = curl_slist_append(headers, "TE: trailers");
    if (headers == NULL)
      die("curl_slist_append", "failed");
  } else if (body != NULL) {
    headers = curl_slist_append(headers, "Content-Type: application/json");
    if (headers == NULL)
      die("curl_slist_append", "failed");
  }

  request *reqs = calloc((size_t)conc, sizeof *reqs);
  if (reqs == NULL)
    die("calloc", strerror(errno));
  for (long i = 0; i < conc; i++) {
    CURL *e = curl_easy_init();
    if (e == NULL)
      die("curl_easy_init", "failed");
    reqs[i].easy = e;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, &reqs[i]);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &reqs[i]);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    reqs[i].grpc_status = -1;
    if (grpc) {
      int h2c = strncmp(url, "http://", 7) == 0;
      if (curl_easy_setopt(e, CURLOPT_POSTFIELDS, grpc_body) != CURLE_OK ||
          curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, grpc_len) != CURLE_OK ||
          curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers) != CURLE_OK ||
          curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header) != CURLE_OK ||
          curl_easy_setopt(e, CURLOPT_HEADERDATA, &reqs[i]) != CURLE_OK ||
          curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L) != CURLE_OK ||
          curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                           h2c ? (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE
                               : (long)CURL_HTTP_VERSION_2TLS) != CURLE_OK)
        die("curl_easy_setopt", "a gRPC option was refused");
    } else if (body != NULL) {
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
      curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
    }
    if (method != NULL && *method != '\0')
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    if (cainfo != NULL && *cainfo != '\0')
      curl_easy_setopt(e, CURLOPT_CAINFO, cainfo);
  }

  t_start = uv_hrtime();
  for (long i = 0; i < conc; i++) {
    started++;
    CURLMcode rc = curl_multi_add_handle(multi, reqs[i].easy);
    if (rc != CURLM_OK)
      die("curl_multi_add_handle", curl_multi_strerror(rc));
  }
  uv_run(loop, UV_RUN_DEFAULT);
  if (!finished) {
    /* The loop ran dry before all requests completed: should not happen. */
    t_end = uv_hrtime();
    fprintf(stderr, "bare: event loop stopped after %ld of %ld requests\n",
            completed, total);
    errors += total - completed;
  }

  /* Tear down: curl first (it may still report sockets to remove), then uv. */
  for (long i = 0; i < conc; i++) {
    curl_multi_remove_handle(multi, reqs[i].easy); /* no-op if not added */
    curl_easy_cleanup(reqs[i].easy);
  }
  curl_multi_cleanup(multi);
  curl_slist_free_all(headers);
  free(reqs);
  uv_timer_stop(&timeout);
  uv_walk(loop, close_leftover, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  if (uv_loop_close(loop) != 0)
    fprintf(stderr, "bare: uv_loop_close: handles still open\n");
  curl_global_cleanup();

  double seconds = (double)(t_end - t_start) / 1e9;
  fprintf(stderr, "bare: bytes=%" PRIu64 " (%.1f per reply)\n", bytes_total,
          completed ? (double)bytes_total / (double)completed : 0.0);
  printf("requests=%ld errors=%ld seconds=%.6f\n", completed, errors, seconds);
  return errors == 0 ? 0 : 1;
}
