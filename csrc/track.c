/* track.c: the loop's lists of requests (in flight, ready for Lua, cancel queued) and the
   registry reference a request holds while it is on any of them: it is taken before curl
   holds the request and dropped exactly once, when the request is on no list any more. */
#include "request.h"
#include "track.h"

/* A new request: on no list, holding nothing (the rest of it is zeroed). */
void coord_track_init(coord_req *r) { r->ref = LUA_NOREF; }

/* Takes the registry reference to the userdata at idx. May raise (out of memory), so it is
   taken before the request is handed to curl. */
void coord_track_hold(lua_State *L, coord_req *r, int idx) {
  lua_pushvalue(L, idx);
  r->ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Drops the reference of a request that never got onto a list. */
void coord_track_unhold(lua_State *L, coord_req *r) {
  if (r->ref == LUA_NOREF) return;
  luaL_unref(L, LUA_REGISTRYINDEX, r->ref);
  r->ref = LUA_NOREF;
}

/* Pushes the request's userdata (it is held, so it is alive). */
void coord_track_push(lua_State *L, coord_req *r) { lua_rawgeti(L, LUA_REGISTRYINDEX, r->ref); }

/* The request now runs on e, which is on the multi handle. */
void coord_track_activate(coord_loop *lp, coord_req *r, CURL *e) {
  r->easy = e;
  r->loop = lp;
  r->active = 1;
  r->prev = NULL;
  r->next = lp->active;
  if (lp->active) lp->active->prev = r;
  lp->active = r;
  lp->nactive++;
}

/* Takes the request off the in-flight list; returns its handle, which the caller releases. */
CURL *coord_track_deactivate(coord_loop *lp, coord_req *r) {
  CURL *e = r->easy;
  if (r->prev) r->prev->next = r->next;
  else lp->active = r->next;
  if (r->next) r->next->prev = r->prev;
  r->prev = r->next = NULL;
  lp->nactive--;
  r->active = 0;
  r->easy = NULL;
  return e;
}

/* The in-flight request running on e, or NULL (a handle of curl's own, or one being taken
   off the multi handle). CURLOPT_PRIVATE names it; should curl fail to tell, the in-flight
   list is searched. */
coord_req *coord_track_find(coord_loop *lp, CURL *e) {
  coord_req *r = NULL;
  if (curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&r) == CURLE_OK)
    return r != NULL && r->active && r->easy == e ? r : NULL;
  for (r = lp->active; r != NULL; r = r->next)
    if (r->easy == e) return r;
  return NULL;
}

/* Queues the request for Lua (once). A poll in progress must return now rather than wait for
   more I/O (this can run in the timer phase of uv_run, before it polls). */
void coord_track_ready(coord_loop *lp, coord_req *r) {
  if (r->in_ready) return;
  r->in_ready = 1;
  r->ready_next = NULL;
  if (lp->ready_tail) lp->ready_tail->ready_next = r;
  else lp->ready_head = r;
  lp->ready_tail = r;
  uv_stop(&lp->uv);
}

coord_req *coord_track_next_ready(coord_loop *lp) {
  coord_req *r = lp->ready_head;
  if (r == NULL) return NULL;
  lp->ready_head = r->ready_next;
  if (lp->ready_head == NULL) lp->ready_tail = NULL;
  r->ready_next = NULL;
  r->in_ready = 0;
  return r;
}

/* Queues an in-flight request to be taken off curl by the next poll (see loop.c). */
void coord_track_cancel(coord_loop *lp, coord_req *r) {
  if (!r->active || r->in_cancel) return;
  r->in_cancel = 1;
  r->cancel_next = lp->cancels;
  lp->cancels = r;
}

coord_req *coord_track_next_cancel(coord_loop *lp) {
  coord_req *r = lp->cancels;
  if (r == NULL) return NULL;
  lp->cancels = r->cancel_next;
  r->cancel_next = NULL;
  r->in_cancel = 0;
  return r;
}

/* Drops the registry reference once the request is on no list. */
void coord_track_settle(lua_State *L, coord_req *r) {
  if (r->active || r->in_ready || r->in_cancel) return;
  coord_track_unhold(L, r);
  r->loop = NULL;
}

/* Takes the request off the ready and cancel lists without Lua (lua_close: the reference
   goes with the registry). The in-flight list is the caller's (it owns the curl handle). */
void coord_track_forget(coord_loop *lp, coord_req *r) {
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
