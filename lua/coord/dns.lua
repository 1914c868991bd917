-- coord.dns: DNS SRV lookups on the coord loop (c-ares in the C core), without blocking it.

local core = require "coord.core"
local sched = require "coord.sched"
local errors = require "coord.errors"
local args = require "coord.args"

local M = {}

local srv_lookup = core.srv_lookup

local function cancel_lookup(w)
  if not w.done then w.ud:cancel() end
end

--- The SRV records of `name` as a list of {target, port, priority, weight}, in the order the
--- server answered; or nil and an error: kind "resolve" (no such name, no SRV records, the
--- server refused or failed), "timeout" (no answer within opts.timeout), "canceled"; the
--- error has the name looked up in `name`. opts: dns_server ("host:port", several separated
--- by commas; default: the servers of /etc/resolv.conf), timeout (seconds for the whole
--- lookup, default 5).
function M.srv(name, opts)
  args.check(name, "string", 1, "srv")
  opts = args.opts(opts, 2, "srv")
  local o = { dns_server = args.option(opts, "dns_server", "string", "srv"),
    timeout = args.option(opts, "timeout", "number", "srv") }
  local w = setmetatable({ cancel = cancel_lookup, ud = false, co = false, done = false, taken = false }, sched.Waiter)
  w.ud = srv_lookup(name, o, w)
  sched.wait(w)
  local list, kind, message = w.ud:result()
  if not list then
    return nil, errors.new(kind, ("SRV lookup of %s: %s"):format(name, message), { name = name })
  end
  return list
end

return M
