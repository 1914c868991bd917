/* loop.c: creating, polling and tearing down the per-state engine. The poll is the one
   place where curl/uv callbacks run; results reach Lua only after it has returned. */
#include <stdlib.h>
#include <time.h>
#include "request.h"
#include "srv.h"
#include "track.h"

static coord_loop *loop_open(void) {
  coord_loop *lp = calloc(1, sizeof *lp);
  if (lp == NULL) return NULL;
  if (uv_loop_init(&lp->uv) != 0) {
    free(lp);
    return NULL;
  }
  /* uv_timer_init only fills in the handle: it cannot fail, but says so in its result */
  if (uv_timer_init(&lp->uv, &lp->curl_timer) != 0 || uv_timer_init(&lp->uv, &lp->wake_timer) != 0 ||
      uv_timer_init(&lp->uv, &lp->watchdog) != 0) {
    if (uv_loop_close(&lp->uv) == 0) free(lp);
    return NULL;
  }
  lp->multi = curl_multi_init();
  if (lp->multi == NULL || coord_multi_setup(lp) != 0) {
    coord_loop_destroy(lp);
    return NULL;
  }
  return lp;
}

/* The loop of this Lua state, created on first use. Raises if it cannot be created or has
   already been torn down (during lua_close). */
coord_loop *coord_loop_get(lua_State *L, int holder_idx) {
  coord_holder *h = lua_touserdata(L, holder_idx);
  if (h->loop == NULL) {
    if (h->closed) luaL_error(L, "coord: the loop is closed");
    h->loop = loop_open();
    if (h->loop == NULL) luaL_error(L, "coord: cannot create the event loop (out of memory?)");
  }
  return h->loop;
}

/* Detaches every request, then releases curl and closes every uv handle. Safe whatever
   order Lua finalizes the requests and the loop in at lua_close. Should curl or libuv refuse
   to let go, the loop's memory is kept (a leak) rather than freed under them. */
void coord_loop_destroy(coord_loop *lp) {
  while (lp->active) coord_req_detach(lp, lp->active);
  while (lp->ready_head) coord_req_detach(lp, lp->ready_head);
  while (lp->cancels) coord_req_detach(lp, lp->cancels);
  coord_srv_detach_all(lp);
  coord_easy_pool_free(&lp->pool);
  if (lp->multi && curl_multi_cleanup(lp->multi) != CURLM_OK) return;
  lp->multi = NULL;
  coord_multi_close_socks(lp);
  uv_close((uv_handle_t *)&lp->curl_timer, NULL);
  uv_close((uv_handle_t *)&lp->wake_timer, NULL);
  uv_close((uv_handle_t *)&lp->watchdog, NULL);
  uv_run(&lp->uv, UV_RUN_DEFAULT); /* runs the close callbacks; its result says nothing more */
  if (uv_loop_close(&lp->uv) != 0) return;
  free(lp);
}

/* Records a failure of a libcurl or libuv call that concerns the whole loop (no one request):
   the poll that runs it raises it. The first one is kept. */
void coord_loop_fault(coord_loop *lp, const char *what, const char *why) {
  if (lp->fault) return;
  lp->fault = what;
  lp->fault_why = why;
}

/* The wake timer bounds one poll. uv_run(UV_RUN_ONCE) runs due timers before it polls and
   then polls until the next timer or event; stopping the loop here makes that poll return
   at once, so a wake that fires first cannot leave the poll sleeping until curl's next
   timer (seconds away while transfers idle). */
static void on_wake(uv_timer_t *t) { uv_stop(t->loop); }

/* Applies queued cancellations. Removing an unfinished transfer makes curl close its
   connection, so the peer sees the request abandoned. */
static void apply_cancels(lua_State *L, coord_loop *lp) {
  coord_req *r;
  while ((r = coord_track_next_cancel(lp)) != NULL) {
    if (r->active) coord_req_finish(lp, r, CURLE_ABORTED_BY_CALLBACK);
    coord_track_settle(L, r);
  }
}

/* Raises a loop fault recorded during the poll (clearing it and the re-entry guard first).
   Requests ready meanwhile stay queued for the next poll. */
static void raise_fault(lua_State *L, coord_loop *lp) {
  const char *what = lp->fault, *why = lp->fault_why;
  lp->fault = lp->fault_why = NULL;
  lp->polling = 0;
  luaL_error(L, "coord: %s failed: %s", what, why);
}

/* poll([timeout [, out [, flush]]]): runs one loop iteration, blocking up to timeout seconds
   (nil: until something happens, 0: not at all), then stores the owners of requests that
   have something for Lua in out[1..n]. Returns n and the number of requests in flight. */
