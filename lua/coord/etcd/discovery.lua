-- coord.etcd.discovery: the endpoints of an etcd cluster from DNS SRV records, as etcdctl's
-- --discovery-srv finds them: _etcd-client-ssl._tcp.<domain> (https) and
-- _etcd-client._tcp.<domain> (http). See doc/etcd-discovery.md.

local core = require "coord.core"
local dns = require "coord.dns"
local sched = require "coord.sched"
local sync = require "coord.sync"
local errors = require "coord.errors"

local M = {}

local now = core.now

-- after every endpoint failed: look the records up again at most once per this many seconds
local RETRY = 1

local Discovery = { __name = "coord.etcd.discovery" }
Discovery.__index = Discovery

--- The discovery of a client's options (discovery_srv, discovery_srv_name, dns_server), or
--- nil when discovery_srv is absent. Raises on bad options.
function M.new(opts)
  local domain = opts.discovery_srv
  if domain == nil then return nil end
  if type(domain) ~= "string" or not domain:find("^[%w_][%w_%.%-]*$") then
    error("bad option 'discovery_srv' to 'new' (a domain name expected)", 3)
  end
  if opts.endpoints ~= nil then
    error("bad option 'endpoints' to 'new' (discovery_srv finds the endpoints: give one or the other)", 3)
  end
  local sname, server = opts.discovery_srv_name, opts.dns_server
  if sname ~= nil and (type(sname) ~= "string" or not sname:find("^[%w][%w%-]*$")) then
    error("bad option 'discovery_srv_name' to 'new' (a service name suffix expected)", 3)
  end
  dns._check_server(server, "new")
  local suffix = sname and ("-" .. sname) or ""
  domain = domain:gsub("%.$", "")
  return setmetatable({
    domain = domain,
    names = { "_etcd-client-ssl" .. suffix .. "._tcp." .. domain, "_etcd-client" .. suffix .. "._tcp." .. domain },
    dns_server = server,
    sem = sync.semaphore(1), -- one lookup at a time: callers meanwhile wait for its outcome
    gen = 0,                 -- lookups done
    resolved_at = nil,       -- the last lookup that found records
    tried_at = -math.huge,   -- the last lookup
    ok = nil, err = nil,     -- the last lookup's outcome
  }, Discovery)
end

-- RFC 2782 order: by priority, lowest first; within one priority a random order in which a
-- record comes early with a chance proportional to its weight (weight 0 records last).
local function order(records)
  local key = {}
  for _, r in ipairs(records) do
    key[r] = r.weight > 0 and math.random() ^ (1 / r.weight) or -math.random()
  end
  table.sort(records, function(a, b)
    if a.priority ~= b.priority then return a.priority < b.priority end
    return key[a] > key[b]
  end)
  return records
end

--- Looks up both names (at once) and returns the endpoint URLs: the https ones first, then the
--- http ones, each group in RFC 2782 order; or nil and an error when neither name has records
--- (kind "timeout" when a lookup timed out, else "resolve"; fields name, names, causes).
function Discovery:lookup(timeout)
  local o = { dns_server = self.dns_server, timeout = timeout }
  local ssl, plain = sched.gather(function() return dns.srv(self.names[1], o) end,
    function() return dns.srv(self.names[2], o) end)
  local urls, seen = {}, {}
  for i, res in ipairs { ssl, plain } do
    for _, r in ipairs(res[1] and order(res[1]) or {}) do
      local u = (i == 1 and "https://" or "http://") .. r.target:gsub("%.$", "") .. ":" .. r.port
      if not seen[u] then
        seen[u] = true
        urls[#urls + 1] = u
      end
    end
  end
  if #urls > 0 then return urls end
  local causes = { ssl[2], plain[2] }
  local timed_out = (ssl[2] and ssl[2].kind == "timeout") or (plain[2] and plain[2].kind == "timeout")
  return nil, errors.new(timed_out and "timeout" or "resolve",
    ("no etcd endpoints found for %s: %s; %s"):format(self.domain, tostring(ssl[2] and ssl[2].message),
      tostring(plain[2] and plain[2].message)),
    { name = self.domain, names = self.names, causes = causes })
end

-- Whether the records should be looked up (again) before client c picks an endpoint: never
-- found yet, auto_sync seconds since they were, or every endpoint is failing (at most once
-- per RETRY seconds).
function Discovery:due(c)
  local t = now()
  if not self.resolved_at then return true end
  if c.auto_sync and t >= self.resolved_at + c.auto_sync then return true end
  if t < self.tried_at + RETRY then return false end
  for _, ep in ipairs(c.endpoints) do
    if ep.down_until <= t then return false end
  end
  return true
end

--- The hook the client calls before it picks an endpoint (and before a member list sync):
--- looks the records up when due, single-flight. The records become the client's seeds; they
--- also become its endpoints when it has none yet or every endpoint is failing. Returns true,
--- or nil and the lookup's error when no lookup has found records yet.
function Discovery:refresh(c)
  if not self:due(c) then return true end
  local gen = self.gen
  local permit <close> = self.sem:acquire()
  if self.gen ~= gen then -- a lookup finished while this caller waited: its outcome serves
    if self.resolved_at then return true end
    return nil, self.err
  end
  if not self:due(c) then return true end
  local urls, err = self:lookup(c.timeout)
  self.gen, self.tried_at = self.gen + 1, now()
  if urls then
    self.resolved_at = self.tried_at
    local list = c:_endpoints_for(urls)
    c.seeds = list
    local t, up = now(), false
    for _, ep in ipairs(c.endpoints) do
      if ep.down_until <= t then up = true end
    end
    if not up then c:_set_endpoints(list) end
  end
  self.ok, self.err = urls and true or nil, not urls and err or nil
  if not urls and self.resolved_at then return true end -- the endpoints found before still serve
  return self.ok, self.err
end

return M
