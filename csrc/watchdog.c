/* watchdog.c: every request with a timeout ends by it, whatever libcurl does. libcurl applies
   CURLOPT_TIMEOUT_MS only to a transfer it has started: one it parks to wait for a connection
   (CURLOPT_PIPEWAIT waiting for an idle HTTP/2 connection that never saw a reply, or a
   connection limit) is outside its timeout handling, and nothing may ever wake it. Once a
   second, while some request has a deadline, the watchdog ends each one past it (its timeout
   plus a second of grace, so that libcurl's own timeout comes first wherever it applies) as
   timed out. Runs as a uv timer callback, never inside libcurl. */
#include <stdio.h>
#include "request.h"

#define GRACE_MS 1000
#define PERIOD_MS 1000

static uint64_t now_ms(void) { return uv_hrtime() / 1000000; }

static void on_watchdog(uv_timer_t *t) {
  coord_loop *lp = t->data;
  uint64_t now = now_ms();
  int more = 0;
  coord_req *next;
  for (coord_req *r = lp->active; r != NULL; r = next) {
    next = r->next; /* finishing r takes it off this list, and only r */
    if (r->deadline == 0 || r->in_cancel) continue;
    if (now < r->deadline) {
      more = 1;
      continue;
    }
    if (r->errbuf)
      snprintf(r->errbuf, CURL_ERROR_SIZE, "no reply within the timeout of %lu ms (%s)", r->timeout_ms,
               r->sent ? "libcurl did not end the transfer" : "still waiting for a connection, never sent");
    coord_req_finish(lp, r, CURLE_OPERATION_TIMEDOUT);
  }
  if (!more) {
    int rc = uv_timer_stop(t);
    if (rc != 0) coord_loop_fault(lp, "uv_timer_stop (watchdog)", uv_strerror(rc));
  }
}

/* Gives the started request r its deadline and makes sure the watchdog runs. */
void coord_watchdog_arm(coord_loop *lp, coord_req *r, long timeout_ms) {
  if (timeout_ms <= 0) return;
  r->timeout_ms = (unsigned long)timeout_ms;
  r->deadline = now_ms() + (uint64_t)timeout_ms + GRACE_MS;
  if (uv_is_active((uv_handle_t *)&lp->watchdog)) return;
  lp->watchdog.data = lp;
  int rc = uv_timer_start(&lp->watchdog, on_watchdog, PERIOD_MS, PERIOD_MS);
  if (rc != 0) coord_req_fault(lp, r, "uv_timer_start (watchdog)", uv_strerror(rc));
}
