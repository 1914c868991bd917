/* multi.c: curl's multi-socket interface on libuv. Callbacks here only record what happened;
   no Lua is ever called from this file. A libuv call that fails in curl's socket or timer
   callback fails the request it was for (or, for none, the loop's next poll): the callback
   still returns 0, because -1 would make curl fail every transfer of the multi handle. */
#include <stdlib.h>
#include <string.h>
#include "request.h"
#include "track.h"

/* One poll context per descriptor number. When curl stops watching a socket the context is
   only stopped and kept by its number: curl reuses the number for its next connection at once
   (keep-alive requests come and go on the same fd), and starting a stopped handle costs less
   than creating one. */
struct coord_sock {
  uv_poll_t poll;
  curl_socket_t fd;
  coord_loop *loop;
};

static int byfd_put(coord_loop *lp, curl_socket_t fd, coord_sock *s) {
  if ((size_t)fd >= lp->nbyfd) {
    size_t n = lp->nbyfd ? lp->nbyfd : 64;
    while (n <= (size_t)fd) n *= 2;
    coord_sock **a = realloc(lp->byfd, n * sizeof *a);
    if (a == NULL) return -1;
    memset(a + lp->nbyfd, 0, (n - lp->nbyfd) * sizeof *a);
    lp->byfd = a;
    lp->nbyfd = n;
  }
  lp->byfd[fd] = s;
  return 0;
}

static void sock_free(uv_handle_t *h) { free(h->data); }

/* A libuv or libcurl call made for transfer e failed. */
static void fault(coord_loop *lp, CURL *e, const char *what, const char *why) {
  coord_req *r = e ? coord_track_find(lp, e) : NULL;
  if (r) coord_req_fault(lp, r, what, why);
  else coord_loop_fault(lp, what, why);
}

/* Takes every finished transfer off the multi handle and hands it to its request. */
static void drain(coord_loop *lp) {
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(lp->multi, &left)) != NULL) {
    if (msg->msg != CURLMSG_DONE) continue;
    CURL *e = msg->easy_handle;
    CURLcode code = msg->data.result; /* msg is invalid after remove_handle */
    coord_req *r = coord_track_find(lp, e);
    if (r) coord_req_finish(lp, r, code);
  }
}

/* Tells curl about an event on fd (or its timeout), then hands over what finished. A failure
   of curl_multi_socket_action concerns the whole multi handle: the poll raises it. */
static void act(coord_loop *lp, curl_socket_t fd, int flags) {
  int running;
  CURLMcode rc = curl_multi_socket_action(lp->multi, fd, flags, &running);
  if (rc != CURLM_OK) coord_loop_fault(lp, "curl_multi_socket_action", curl_multi_strerror(rc));
  drain(lp);
  if (lp->stalled) coord_req_unstall(lp);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  coord_sock *s = h->data;
  int flags = 0;
  if (status < 0) flags = CURL_CSELECT_ERR;
  else {
    if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  }
  act(s->loop, s->fd, flags);
}

static void on_curl_timer(uv_timer_t *t) { act(t->data, CURL_SOCKET_TIMEOUT, 0); }

/* The poll context of fd: the one kept for its number, or a new one; NULL on failure (and
   the failure recorded for e). */
static coord_sock *sock_for(coord_loop *lp, CURL *e, curl_socket_t fd) {
  if ((size_t)fd < lp->nbyfd && lp->byfd[fd]) return lp->byfd[fd];
  coord_sock *s = calloc(1, sizeof *s);
  if (s == NULL) {
    fault(lp, e, "watching a socket", "out of memory");
    return NULL;
  }
  int rc = uv_poll_init_socket(&lp->uv, &s->poll, fd);
  if (rc != 0) {
    free(s);
    fault(lp, e, "uv_poll_init_socket", uv_strerror(rc));
    return NULL;
  }
  s->poll.data = s;
  s->fd = fd;
  s->loop = lp;
  if (byfd_put(lp, fd, s) != 0) {
    uv_close((uv_handle_t *)&s->poll, sock_free);
    fault(lp, e, "watching a socket", "out of memory");
    return NULL;
  }
  return s;
}

/* CURLMOPT_SOCKETFUNCTION: start, change or stop watching one socket. curl forgets the
   socket's pointer (curl_multi_assign) together with the socket after CURL_POLL_REMOVE. */
