-- coord.pipeline: the one attempt loop every call of coord.etcd and coord.consul goes through.
-- The backend (a table of functions, called with the client) chooses endpoints, builds and
-- classifies requests and refreshes credentials; the loop owns the deadline and the retry policy.

local http = require "coord.http"
local sched = require "coord.sched"
local errors = require "coord.errors"
local now = require("coord.core").now

local M = {}

local BACKOFF_BASE, BACKOFF_MAX = 0.1, 5

--- Whether a failed request certainly never reached the server: it failed to connect or to
--- resolve and libcurl did not send a byte of it. The backend may add its own cases.
function M.never_sent(err)
  return (err.kind == "connect" or err.kind == "resolve") and not err.maybe_applied
end
local never_sent = M.never_sent

local function default_send(_, _, req)
  return http.request(req)
end

-- Runs one call. b (the backend) has:
--   pick(c, call) -> endpoint, or nil, err (credentials included: a token is got first);
--   request(c, ep, call) -> the coord.http request table for one attempt;
--   send(c, ep, req, call) -> res, or nil, err (optional: coord.http.request);
--   classify(c, res, call) -> value, nil, meta; or nil, err (kinds of errors.by_status);
--   failed(c, ep, err), succeeded(c, ep): the endpoint's health;
--   size(c, call): how many endpoints one call may try;
--   refresh(c, err, call) -> true when new credentials make one more attempt worth it;
--   transient(c, err, call) -> true for an answer worth another attempt after a backoff;
--   never_sent(err) (optional, on top of M.never_sent);
--   down: the error kinds that say the endpoint is in trouble.
-- call: idempotent (may be sent again after any failure), cap (the caller's timeout: a cap on
-- the whole call, attempts, re-authentication and backoff), retries (transient answers
-- retried, default 0), plus whatever the backend reads. The backend may make the call table
-- its request table too (coord.http ignores fields it does not know): one table per call.
-- A failure may be retried only when the call is idempotent or the request certainly never
-- left (a write with err.maybe_applied is never sent again): on the next endpoint right away
-- when the endpoint is in trouble (each endpoint once per call), else after a backoff when
-- the backend says the answer is transient (call.retries times). Credentials are refreshed
-- once per call, whatever the call (a refused request applied nothing).
function M.run(b, c, call)
  local cap = call.cap
  local deadline = cap and now() + cap
  local down, send = b.down, b.send or default_send
  local moves, retries, refreshed, backoff = 0, 0, false, nil
  local last
  while true do
    local ep, err = b.pick(c, call)
    if not ep then return nil, err end
    local req = b.request(c, ep, call)
    if deadline then
      local left = deadline - now()
      if left <= 0 then
        return nil, last or errors.new("timeout", "the call's timeout passed", { timeout = cap })
      end
      req.timeout = left -- the caller's timeout is every attempt's, less what went before
    end
    local res, value, meta
    res, err = send(c, ep, req, call)
    if res then value, err, meta = b.classify(c, res, call) end
    if not err then
      b.succeeded(c, ep)
      return value, nil, meta
    end
    last = err
    local trouble = down[err.kind] and not (err.kind == "timeout" and deadline)
    if trouble then b.failed(c, ep, err) elseif err.status then b.succeeded(c, ep) end
    if not refreshed and b.refresh(c, err, call) then
      refreshed = true
    elseif not (call.idempotent or never_sent(err) or (b.never_sent and b.never_sent(err))) then
      return nil, err
    elseif trouble and moves < b.size(c, call) - 1 then
      moves = moves + 1
    elseif retries < (call.retries or 0) and b.transient(c, err, call) then
      retries = retries + 1
      backoff = backoff or sched.backoff(BACKOFF_BASE, BACKOFF_MAX)
      local d = backoff:delay()
      if deadline then
        local left = deadline - now()
        if left <= 0 then return nil, err end
        if d > left then d = left end
      end
      sched.sleep(d)
    else
      return nil, err
    end
  end
end

return M
