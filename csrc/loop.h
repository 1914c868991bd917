/* loop.h: the per-Lua-state engine: one uv loop, one curl multi handle, and the lists that
   connect finished work to the dispatcher. */
#ifndef COORD_LOOP_H
#define COORD_LOOP_H

#include <curl/curl.h>
#include <uv.h>
#include "compat.h"

typedef struct coord_req coord_req;
typedef struct coord_sock coord_sock;
typedef struct coord_srv coord_srv;

#define COORD_POOL_MAX 128       /* idle easy handles kept for reuse */
#define COORD_MAX_IDLE_CONNS 256 /* connections curl keeps open for reuse */

typedef struct coord_loop {
  uv_loop_t uv;
  uv_timer_t curl_timer; /* curl's own timeout (CURLMOPT_TIMERFUNCTION) */
  uv_timer_t wake_timer; /* bounds a blocking poll */
  CURLM *multi;
  coord_req *active;     /* requests added to the multi handle (doubly linked) */
  unsigned nactive;
  coord_req *ready_head; /* requests with something for Lua: done, headers, data */
  coord_req *ready_tail;
  coord_req *cancels;    /* cancellations queued by Lua, applied by the next poll */
  coord_sock **byfd;     /* poll contexts, watching or stopped, by descriptor number */
  size_t nbyfd;
  CURL *pool[COORD_POOL_MAX];
  int npool;
  int polling;           /* re-entry guard for coord_loop_poll */
  int stalled;           /* some request has recv_over set (see coord_req_unpolled) */
  coord_srv *srv_active; /* DNS lookups in flight, finished, canceled (srv.c) */
  coord_srv *srv_ready;
  coord_srv *srv_cancels;
  unsigned nsrv;
} coord_loop;

/* The full userdata holding the loop pointer: created closed (NULL), opened on first use. */
typedef struct coord_holder {
  coord_loop *loop;
  int closed; /* finalized at lua_close: never reopen */
} coord_holder;

coord_loop *coord_loop_get(lua_State *L, int holder_idx);
void coord_loop_destroy(coord_loop *lp);
CURL *coord_loop_easy(coord_loop *lp);
/* How a finished transfer left its easy handle (flags for coord_loop_release_easy): PLAIN when
   it set no option that only a full reset undoes (TLS, unix socket, upload, HEAD); VERSION and
   PIPEWAIT when it set those two, which are undone one by one. */
enum { COORD_EASY_PLAIN = 1, COORD_EASY_VERSION = 2, COORD_EASY_PIPEWAIT = 4 };
void coord_loop_release_easy(coord_loop *lp, CURL *e, unsigned flags);
void coord_loop_ready(coord_loop *lp, coord_req *r);
void coord_loop_register(lua_State *L);

/* multi.c */
int coord_multi_setup(coord_loop *lp);
void coord_multi_close_socks(coord_loop *lp);

#endif
