/* srv.c: DNS SRV lookups with c-ares on the coord loop. Each lookup has its own resolver
   channel; its sockets are watched with uv_poll and its timeouts with a uv_timer. The c-ares
   and uv callbacks only record; the poll hands the lookup's owner to Lua (loop.c). */
#include <ares.h>
#include <stdlib.h>
#include <string.h>
#include "srv.h"

#define SRV_MT "coord.srv"
#define DNS_CLASS_IN 1
#define DNS_TYPE_SRV 33
#define DEFAULT_TIMEOUT_MS 5000
#define SOCK_FAILED (-1) /* status: a resolver socket could not be watched */

typedef struct srv_sock {
  uv_poll_t poll;
  ares_socket_t fd;
  coord_srv *q;
  struct srv_sock *next;
} srv_sock;

struct coord_srv {
  coord_loop *loop;       /* set while attached to a loop list; NULL once settled */
  coord_srv *prev, *next; /* loop->srv_active */
  coord_srv *ready_next;  /* loop->srv_ready */
  coord_srv *cancel_next; /* loop->srv_cancels */
  ares_channel ch;        /* held only while active */
  uv_timer_t *timer;      /* malloc'd: its close completes after this userdata may be gone */
  srv_sock *socks;        /* the sockets c-ares asked to have watched */
  int ref;                /* registry ref to this userdata while attached */
  unsigned active : 1, in_ready : 1, in_cancel : 1, done : 1, canceled : 1, answered : 1;
  int status;             /* ARES_* (or SOCK_FAILED) once answered */
  uint64_t deadline;      /* uv time (ms) when the lookup times out */
  struct ares_srv_reply *reply;
};

/* uv close callback of a malloc'd timer or srv_sock (whose first member is its handle) */
static void free_handle(uv_handle_t *h) { free(h); }

/* ---- callbacks: they only record ---- */

static void record(coord_srv *q, int status) {
  if (q->answered) return;
  q->answered = 1;
  q->status = status;
}

static void on_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen) {
  coord_srv *q = arg;
  (void)timeouts;
  if (q->answered) return;
  if (status == ARES_SUCCESS) {
    struct ares_srv_reply *reply = NULL;
    status = ares_parse_srv_reply(abuf, alen, &reply);
    if (status == ARES_SUCCESS && reply == NULL) status = ARES_ENODATA;
    if (status == ARES_SUCCESS) q->reply = reply;
    else if (reply) ares_free_data(reply);
  }
  record(q, status);
}

static void on_poll(uv_poll_t *h, int status, int events);

/* ARES_OPT_SOCK_STATE_CB: start, change or stop watching one resolver socket. A socket that
   cannot be watched fails the lookup (it would otherwise wait for its timeout). */
static void on_sock_state(void *data, ares_socket_t fd, int readable, int writable) {
  coord_srv *q = data;
  srv_sock **pp = &q->socks;
  while (*pp && (*pp)->fd != fd) pp = &(*pp)->next;
  srv_sock *s = *pp;
  if (!readable && !writable) {
    if (s) {
      *pp = s->next;
      uv_close((uv_handle_t *)&s->poll, free_handle); /* at once: c-ares closes it next */
    }
    return;
  }
  if (s == NULL) {
    s = calloc(1, sizeof *s);
    if (s == NULL) {
      record(q, SOCK_FAILED);
      return;
    }
    if (uv_poll_init_socket(&q->loop->uv, &s->poll, fd) != 0) {
      free(s);
      record(q, SOCK_FAILED);
      return;
    }
    s->poll.data = s;
    s->fd = fd;
    s->q = q;
    s->next = q->socks;
    q->socks = s;
  }
  int events = (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0);
  if (uv_poll_start(&s->poll, events, on_poll) != 0) record(q, SOCK_FAILED);
}

/* ---- life cycle ---- */

static void active_unlink(coord_loop *lp, coord_srv *q) {
  if (q->prev) q->prev->next = q->next;
  else lp->srv_active = q->next;
  if (q->next) q->next->prev = q->prev;
  q->prev = q->next = NULL;
  lp->nsrv--;
}

/* Releases the channel and every uv handle of a lookup. ares_destroy may still call
   on_answer (ARES_EDESTRUCTION: ignored once answered) and on_sock_state (closing). */
