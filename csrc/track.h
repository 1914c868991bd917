/* track.h: which of the loop's lists a request is on, and the registry reference that keeps
   its userdata alive while it is on any of them. */
#ifndef COORD_TRACK_H
#define COORD_TRACK_H

#include "loop.h"

void coord_track_init(coord_req *r);
void coord_track_hold(lua_State *L, coord_req *r, int idx);
void coord_track_unhold(lua_State *L, coord_req *r);
void coord_track_push(lua_State *L, coord_req *r);
void coord_track_activate(coord_loop *lp, coord_req *r, CURL *e);
CURL *coord_track_deactivate(coord_loop *lp, coord_req *r);
coord_req *coord_track_find(coord_loop *lp, CURL *e);
void coord_track_ready(coord_loop *lp, coord_req *r);
coord_req *coord_track_next_ready(coord_loop *lp);
void coord_track_cancel(coord_loop *lp, coord_req *r);
coord_req *coord_track_next_cancel(coord_loop *lp);
void coord_track_settle(lua_State *L, coord_req *r);
void coord_track_forget(coord_loop *lp, coord_req *r);

#endif