static int l_poll(lua_State *L) {
  coord_loop *lp = coord_loop_get(L, lua_upvalueindex(1));
  double timeout = luaL_optnumber(L, 1, -1);
  int flush = lua_toboolean(L, 3);
  if (lua_isnoneornil(L, 2)) lua_newtable(L);
  else luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  if (lp->polling) return luaL_error(L, "coord: poll re-entered (called from a finalizer?)");
  lp->polling = 1;
  apply_cancels(L, lp);
  coord_srv_apply_cancels(L, lp);
  coord_multi_kick(lp);
  if (lp->ready_head || lp->srv_ready || lp->fault) timeout = 0;
  /* uv_run's result says whether handles are left, not whether it failed */
  if (timeout == 0) {
    uv_run(&lp->uv, UV_RUN_NOWAIT);
  } else {
    int rc = 0;
    if (timeout > 0) {
      double ms = timeout * 1000.0;
      uv_update_time(&lp->uv); /* count from now, not from the end of the last poll */
      rc = uv_timer_start(&lp->wake_timer, on_wake, ms < 1 ? 1 : ms > 86400000.0 ? 86400000 : (uint64_t)ms, 0);
      if (rc != 0) coord_loop_fault(lp, "uv_timer_start (poll timeout)", uv_strerror(rc));
    }
    if (rc == 0) uv_run(&lp->uv, UV_RUN_ONCE);
    if ((rc = uv_timer_stop(&lp->wake_timer)) != 0) coord_loop_fault(lp, "uv_timer_stop (poll timeout)", uv_strerror(rc));
  }
  /* sockets started during this iteration join the backend fd only at the next one */
  if (flush) uv_run(&lp->uv, UV_RUN_NOWAIT);
  if (lp->fault) raise_fault(L, lp);
  lua_Integer n = 0;
  coord_req *r;
  while ((r = coord_track_next_ready(lp)) != NULL) {
    if (!r->canceled) {
      coord_track_push(L, r);
      lua_getiuservalue(L, -1, 1);
      lua_rawseti(L, 2, ++n);
      lua_pop(L, 1);
    }
    coord_track_settle(L, r);
  }
  n = coord_srv_drain(L, lp, 2, n);
  lp->polling = 0;
  lua_pushinteger(L, n);
  lua_pushinteger(L, (lua_Integer)(lp->nactive + lp->nsrv));
  return 2;
}

/* fd(): the loop's backend descriptor and the seconds until it must be polled again
   (nil when only I/O can wake it), for hosts that run their own event loop. */
static int l_fd(lua_State *L) {
  coord_loop *lp = coord_loop_get(L, lua_upvalueindex(1));
  lua_pushinteger(L, uv_backend_fd(&lp->uv));
  int t = lp->ready_head || lp->cancels || lp->kick || lp->srv_ready || lp->srv_cancels ? 0 : uv_loop_alive(&lp->uv) ? uv_backend_timeout(&lp->uv) : -1;
  if (t < 0) lua_pushnil(L);
  else lua_pushnumber(L, t / 1000.0);
  return 2;
}

static int l_now(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (double)ts.tv_sec + ts.tv_nsec / 1e9);
  return 1;
}

static int l_inflight(lua_State *L) {
  coord_holder *h = lua_touserdata(L, lua_upvalueindex(1));
  lua_pushinteger(L, h->loop ? (lua_Integer)(h->loop->nactive + h->loop->nsrv) : 0);
  return 1;
}

/* __gc of the holder: runs at lua_close, possibly before or after the requests' own. */
static int l_holder_gc(lua_State *L) {
  coord_holder *h = lua_touserdata(L, 1);
  if (h->loop) coord_loop_destroy(h->loop);
  h->loop = NULL;
  h->closed = 1;
  return 0;
}

/* Expects the module table on top; leaves it there. Functions share the holder as upvalue 1. */
void coord_loop_register(lua_State *L) {
  static const luaL_Reg fns[] = {{"poll", l_poll}, {"fd", l_fd},
                                 {"inflight", l_inflight}, {"srv_lookup", coord_srv_lookup}, {NULL, NULL}};
  coord_holder *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->loop = NULL;
  h->closed = 0;
  lua_newtable(L);
  lua_pushcfunction(L, l_holder_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  coord_req_push_new(L); /* its upvalues: the holder and the option names */
  lua_setfield(L, -3, "request");
  luaL_setfuncs(L, fns, 1);
  lua_pushcfunction(L, l_now);
  lua_setfield(L, -2, "now");
}
