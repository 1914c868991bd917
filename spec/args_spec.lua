-- spec/args_spec.lua: hostile arguments to every public client function. Each call either
-- returns (a value, or nil and a coord error) or raises coord's own argument error, one that
-- names the function it was given to; never an internal error of a helper ('rawget', 'for
-- iterator', "attempt to index ..."). The clients talk to the fault peer, which answers
-- every request at once with 404, so no request succeeds and no call waits for long.

local coord = require "coord"
local helpers = require "helpers"

-- Values of every type, and strings that are hostile in a URL, a header or a path.
local hostile = {
  false, true, 0, -1, 1.5, math.huge, "", "x", "../../kv/x", "x?dc=other", "a\r\nb", "%00",
  {}, { 1, 2 }, { x = {} }, function() end, coroutine.create(function() end), io.stderr,
}

-- Option tables whose common fields have the wrong type.
local bad_opts = {
  { timeout = "soon" }, { prefix = {} }, { recurse = {} }, { limit = "5" }, { query = 5 },
  { index = "x" }, { wait = {} }, { ttl = "x" }, { lease = "x" }, { flags = "x" }, { cas = {} },
  { token = 5 }, { dc = {} }, { on_lost = 5 }, { range_end = 7 }, { keys = "x" }, { tag = {} },
  { revision = 1.5 }, { filter = {} }, { separator = {} }, { behavior = {} }, { value = {} },
}

-- Public methods (not starting with "_") of an object and its metatable's __index.
local function methods(obj)
  local mt = getmetatable(obj)
  local t = mt and type(mt.__index) == "table" and mt.__index or obj
  local list = {}
  for k, v in pairs(t) do
    if type(k) == "string" and type(v) == "function" and k:sub(1, 1) ~= "_" and not k:match("^__") then
      list[#list + 1] = k
    end
  end
  table.sort(list)
  return list
end

-- What the called function may be called in its own argument errors: its name, or the name
-- of the public function it forwards to (given in `aliases`).
local function own_error(msg, name, aliases)
  if type(msg) ~= "string" then return false end
  if msg:find("calling '" .. name .. "' on bad self", 1, true) then return true end
  local fname = msg:match("bad argument #%d+ to '([%w_.:]+)'")
  if fname then
    fname = fname:match("[%w_]+$")
    return fname == name or (aliases and aliases[fname]) or false
  end
  return msg:find("bad option", 1, true) ~= nil or msg:find("bad request option", 1, true) ~= nil
end

-- Calls fn(...) with a time limit; whatever it returns that can be closed (a stream, a
-- watch, a lock) is closed, so nothing it started outlives the call.
local function try(fn, ...)
  local args = table.pack(...)
  local res = table.pack(pcall(coord.timeout, 1, function() return fn(table.unpack(args, 1, args.n)) end))
  for i = 2, res.n do
    local v = res[i]
    local ok, close = pcall(function() return v.close end)
    if ok and type(close) == "function" then pcall(close, v) end
  end
  return res[1], res[2]
end

-- Calls obj:name (obj.name when module is true) with each hostile value at positions 1..3
-- and a bad option table at each position; adds the internal errors seen to bad.
local base -- the peer's URL

local function fuzz(label, obj, name, aliases, bad, module)
  local fn = obj[name]
  local function check(...)
    local ok, err
    if module then ok, err = try(fn, ...) else ok, err = try(fn, obj, ...) end
    if not ok and not own_error(err, name, aliases) then
      local args = table.pack(...)
      local shown = {}
      for i = 1, args.n do shown[i] = type(args[i]) == "string" and ("%q"):format(args[i]) or type(args[i]) end
      bad[#bad + 1] = ("%s:%s(%s): %s"):format(label, name, table.concat(shown, ", "), tostring(err))
    end
  end
  for pos = 1, 3 do
    for _, v in ipairs(hostile) do
      local args = { "k", "v", nil }
      -- coord.http takes any URL: hostile strings go into the peer's path, not its host name
      if module and pos == 1 and type(v) == "string" then v = base .. v end
      args[pos] = v
      check(args[1], args[2], args[3])
    end
    for _, o in ipairs(bad_opts) do
      local args = { module and base or "k", "v", nil }
      args[pos] = o
      check(args[1], args[2], args[3])
    end
  end
  if module then return end
  -- a dot call: the object itself is missing
  local ok, err = pcall(coord.timeout, 1, fn, "k")
  if not ok and not own_error(err, name, aliases) then
    bad[#bad + 1] = ("%s.%s(\"k\"): %s"):format(label, name, tostring(err))
  end
end

local function count_by_function(bad)
  local seen, out = {}, {}
  for _, line in ipairs(bad) do
    local fname = line:match("^([^%(]+)%(")
    if not seen[fname] then
      seen[fname] = true
      out[#out + 1] = line
    end
  end
  return out
end

describe("hostile arguments", function()
  local peer, etcd, consul
  setup(function()
    peer = helpers.start_peer()
    base = peer.url("/")
    etcd = coord.etcd.new { endpoints = { peer.url("") }, timeout = 1 }
    consul = coord.consul.new { address = peer.url(""), timeout = 1 }
  end)
  teardown(function() peer.stop() end)

  it("raise coord's own argument errors from every etcd client method", function()
    local bad = {}
    coord.run(function()
      for _, name in ipairs(methods(etcd)) do fuzz("etcd", etcd, name, nil, bad) end
    end)
    assert.are.same({}, count_by_function(bad))
  end)

  it("raise coord's own argument errors from every Consul client method", function()
    local bad = {}
    coord.run(function()
      for _, name in ipairs(methods(consul)) do fuzz("consul", consul, name, nil, bad) end
      for _, api in ipairs { "kv", "txn", "agent", "health", "catalog", "status", "event", "session" } do
        local o = consul[api]
        -- session:open forwards its options to session:create
        local aliases = api == "session" and { create = true } or nil
        for _, name in ipairs(methods(o)) do fuzz("consul." .. api, o, name, aliases, bad) end
      end
    end)
    assert.are.same({}, count_by_function(bad))
  end)

  it("raise coord's own argument errors from coord.http and coord.mirror", function()
    local bad = {}
    coord.run(function()
      fuzz("coord.http", coord.http, "request", nil, bad, true)
      fuzz("coord.http", coord.http, "get", { request = true }, bad, true)
      fuzz("coord.http", coord.http, "post", { request = true }, bad, true)
      fuzz("coord.http", coord.http, "stream", { request = true }, bad, true)
    end)
    for _, client in ipairs { etcd, consul } do
      for _, v in ipairs(hostile) do
        local ok, err = pcall(function() local m = coord.mirror(client, v) m:close() end)
        if not ok and not own_error(err, "mirror", { new = true }) then bad[#bad + 1] = "coord.mirror(client, " .. type(v) .. "): " .. tostring(err) end
      end
      for _, o in ipairs(bad_opts) do
        local ok, err = pcall(function() local m = coord.mirror(client, "p/", o) m:close() end)
        if not ok and not own_error(err, "mirror", { new = true }) then bad[#bad + 1] = "coord.mirror(client, 'p/', opts): " .. tostring(err) end
      end
    end
    -- a prefix the Consul mirror could never read raises at once, not in the mirror's task
    assert.has_error(function() coord.mirror(consul, "a/../b/") end,
      "bad argument #2 to 'mirror' (key with an empty, '.' or '..' segment: Consul's HTTP API cannot address it, use consul.txn)")
    coord.run()
    assert.are.same({}, count_by_function(bad))
  end)

  -- Every call that puts an ID or a name into its URL path, with hostile values: each either
  -- raises an argument error, or the value is one escaped path segment (no "/", "?" or "#"
  -- left to add segments, a query or a fragment). Session IDs must be UUIDs.
  it("places IDs and names in the URL path as one escaped segment", function()
    local http = require "coord.http"
    local values = { "../../kv/x", "x?dc=other", "x#frag", "a/b", "..", ".", "", "%2e%2e", "a b", "a\r\nb" }
    local calls = {
      { "/v1/agent/service/deregister/", function(v) return consul.agent:service_deregister(v) end },
      { "/v1/agent/service/", function(v) return consul.agent:service(v) end },
      { "/v1/agent/check/deregister/", function(v) return consul.agent:check_deregister(v) end },
      { "/v1/agent/check/update/", function(v) return consul.agent:update_ttl(v, nil, "passing") end },
      { "/v1/agent/check/pass/", function(v) return consul.agent:pass_ttl(v) end },
      { "/v1/agent/check/warn/", function(v) return consul.agent:warn_ttl(v) end },
      { "/v1/agent/check/fail/", function(v) return consul.agent:fail_ttl(v) end },
      { "/v1/catalog/service/", function(v) return consul.catalog:service(v) end },
      { "/v1/catalog/node/", function(v) return consul.catalog:node(v) end },
      { "/v1/health/service/", function(v) return consul.health:service(v) end },
      { "/v1/health/checks/", function(v) return consul.health:checks(v) end },
      { "/v1/health/node/", function(v) return consul.health:node(v) end },
      { "/v1/health/state/", function(v) return consul.health:state(v) end },
      { "/v1/event/fire/", function(v) return consul.event:fire(v) end },
      { "/v1/session/node/", function(v) return consul.session:node(v) end },
      { "/v1/session/renew/", function(v) return consul.session:renew(v) end, uuid = true },
      { "/v1/session/destroy/", function(v) return consul.session:destroy(v) end, uuid = true },
      { "/v1/session/info/", function(v) return consul.session:info(v) end, uuid = true },
    }
    local sent = {}
    -- (both entry points of coord.http: the clients send through _exchange)
    local request, exchange = http.request, http._exchange
    http.request = function(opts)
      sent[#sent + 1] = opts.url
      return request(opts)
    end
    http._exchange = function(opts)
      sent[#sent + 1] = opts.url
      return exchange(opts)
    end
    local bad = {}
    coord.run(function()
      for _, c in ipairs(calls) do
        local prefix, call = c[1], c[2]
        for _, v in ipairs(values) do
          sent = {}
          local ok, err = pcall(call, v)
          if ok then
            local url = sent[1] or ""
            local path, rest = url:match("^https?://[^/]+(/[^?#]*)(.*)$")
            local seg = path and path:sub(1, #prefix) == prefix and path:sub(#prefix + 1)
            if c.uuid or not seg or seg == "" or seg:find("/", 1, true) or rest:find("dc=other", 1, true) or rest:find("#", 1, true) then
              bad[#bad + 1] = ("%s with %q sent %s"):format(prefix, v, url)
            end
          elseif not tostring(err):find("^.-bad argument #1 to '") then
            bad[#bad + 1] = ("%s with %q raised %s"):format(prefix, v, tostring(err))
          end
        end
      end
      -- a well-formed session ID is sent as it is
      sent = {}
      consul.session:info("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
      assert.are.equal(base .. "v1/session/info/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", sent[1])
    end)
    http.request, http._exchange = request, exchange
    assert.are.same({}, bad)
  end)
end)