static int on_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp) {
  coord_loop *lp = userp;
  coord_sock *s = socketp;
  int rc;
  if (what == CURL_POLL_REMOVE) {
    coord_req_unpolled(lp, e);
    /* at once: the socket is closed right after this callback */
    if (s && (rc = uv_poll_stop(&s->poll)) != 0) fault(lp, e, "uv_poll_stop", uv_strerror(rc));
    return 0;
  }
  if (s == NULL) {
    if ((s = sock_for(lp, e, fd)) == NULL) return 0;
    CURLMcode mrc = curl_multi_assign(lp->multi, fd, s);
    if (mrc != CURLM_OK) {
      fault(lp, e, "curl_multi_assign", curl_multi_strerror(mrc));
      return 0;
    }
  }
  int events = 0;
  if (what & CURL_POLL_IN) events |= UV_READABLE;
  if (what & CURL_POLL_OUT) events |= UV_WRITABLE;
  if ((rc = uv_poll_start(&s->poll, events, on_poll)) != 0) fault(lp, e, "uv_poll_start", uv_strerror(rc));
  return 0;
}

/* CURLMOPT_TIMERFUNCTION: only arms or disarms the uv timer; curl is called when it fires.
   A 0 ms request becomes 1 ms so the loop never spins inside one iteration; it is also
   marked, so that the next poll acts on it before it waits (coord_multi_kick): a new
   request is sent in the poll that waits for its reply, not one poll and 1 ms later. */
static int on_timer(CURLM *m, long timeout_ms, void *userp) {
  (void)m;
  coord_loop *lp = userp;
  lp->kick = timeout_ms == 0;
  int rc = timeout_ms < 0 ? uv_timer_stop(&lp->curl_timer)
                          : uv_timer_start(&lp->curl_timer, on_curl_timer, timeout_ms ? (uint64_t)timeout_ms : 1, 0);
  if (rc != 0) coord_loop_fault(lp, timeout_ms < 0 ? "uv_timer_stop (curl timer)" : "uv_timer_start (curl timer)", uv_strerror(rc));
  return 0;
}

/* Called by the poll before it runs the uv loop (never from a curl callback): gives curl
   the 0 ms timeout it asked for. The uv timer stays armed; curl re-arms it as it needs. */
void coord_multi_kick(coord_loop *lp) {
  if (!lp->kick) return;
  lp->kick = 0;
  act(lp, CURL_SOCKET_TIMEOUT, 0);
}

int coord_multi_setup(coord_loop *lp) {
  lp->curl_timer.data = lp;
  if (curl_multi_setopt(lp->multi, CURLMOPT_SOCKETFUNCTION, on_socket) != CURLM_OK ||
      curl_multi_setopt(lp->multi, CURLMOPT_SOCKETDATA, lp) != CURLM_OK ||
      curl_multi_setopt(lp->multi, CURLMOPT_TIMERFUNCTION, on_timer) != CURLM_OK ||
      curl_multi_setopt(lp->multi, CURLMOPT_TIMERDATA, lp) != CURLM_OK ||
      /* curl's default cache (4x the transfers in flight) shrinks as transfers finish and
         then closes connections that the next requests would have reused */
      curl_multi_setopt(lp->multi, CURLMOPT_MAXCONNECTS, (long)COORD_MAX_IDLE_CONNS) != CURLM_OK ||
      /* curl's own cap of HTTP/2 streams per connection (default 100; the server's limit
         still applies): past it libcurl 7.88 opened a connection per request instead of
         waiting for one (200 concurrent etcd puts over TLS took 101 connections) */
      curl_multi_setopt(lp->multi, CURLMOPT_MAX_CONCURRENT_STREAMS, (long)COORD_MAX_STREAMS) != CURLM_OK)
    return -1;
  return 0;
}

/* Used at teardown, after curl_multi_cleanup: closes every context, stopped or not; each is
   freed once libuv has finished with its handle. */
void coord_multi_close_socks(coord_loop *lp) {
  for (size_t fd = 0; fd < lp->nbyfd; fd++) {
    coord_sock *s = lp->byfd[fd];
    if (s != NULL) uv_close((uv_handle_t *)&s->poll, sock_free); /* which stops it too */
  }
  free(lp->byfd);
  lp->byfd = NULL;
  lp->nbyfd = 0;
}
