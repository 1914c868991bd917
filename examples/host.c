/* examples/host.c: a C program embedding Lua 5.4 with its own epoll loop, the way a game server
   does. The loop owns the process: a timerfd ticks the game at 50 Hz, and coord's descriptor
   (coord.fd(), libuv's epoll fd) sits in the same epoll set; whenever it is readable, or
   coord's next deadline passes, the host calls coord.step(0). The Lua side (examples/host.lua)
   returns a table with frame(n), called once per tick until it returns false.
     build/host examples/host.lua */
#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define TICK_NS 20000000L /* 50 Hz */
#define MAX_FRAMES 1000   /* at most 20 s of frames */

static int fail(lua_State *L, const char *what) {
  fprintf(stderr, "host: %s: %s\n", what, lua_tostring(L, -1));
  return 1;
}

/* Calls coord[name]() (with the argument 0 when zero is set); 0 when it raised (message on the
   stack). */
static int call_coord(lua_State *L, int coord, const char *name, int zero, int nres) {
  lua_getfield(L, coord, name);
  if (zero) lua_pushinteger(L, 0);
  return lua_pcall(L, zero ? 1 : 0, nres, 0) == LUA_OK;
}

/* coord.fd(): the descriptor, and the milliseconds epoll may block for coord (-1: no bound). */
static int coord_fd(lua_State *L, int coord, int *fd, int *ms) {
  if (!call_coord(L, coord, "fd", 0, 2)) return 0;
  *fd = (int)lua_tointeger(L, -2);
  *ms = lua_isnil(L, -1) ? -1 : (int)ceil(lua_tonumber(L, -1) * 1000);
  lua_pop(L, 2);
  return 1;
}

static int run(lua_State *L, const char *script) {
  luaL_openlibs(L);
  lua_getglobal(L, "require");
  lua_pushstring(L, "coord");
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) return fail(L, "require coord");
  int coord = lua_gettop(L);
  if (luaL_dofile(L, script) != LUA_OK) return fail(L, script);
  if (!lua_istable(L, -1)) {
    fprintf(stderr, "host: %s must return a table with frame(n)\n", script);
    return 1;
  }
  lua_getfield(L, -1, "frame");
  int frame = lua_gettop(L);

  int cfd, ms;
  if (!coord_fd(L, coord, &cfd, &ms)) return fail(L, "coord.fd");
  if (cfd < 0) {
    fprintf(stderr, "host: coord.fd() has no descriptor on this platform\n");
    return 1;
  }
  int ep = epoll_create1(EPOLL_CLOEXEC);
  int tick = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (ep < 0 || tick < 0) {
    perror("host: epoll/timerfd");
    return 1;
  }
  struct itimerspec its = {{0, TICK_NS}, {0, TICK_NS}};
  timerfd_settime(tick, 0, &its, NULL);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = cfd};
  epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &ev);
  ev.data.fd = tick;
  epoll_ctl(ep, EPOLL_CTL_ADD, tick, &ev);

  long frames = 0, steps = 0;
  int status = 1, going = 1;
  while (going && frames < MAX_FRAMES) {
    if (!coord_fd(L, coord, &cfd, &ms)) {
      fail(L, "coord.fd");
      break;
    }
    struct epoll_event got[4];
    int n = epoll_wait(ep, got, 4, ms);
    if (n < 0 && errno != EINTR) {
      perror("host: epoll_wait");
      break;
    }
    int coord_due = n == 0; /* coord's deadline passed */
    for (int i = 0; i < n; i++) {
      if (got[i].data.fd == cfd) {
        coord_due = 1;
      } else {
        uint64_t expirations;
        if (read(tick, &expirations, sizeof expirations) != (ssize_t)sizeof expirations) continue;
        frames++;
        lua_pushvalue(L, frame);
        lua_pushinteger(L, frames);
        if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
          fail(L, "frame");
          going = 0;
          break;
        }
        if (!lua_toboolean(L, -1)) going = 0, status = 0;
        lua_pop(L, 1);
      }
    }
    if (coord_due) {
      steps++;
      if (!call_coord(L, coord, "step", 1, 0)) {
        fail(L, "coord.step");
        status = 1;
        break;
      }
    }
  }
  if (going && frames >= MAX_FRAMES) fprintf(stderr, "host: gave up after %d frames\n", MAX_FRAMES);
  printf("host: %ld frames, %ld coord steps\n", frames, steps);
  close(tick);
  close(ep);
  return status;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s SCRIPT.lua\n", argv[0]);
    return 2;
  }
  lua_State *L = luaL_newstate();
  if (!L) return 1;
  int status = run(L, argv[1]);
  lua_close(L);
  return status;
}