static void release(coord_loop *lp, coord_srv *q) {
  record(q, ARES_EDESTRUCTION);
  if (q->ch) ares_destroy(q->ch);
  q->ch = NULL;
  while (q->socks) {
    srv_sock *s = q->socks;
    q->socks = s->next;
    uv_close((uv_handle_t *)&s->poll, free_handle);
  }
  if (q->timer) uv_close((uv_handle_t *)q->timer, free_handle);
  q->timer = NULL;
  active_unlink(lp, q);
  q->active = 0;
}

/* Called from a uv callback after c-ares has returned, or when a cancel is applied: ends the
   lookup and queues it for Lua. */
static void finish(coord_srv *q) {
  if (!q->active) return;
  coord_loop *lp = q->loop;
  release(lp, q);
  q->done = 1;
  if (q->canceled || q->in_ready) return;
  q->in_ready = 1;
  q->ready_next = lp->srv_ready;
  lp->srv_ready = q;
  uv_stop(&lp->uv); /* a poll in progress returns now (see coord_loop_ready) */
}

static void on_timer(uv_timer_t *t);

/* Arms the timer for c-ares's next timeout, bounded by the lookup's deadline. */
static void arm(coord_srv *q) {
  if (q->answered) {
    finish(q);
    return;
  }
  uint64_t now = uv_now(&q->loop->uv);
  if (now >= q->deadline) {
    record(q, ARES_ETIMEOUT);
    finish(q);
    return;
  }
  uint64_t ms = q->deadline - now;
  struct timeval tv;
  if (ares_timeout(q->ch, NULL, &tv) != NULL) {
    uint64_t next = (uint64_t)tv.tv_sec * 1000 + ((uint64_t)tv.tv_usec + 999) / 1000;
    if (next < ms) ms = next;
  }
  if (uv_timer_start(q->timer, on_timer, ms ? ms : 1, 0) != 0) {
    record(q, SOCK_FAILED);
    finish(q);
  }
}

static void on_timer(uv_timer_t *t) {
  coord_srv *q = t->data;
  if (uv_now(t->loop) < q->deadline) ares_process_fd(q->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
  arm(q);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  srv_sock *s = h->data;
  coord_srv *q = s->q;
  int rd = status < 0 || (events & UV_READABLE), wr = status < 0 || (events & UV_WRITABLE);
  ares_process_fd(q->ch, rd ? s->fd : ARES_SOCKET_BAD, wr ? s->fd : ARES_SOCKET_BAD);
  arm(q);
}

/* Drops the registry reference once nothing in the loop points at the lookup any more. */
static void settle(lua_State *L, coord_srv *q) {
  if (q->active || q->in_ready || q->in_cancel) return;
  if (q->ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, q->ref);
    q->ref = LUA_NOREF;
  }
  q->loop = NULL;
}

/* Applies cancellations queued by Lua (poll, before it runs the loop). */
void coord_srv_apply_cancels(lua_State *L, coord_loop *lp) {
  while (lp->srv_cancels) {
    coord_srv *q = lp->srv_cancels;
    lp->srv_cancels = q->cancel_next;
    q->cancel_next = NULL;
    q->in_cancel = 0;
    record(q, ARES_ECANCELLED);
    finish(q);
    settle(L, q);
  }
}

/* Stores the owners of finished lookups in the table at out, after index n; returns the new n. */
lua_Integer coord_srv_drain(lua_State *L, coord_loop *lp, int out, lua_Integer n) {
  while (lp->srv_ready) {
    coord_srv *q = lp->srv_ready;
    lp->srv_ready = q->ready_next;
    q->ready_next = NULL;
    q->in_ready = 0;
    if (!q->canceled) {
      lua_rawgeti(L, LUA_REGISTRYINDEX, q->ref);
      lua_getiuservalue(L, -1, 1);
      lua_rawseti(L, out, ++n);
      lua_pop(L, 1);
    }
    settle(L, q);
  }
  return n;
}

