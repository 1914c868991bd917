-- spec/doc_spec.lua: every public function has an entry in README.md or a doc/ page, so the
-- reference cannot fall behind the code. An entry is the call form in backticks, e.g.
-- `coord.sleep(` or `s:read_line(`, or a heading that starts with it: "### etcd:get(".

local coord = require "coord"
local core = require "coord.core"

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function docs()
  local parts = { assert(read("README.md"), "README.md missing") }
  local p = io.popen("ls doc/*.md 2>/dev/null")
  for name in p:lines() do parts[#parts + 1] = read(name) end
  p:close()
  return table.concat(parts, "\n")
end

-- The public functions of `t` (not starting with "_"), named as `prefix .. name`.
local function functions(t, prefix, into)
  for k, v in pairs(t) do
    if type(k) == "string" and type(v) == "function" and k:sub(1, 1) ~= "_" and not k:match("^__") then
      into[#into + 1] = prefix .. k
    end
  end
  return into
end

-- coord.core holds the engine's internals next to the codecs; only these are public.
local core_public = { json_decode = true, json_encode = true, b64encode = true, b64decode = true,
  u64 = true, u64tostring = true, i64 = true }
local core_internal = { request = true, poll = true, fd = true, inflight = true, now = true,
  header = true, parse_headers = true, write_atomic = true,
  srv_lookup = true, sha256 = true, pb_compile = true, pb_encode = true, pb_decode = true }

local function public_api()
  local names = {}
  functions(coord, "coord.", names)
  functions(coord.http, "coord.http.", names)
  for k in pairs(core_public) do names[#names + 1] = "core." .. k end
  local s = coord.http.stream { url = "http://127.0.0.1:1/" }
  functions(getmetatable(s).__index, "s:", names)
  s:close()
  local sem = coord.semaphore(1)
  functions(getmetatable(sem).__index, "sem:", names)
  functions(getmetatable(sem:acquire()).__index, "permit:", names)
  functions(getmetatable(coord.queue()).__index, "q:", names)
  local t = coord.spawn(function() end)
  functions(getmetatable(t).__index, "task:", names)

  -- the clients and the objects they return (nothing listens on port 1: no request succeeds)
  local etcd = coord.etcd.new { endpoints = { "http://127.0.0.1:1" } }
  functions(coord.etcd, "coord.etcd.", names)
  functions(getmetatable(etcd).__index, "etcd:", names)
  local w = etcd:watch("x")
  functions(getmetatable(w).__index, "w:", names)
  w:close()
  local consul = coord.consul.new { address = "127.0.0.1:1" }
  functions(coord.consul, "consul.", names)
  functions(require("coord.consul").Client, "consul:", names)
  for _, api in ipairs { "kv", "txn", "agent", "health", "catalog", "status", "event", "session",
    "acl", "query", "coordinate", "operator" } do
    local o = consul[api]
    functions(getmetatable(o) and type(getmetatable(o).__index) == "table" and getmetatable(o).__index or o,
      "consul." .. api .. ":", names)
  end
  coord.spawn(function()
    etcd:atomically(function(tx) functions(getmetatable(tx).__index, "tx:", names) end)
  end)
  local m = coord.mirror(etcd, "x")
  functions(getmetatable(m).__index, "m:", names)
  m:close()
  coord.run()
  table.sort(names)
  return names
end

describe("the reference", function()
  it("has an entry for every public function", function()
    local text = docs()
    local missing = {}
    for _, name in ipairs(public_api()) do
      if not (text:find("`" .. name .. "(", 1, true) or text:find("\n### " .. name .. "(", 1, true)) then
        missing[#missing + 1] = name
      end
    end
    assert.are.same({}, missing)
  end)

  it("knows every function coord.core exports as public or internal", function()
    local unknown = {}
    for k, v in pairs(core) do
      if type(v) == "function" and not core_public[k] and not core_internal[k] then unknown[#unknown + 1] = k end
    end
    assert.are.same({}, unknown)
  end)
end)
