/* multi.c: curl's multi-socket interface on libuv. Callbacks here only record what happened;
   no Lua is ever called from this file. */
#include <stdlib.h>
#include <string.h>
#include "request.h"

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


/* Takes every finished transfer off the multi handle and hands it to its request. */
static void drain(coord_loop *lp) {
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(lp->multi, &left)) != NULL) {
    if (msg->msg != CURLMSG_DONE) continue;
    CURL *e = msg->easy_handle;
    CURLcode code = msg->data.result; /* msg is invalid after remove_handle */
    coord_req *r = NULL;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&r);
    coord_req_finish(lp, r, code);
  }
}

static void on_poll(uv_poll_t *h, int status, int events) {
  coord_sock *s = h->data;
  coord_loop *lp = s->loop;
  int flags = 0;
  if (status < 0) flags = CURL_CSELECT_ERR;
  else {
    if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  }
  int running;
  curl_multi_socket_action(lp->multi, s->fd, flags, &running);
  drain(lp);
  if (lp->stalled) coord_req_unstall(lp);
}

static void on_curl_timer(uv_timer_t *t) {
  coord_loop *lp = t->data;
  int running;
  curl_multi_socket_action(lp->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  drain(lp);
  if (lp->stalled) coord_req_unstall(lp);
}

/* CURLMOPT_SOCKETFUNCTION: start, change or stop watching one socket. Returning -1 makes
   curl fail the transfers on it instead of hanging. */
static int on_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp) {
  (void)e;
  coord_loop *lp = userp;
  coord_sock *s = socketp;
  if (what == CURL_POLL_REMOVE) {
    coord_req_unpolled(lp, e);
    if (s) {
      curl_multi_assign(lp->multi, fd, NULL);
      uv_poll_stop(&s->poll); /* at once: the socket is closed right after this callback */
    }
    return 0;
  }
  if (s == NULL && (size_t)fd < lp->nbyfd) s = lp->byfd[fd];
  if (s == NULL) {
    s = calloc(1, sizeof *s);
    if (s == NULL) return -1;
    if (uv_poll_init_socket(&lp->uv, &s->poll, fd) != 0) {
      free(s);
      return -1;
    }
    s->poll.data = s;
    if (byfd_put(lp, fd, s) != 0) {
      uv_close((uv_handle_t *)&s->poll, sock_free);
      return -1;
    }
    s->fd = fd;
    s->loop = lp;
  }
  curl_multi_assign(lp->multi, fd, s);
  int events = 0;
  if (what & CURL_POLL_IN) events |= UV_READABLE;
  if (what & CURL_POLL_OUT) events |= UV_WRITABLE;
  if (uv_poll_start(&s->poll, events, on_poll) != 0) {
    return -1;
  }
  return 0;
}

/* CURLMOPT_TIMERFUNCTION: only arms or disarms the uv timer; curl is called when it fires.
   A 0 ms request becomes 1 ms so the loop never spins inside one iteration. */
static int on_timer(CURLM *m, long timeout_ms, void *userp) {
  (void)m;
  coord_loop *lp = userp;
  if (timeout_ms < 0) {
    uv_timer_stop(&lp->curl_timer);
    return 0;
  }
  if (uv_timer_start(&lp->curl_timer, on_curl_timer, timeout_ms ? (uint64_t)timeout_ms : 1, 0) != 0) {
    return -1;
  }
  return 0;
}

int coord_multi_setup(coord_loop *lp) {
  lp->curl_timer.data = lp;
  if (curl_multi_setopt(lp->multi, CURLMOPT_SOCKETFUNCTION, on_socket) != CURLM_OK) return -1;
  curl_multi_setopt(lp->multi, CURLMOPT_SOCKETDATA, lp);
  curl_multi_setopt(lp->multi, CURLMOPT_TIMERFUNCTION, on_timer);
  curl_multi_setopt(lp->multi, CURLMOPT_TIMERDATA, lp);
  /* curl's default cache (4x the transfers in flight) shrinks as transfers finish and
     then closes connections that the next requests would have reused */
  curl_multi_setopt(lp->multi, CURLMOPT_MAXCONNECTS, (long)COORD_MAX_IDLE_CONNS);
  return 0;
}

/* Used at teardown, after curl_multi_cleanup: closes every context, stopped or not; each is
   freed once libuv has finished with its handle. */
void coord_multi_close_socks(coord_loop *lp) {
  for (size_t fd = 0; fd < lp->nbyfd; fd++) {
    coord_sock *s = lp->byfd[fd];
    if (s == NULL) continue;
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, sock_free);
  }
  free(lp->byfd);
  lp->byfd = NULL;
  lp->nbyfd = 0;
}