/* Removes a lookup from every loop list without Lua (lua_close only). */
static void detach(coord_loop *lp, coord_srv *q) {
  if (q->active) release(lp, q);
  if (q->in_ready) {
    coord_srv **pp = &lp->srv_ready;
    while (*pp && *pp != q) pp = &(*pp)->ready_next;
    if (*pp) *pp = q->ready_next;
    q->in_ready = 0;
  }
  if (q->in_cancel) {
    coord_srv **pp = &lp->srv_cancels;
    while (*pp && *pp != q) pp = &(*pp)->cancel_next;
    if (*pp) *pp = q->cancel_next;
    q->in_cancel = 0;
  }
  q->loop = NULL;
}

/* At loop teardown, before its last uv_run: every lookup lets go of the loop. */
void coord_srv_detach_all(coord_loop *lp) {
  while (lp->srv_active) detach(lp, lp->srv_active);
  while (lp->srv_ready) detach(lp, lp->srv_ready);
  while (lp->srv_cancels) detach(lp, lp->srv_cancels);
}

/* ---- Lua ---- */

static coord_srv *check_srv(lua_State *L) { return luaL_checkudata(L, 1, SRV_MT); }

static int srv_gc(lua_State *L) {
  coord_srv *q = check_srv(L);
  if (q->loop) detach(q->loop, q);
  if (q->reply) ares_free_data(q->reply);
  q->reply = NULL;
  return 0;
}

/* cancel(): abandons the lookup. Only marks and queues; the next poll releases the channel. */
static int srv_cancel(lua_State *L) {
  coord_srv *q = check_srv(L);
  if (q->canceled) return 0;
  q->canceled = 1;
  if (q->active && !q->in_cancel) {
    q->in_cancel = 1;
    q->cancel_next = q->loop->srv_cancels;
    q->loop->srv_cancels = q;
  }
  return 0;
}

/* result(): the records as a list of {target, port, priority, weight} in the order of the
   answer; or nil, kind ("resolve", "timeout", "canceled"), message. */
static int srv_result(lua_State *L) {
  coord_srv *q = check_srv(L);
  if (q->canceled) {
    luaL_pushfail(L);
    lua_pushliteral(L, "canceled");
    lua_pushliteral(L, "lookup canceled");
    return 3;
  }
  if (!q->done) return luaL_error(L, "coord: lookup has not finished");
  if (q->status != ARES_SUCCESS) {
    luaL_pushfail(L);
    lua_pushstring(L, q->status == ARES_ETIMEOUT ? "timeout" : "resolve");
    if (q->status == SOCK_FAILED) lua_pushliteral(L, "cannot watch the resolver's socket");
    else if (q->status == ARES_ENOTFOUND) lua_pushliteral(L, "no such name (NXDOMAIN)");
    else if (q->status == ARES_ENODATA) lua_pushliteral(L, "no SRV records for the name");
    else if (q->status == ARES_ETIMEOUT) lua_pushliteral(L, "no answer from the DNS server in time");
    else lua_pushstring(L, ares_strerror(q->status));
    return 3;
  }
  lua_newtable(L);
  lua_Integer i = 0;
  for (struct ares_srv_reply *r = q->reply; r != NULL; r = r->next) {
    lua_createtable(L, 0, 4);
    lua_pushstring(L, r->host);
    lua_setfield(L, -2, "target");
    lua_pushinteger(L, r->port);
    lua_setfield(L, -2, "port");
    lua_pushinteger(L, r->priority);
    lua_setfield(L, -2, "priority");
    lua_pushinteger(L, r->weight);
    lua_setfield(L, -2, "weight");
    lua_rawseti(L, -2, ++i);
  }
  return 1;
}

/* Option field name of the table at t: a string, or NULL when absent; raises otherwise. */
static const char *opt_string(lua_State *L, int t, const char *name) {
  int got = lua_getfield(L, t, name);
  if (got == LUA_TNIL) {
    lua_pop(L, 1);
    return NULL;
  }
  if (got != LUA_TSTRING) luaL_error(L, "bad option '%s' to 'srv_lookup' (string expected, got %s)", name, luaL_typename(L, -1));
  return lua_tostring(L, -1); /* stays on the stack */
}

