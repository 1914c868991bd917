/* loop.h: the per-Lua-state engine: one uv loop, one curl multi handle, and the lists that
   connect finished work to Lua. */
#ifndef COORD_LOOP_H
#define COORD_LOOP_H

#include <curl/curl.h>
#include <uv.h>
#include "compat.h"
#include "easy.h"

typedef struct coord_req coord_req;
typedef struct coord_sock coord_sock;
typedef struct coord_srv coord_srv;

#define COORD_MAX_IDLE_CONNS 256 /* connections curl keeps open for reuse */
#define COORD_MAX_STREAMS 1000   /* HTTP/2 streams coord lets curl open on one connection */

struct coord_loop {
  uv_loop_t uv;
  uv_timer_t curl_timer; /* curl's own timeout (CURLMOPT_TIMERFUNCTION) */
  uv_timer_t wake_timer; /* bounds a blocking poll */
  uv_timer_t watchdog;   /* ends requests past their timeout (watchdog.c) */
  CURLM *multi;
  coord_req *active;     /* requests added to the multi handle (doubly linked, track.c) */
  unsigned nactive;
  coord_req *ready_head; /* requests with something for Lua: done, headers, data */
  coord_req *ready_tail;
  coord_req *cancels;    /* requests to take off curl at the next poll: canceled or failed */
  coord_sock **byfd;     /* poll contexts, watching or stopped, by descriptor number */
  size_t nbyfd;
  coord_easy_pool pool;
  const char *fault;     /* a libcurl or libuv call of the loop failed: which one ... */
  const char *fault_why; /* ... and why; the poll raises it */
  int polling;           /* re-entry guard for coord_loop_poll */
  int stalled;           /* some request has recv_over set (see coord_req_unpolled) */
  int kick;              /* curl asked for a 0 ms timeout: the next poll acts on it first */
  coord_srv *srv_active; /* DNS lookups in flight, finished, canceled (srv.c) */
  coord_srv *srv_ready;
  coord_srv *srv_cancels;
  unsigned nsrv;
};

/* The full userdata holding the loop pointer: created closed (NULL), opened on first use. */
typedef struct coord_holder {
  coord_loop *loop;
  int closed; /* finalized at lua_close: never reopen */
} coord_holder;

coord_loop *coord_loop_get(lua_State *L, int holder_idx);
void coord_loop_destroy(coord_loop *lp);
void coord_loop_fault(coord_loop *lp, const char *what, const char *why);
void coord_loop_register(lua_State *L);

/* multi.c */
int coord_multi_setup(coord_loop *lp);
void coord_multi_close_socks(coord_loop *lp);
void coord_multi_kick(coord_loop *lp);

#endif
