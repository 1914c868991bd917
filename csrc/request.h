/* request.h: one HTTP exchange as a Lua object backed by a curl easy handle. */
#ifndef COORD_REQUEST_H
#define COORD_REQUEST_H

#include "buffer.h"
#include "loop.h"

#define COORD_REQ_MT "coord.request"
#define COORD_INLINE 320

struct coord_req {
  CURL *easy;            /* held only while active */
  coord_loop *loop;      /* set while attached to a loop list; NULL once settled */
  coord_req *prev, *next;   /* loop->active */
  coord_req *ready_next;    /* loop->ready_head */
  coord_req *cancel_next;   /* loop->cancels */
  int ref;               /* registry ref to this userdata while attached */
  unsigned active : 1, in_ready : 1, in_cancel : 1, done : 1, canceled : 1;
  unsigned stream : 1, upload : 1, upload_eof : 1, waiting : 1, headers_done : 1;
  unsigned recv_paused : 1, send_paused : 1, too_large : 1, nomem : 1;
  unsigned recv_over : 1;  /* uploads: curl stopped reading while the body was paused */
  unsigned easy_flags : 3; /* COORD_EASY_*: how to clean the handle for reuse */
  unsigned resend : 1;   /* libcurl may send the request again on a fresh connection */
  unsigned resend_refused : 1; /* it wanted to, and was stopped (on_prereq) */
  unsigned char sent;    /* attempts whose request may have left this process (saturates) */
  const char *fault;     /* a libcurl or libuv call for this request failed: which one ... */
  const char *fault_why; /* ... and why (static strings); the request fails with it */
  CURLcode result;
  long status;
  size_t max_body;       /* bound on buffered response bytes */
  size_t high_water;     /* streams: pause the transfer above this many unread bytes */
  size_t nl_end;         /* streams: one past the last newline in body (absolute index) */
  unsigned long pauses;  /* streams: how often backpressure paused the transfer */
  struct curl_slist *headers;
  struct curl_slist *connect_to; /* CURLOPT_CONNECT_TO: curl reads it until the transfer ends */
  coord_buf body;        /* response body, or the unread part of a stream */
  coord_buf hdrs;        /* header lines of the final response */
  coord_buf send;        /* streamed request body not yet taken by curl */
  char *errbuf;          /* CURLOPT_ERRORBUFFER (malloc'd): kept only when the transfer failed */
  uint64_t deadline;     /* watchdog.c: ms (uv_hrtime) after which coord ends it; 0 = none */
  unsigned long timeout_ms; /* the request's timeout, for the watchdog's message */
  /* from here on: storage, not state; the request's constructor zeroes only what comes before */
  char body_inline[COORD_INLINE];  /* a typical reply fits here: no allocation */
  char hdrs_inline[COORD_INLINE];
};

void coord_req_finish(coord_loop *lp, coord_req *r, CURLcode code);
void coord_req_fault(coord_loop *lp, coord_req *r, const char *what, const char *why);
void coord_req_detach(coord_loop *lp, coord_req *r);
void coord_req_push_new(lua_State *L);
void coord_req_register(lua_State *L);
void coord_req_unpolled(coord_loop *lp, CURL *e);
void coord_req_unstall(coord_loop *lp);

/* curl's callbacks of a request (set by easy.c) */
size_t coord_req_on_write(char *p, size_t size, size_t nmemb, void *ud);
size_t coord_req_on_header(char *p, size_t size, size_t nmemb, void *ud);
size_t coord_req_on_read(char *p, size_t size, size_t nmemb, void *ud);
int coord_req_on_prereq(void *ud, char *ip, char *local_ip, int port, int local_port);

/* watchdog.c */
void coord_watchdog_arm(coord_loop *lp, coord_req *r, long timeout_ms);

#endif