static uint64_t opt_timeout(lua_State *L, int t) {
  if (lua_getfield(L, t, "timeout") == LUA_TNIL) {
    lua_pop(L, 1);
    return DEFAULT_TIMEOUT_MS;
  }
  int isnum;
  double s = lua_tonumberx(L, -1, &isnum);
  lua_pop(L, 1);
  if (!isnum || !(s > 0 && s <= 3600)) luaL_error(L, "bad option 'timeout' to 'srv_lookup' (seconds above 0, at most 3600, expected)");
  return s < 0.001 ? 1 : (uint64_t)(s * 1000);
}

/* srv_lookup(name, opts, owner): starts an SRV lookup of name and returns its object; owner is
   what poll() hands back when it has finished. opts: dns_server ("host:port[,...]", else the
   system's resolv.conf), timeout (seconds for the whole lookup, default 5). Options are
   checked and the userdata is referenced before any resource is taken, so a raise leaks
   nothing. */
int coord_srv_lookup(lua_State *L) {
  size_t namelen;
  const char *name = luaL_checklstring(L, 1, &namelen);
  luaL_argcheck(L, namelen > 0 && strlen(name) == namelen, 1, "a DNS name expected");
  if (lua_isnoneornil(L, 2)) {
    lua_newtable(L);
    lua_replace(L, 2);
  }
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 3);
  coord_loop *lp = coord_loop_get(L, lua_upvalueindex(1));
  const char *server = opt_string(L, 2, "dns_server");
  uint64_t timeout = opt_timeout(L, 2);

  coord_srv *q = lua_newuserdatauv(L, sizeof *q, 1);
  memset(q, 0, sizeof *q);
  q->ref = LUA_NOREF;
  luaL_setmetatable(L, SRV_MT);
  int ud = lua_gettop(L);
  lua_pushvalue(L, 3);
  lua_setiuservalue(L, ud, 1);
  lua_pushvalue(L, ud);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);

  uv_timer_t *timer = malloc(sizeof *timer);
  if (timer == NULL || uv_timer_init(&lp->uv, timer) != 0) {
    free(timer);
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    return luaL_error(L, "coord: cannot create a timer (out of memory?)");
  }
  timer->data = q;
  struct ares_options o;
  memset(&o, 0, sizeof o);
  o.sock_state_cb = on_sock_state;
  o.sock_state_cb_data = q;
  /* two tries, the second waiting twice as long: together about the whole timeout */
  o.timeout = (int)(timeout / 3 > 0 ? timeout / 3 : 1);
  o.tries = 2;
  int st = ares_init_options(&q->ch, &o, ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
  if (st == ARES_SUCCESS && server) st = ares_set_servers_ports_csv(q->ch, server);
  if (st != ARES_SUCCESS) {
    if (q->ch) ares_destroy(q->ch);
    q->ch = NULL;
    uv_close((uv_handle_t *)timer, free_handle);
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    if (server && (st == ARES_EBADSTR || st == ARES_ENODATA))
      return luaL_error(L, "bad option 'dns_server' to 'srv_lookup' (\"host:port\" list expected, got '%s')", server);
    return luaL_error(L, "coord: cannot create a resolver: %s", ares_strerror(st));
  }
  q->ref = ref;
  q->timer = timer;
  q->loop = lp;
  q->active = 1;
  q->next = lp->srv_active;
  if (lp->srv_active) lp->srv_active->prev = q;
  lp->srv_active = q;
  lp->nsrv++;
  uv_update_time(&lp->uv);
  q->deadline = uv_now(&lp->uv) + timeout;
  ares_query(q->ch, name, DNS_CLASS_IN, DNS_TYPE_SRV, on_answer, q);
  arm(q); /* an answer given at once (a malformed name) finishes here */
  lua_pushvalue(L, ud);
  return 1;
}

void coord_srv_register(lua_State *L) {
  static const luaL_Reg methods[] = {{"result", srv_result}, {"cancel", srv_cancel}, {NULL, NULL}};
  static int ares_ready;
  if (!ares_ready) {
    int st = ares_library_init(ARES_LIB_INIT_ALL);
    if (st != ARES_SUCCESS) luaL_error(L, "coord: ares_library_init failed: %s", ares_strerror(st));
    ares_ready = 1;
  }
  luaL_newmetatable(L, SRV_MT);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, srv_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, srv_cancel);
  lua_setfield(L, -2, "__close");
  lua_pop(L, 1);
}
