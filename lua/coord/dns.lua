-- coord.dns: DNS SRV lookups on the coord loop (c-ares in the C core), without blocking it.

local core = require "coord.core"
local sched = require "coord.sched"
local errors = require "coord.errors"
local args = require "coord.args"

local M = {}

local srv_lookup = core.srv_lookup

-- Whether s is a dns_server value: IPv4 addresses or [IPv6] ones, each with an optional
-- :port, separated by commas (the c-ares servers list).
local function server_list(s)
  for item in (s .. ","):gmatch("([^,]*),") do
    local host, port = item:match("^([%d%.]+)(:?%d*)$")
    if not host then host, port = item:match("^(%[[%x:%.]+%])(:?%d*)$") end
    if not host or port == ":" then return false end
  end
  return true
end

--- Checks option dns_server of fname's opts: nil or a server list; returns it.
function M._check_server(v, fname)
  if v == nil then return nil end
  if type(v) ~= "string" or not server_list(v) then
    error(("bad option 'dns_server' to '%s' (\"host:port\" expected, IPv6 as \"[addr]:port\", several separated by commas; got %s)")
      :format(fname, type(v) == "string" and ("%q"):format(v) or type(v)), 3)
  end
  return v
end

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
  if name == "" or name:find("%z") then error("bad argument #1 to 'srv' (a DNS name expected)", 2) end
  opts = args.opts(opts, 2, "srv")
  local o = { dns_server = M._check_server(opts.dns_server, "srv"),
    timeout = args.option(opts, "timeout", "number", "srv") }
  if o.timeout and not (o.timeout > 0 and o.timeout <= 3600) then
    error("bad option 'timeout' to 'srv' (seconds above 0, at most 3600, expected)", 2)
  end
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
