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
  header = true, parse_headers = true, write_atomic = true, fsync = true,
  srv_lookup = true, sha256 = true, pb_compile = true, pb_encode = true, pb_decode = true,
  json_picker = true, json_pick = true }

local function public_api()
  local names = {}
  functions(coord, "coord.", names)
  functions(coord.http, "coord.http.", names)
  functions(require "coord.grpc", "coord.grpc.", names)
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

-- The code the docs teach: the fenced blocks of README.md and doc/*.md, and examples/*.lua whole,
-- as { {where = "file:line", line = text}, ... }.
local function taught_code()
  local out = {}
  local function add(name, first, body)
    local n = first
    for line in (body .. "\n"):gmatch("([^\n]*)\n") do
      out[#out + 1] = { where = name .. ":" .. n, line = line }
      n = n + 1
    end
  end
  local files = { "README.md" }
  local p = io.popen("ls doc/*.md examples/*.lua 2>/dev/null")
  for name in p:lines() do files[#files + 1] = name end
  p:close()
  for _, name in ipairs(files) do
    local text = assert(read(name), name)
    if name:match("%.lua$") then
      add(name, 1, text)
    else
      local pos = 1
      while true do
        local open_, open_end = text:find("\n```[%w]*\n", pos)
        if not open_ then break end
        local close = assert(text:find("\n```", open_end, true), name .. ": unclosed code block")
        local _, lines_before = text:sub(1, open_end):gsub("\n", "")
        add(name, lines_before + 1, text:sub(open_end + 1, close))
        pos = close + 4
      end
    end
  end
  return out
end

-- The 0.2 convention (CONVENTION.md): a client call's second result is its error, the header or
-- meta comes third. A line that destructures exactly two results of an etcd or Consul call and
-- names the second like a header or meta teaches the old shape.
local META_NAMES = { h = true, hdr = true, hdrs = true, header = true, meta = true, m = true,
  md = true, idx = true, index = true }
local function old_style(line)
  local second, rhs = line:match("^%s*local%s+[%a_][%w_]*%s*,%s*([%a_][%w_]*)%s*=%s*(.*)$")
  if not second then second, rhs = line:match("^%s*[%a_][%w_]*%s*,%s*([%a_][%w_]*)%s*=%s*(.*)$") end
  if not second or not META_NAMES[second] then return false end
  local call = rhs:lower()
  return call:find("etcd[%w_%.]*:[%w_]+%s*%(") ~= nil or call:find("consul[%w_%.]*:[%w_]+%s*%(") ~= nil
    or call:find("kv:[%w_]+%s*%(") ~= nil
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

  it("the coord.core section documents exactly the public codecs and names the rest internal", function()
    local readme = assert(read("README.md"))
    local from = assert(readme:find("\n### `coord.core`", 1, true), "README has no ### `coord.core` heading")
    local to = readme:find("\n##", from + 1, true) or #readme
    local section = readme:sub(from, to)
    local documented = {}
    for name in section:gmatch("`core%.([%w_]+)%(") do documented[name] = true end
    assert.are.same(core_public, documented)
    local missing = {}
    for name in pairs(core_internal) do
      if not section:find("`" .. name .. "`", 1, true) then missing[#missing + 1] = name end
    end
    assert.are.same({}, missing)
  end)

  it("teaches the 0.2 return convention: no two-result client call with a header or meta second", function()
    -- the check itself, on a sample: it catches the old shapes and lets the new ones through
    for _, old in ipairs { 'local kv, header = etcd:get("k")', "local e, meta = consul.kv:get(k)",
      "  local _, h = etcd:get('x')", "list, meta = assert(consul.health:service('web'))",
      "local s, m = self.consul.agent:service(id)", "local v, idx = kv:get(key)" } do
      assert.is_true(old_style(old), old)
    end
    for _, new in ipairs { 'local kv, err, header = etcd:get("k")', "local e, err = consul.kv:get(k)",
      "local entry, err, meta = consul.kv:get(k)", "local status, headers = s:response()",
      "local k, m = line:match('(%w+)=(%w+)')", "local ok, err = etcd:put('k', 'v')" } do
      assert.is_false(old_style(new), new)
    end
    local found = {}
    for _, l in ipairs(taught_code()) do
      if old_style(l.line) then found[#found + 1] = l.where .. ": " .. l.line end
    end
    assert.are.same({}, found)
  end)

  it("knows every function coord.core exports as public or internal", function()
    local unknown = {}
    for k, v in pairs(core) do
      if type(v) == "function" and not core_public[k] and not core_internal[k] then unknown[#unknown + 1] = k end
    end
    assert.are.same({}, unknown)
  end)
end)
