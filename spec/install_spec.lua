-- README's "Running your own script" (the checkout half; spec/rock_spec.lua runs the rock half)
-- and "Tested versions": what the README prints is run or compared as printed.
local servers = require "servers"
local readme = require "readme"
local coord = require "coord"

local q = servers.sh_quote
-- the variables of the spec run (LUA_PATH for busted, the ASan preload) are not the user's
local CLEAN = "env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 -u LUA_INIT -u LUA_INIT_5_4 -u LD_PRELOAD "

-- the top of the checkout, as `$PWD` spells it there
local function checkout()
  local _, out = servers.sh("pwd -P")
  return (out:gsub("\n$", ""))
end

describe("running your own script from a checkout", function()
  it("works with the README's LUA_PATH and LUA_CPATH lines, from any directory", function()
    local top = checkout()
    assert(servers.sh("make --no-print-directory -C " .. q(top) .. " build"))
    local block = readme.blocks("Running your own script")[1]
    assert.matches('export LUA_PATH="%$PWD/', block)
    local lines = {}
    for line in block:gmatch("[^\n]+") do lines[#lines + 1] = line end
    assert.equal("lua5.4 your_script.lua", lines[#lines])
    -- the exports run at the top of the checkout, the script from elsewhere
    lines[#lines] = "cd / && lua5.4 " .. q(top .. "/spec/your_script.lua")
    local ok, out = servers.sh("cd " .. q(top) .. " && " .. CLEAN .. "COORD_EXPECT_FROM=" .. q(top)
      .. " bash -euo pipefail -c " .. q(table.concat(lines, "\n")))
    assert.is_true(ok, out)
    assert.matches("your_script ok: " .. coord._VERSION:gsub("%p", "%%%0") .. ", %d+ modules, coord.core from " .. top:gsub("%p", "%%%0")
      .. "/coord/core%.so\n", out)
  end)

  it("your_script.lua fails when a module comes from somewhere else", function()
    local top = checkout()
    local ok, out = servers.sh(CLEAN .. "COORD_EXPECT_FROM=/nonexistent LUA_PATH=" .. q(top .. "/lua/?.lua;;")
      .. " LUA_CPATH=" .. q(top .. "/?.so;;") .. " lua5.4 " .. q(top .. "/spec/your_script.lua"))
    assert.is_false(ok)
    assert.matches("comes from " .. top:gsub("%p", "%%%0") .. "/lua/coord/", out)
  end)
end)

describe("tested versions", function()
  -- what the suite runs on, read now
  local function first(cmd, pattern)
    -- system tools run without the sanitizer runtime `make asan` preloads (curl --version hung
    -- in setlocale under it)
    local ok, out = servers.sh("env -u LD_PRELOAD " .. cmd)
    assert(ok, cmd .. ": " .. out)
    return (assert(out:match(pattern), cmd .. " printed no version: " .. out))
  end

  local function loaded_curl()
    return (assert(coord.versions.libcurl))
  end

  -- the libcurls the suite runs on: the system's (`make test`), and the one `.ci/deps` unpacks
  -- into .deps/curl-8.14 (`make test-curl8`), whichever of the two this run loaded
  local function curls()
    local set = { [loaded_curl()] = true, [first("pkg-config --modversion libcurl", "^(%S+)")] = true }
    local h = servers.read_file(".deps/curl-8.14/usr/include/" .. first("gcc -print-multiarch", "^(%S+)")
      .. "/curl/curlver.h")
    if h then set[assert(h:match('#define LIBCURL_VERSION "([^"]+)"'))] = true end
    local list = {}
    for v in pairs(set) do list[#list + 1] = v end
    table.sort(list)
    return list
  end

  local function measured()
    local etcd = {}
    for _, bin in pairs(servers.bin.etcd) do
      etcd[#etcd + 1] = first(q(bin) .. " --version", "etcd Version: (%S+)")
    end
    table.sort(etcd)
    return {
      Lua = { first("lua5.4 -v", "^Lua (%d+%.%d+%.%d+)") },
      libcurl = curls(),
      libuv = { coord.versions.libuv },
      ["c-ares"] = { coord.versions.cares },
      etcd = etcd,
      Consul = { first(q(servers.bin.consul) .. " version", "^Consul v(%S+)") },
      LuaRocks = { first("luarocks --version", "^%S+ (%d[%d.]*)") },
    }
  end

  it("coord.versions names coord's version, Lua's and what libcurl and libuv report", function()
    local v = coord.versions
    assert.matches("^%d+%.%d+%.%d+$", coord._VERSION)
    assert.equal(coord._VERSION, v.coord)
    assert.equal(_VERSION, v.lua)
    assert.matches("^%d+%.%d+%.%d+", v.libcurl)
    assert.matches("^%d+%.%d+%.%d+", v.libuv)
    assert.is_boolean(v.http2)
    -- curl's own account of the system's libcurl, as `curl --version` prints it (the command
    -- line runs on the system's libcurl: a run on another one, make test-curl8, checks what
    -- it was asked for instead, below)
    local want = os.getenv("COORD_EXPECT_CURL")
    if want then
      assert.equal(want, v.libcurl)
    else
      local ok, out = servers.sh("env -u LD_PRELOAD curl --version")
      assert(ok, out)
      local first = out:match("^[^\n]*")
      assert.matches(" libcurl/" .. v.libcurl:gsub("%p", "%%%0") .. " ", first)
      if v.ssl then assert.truthy(first:find(" " .. v.ssl .. " ", 1, true), first) end
      assert.equal(out:match("\nFeatures:[^\n]* HTTP2") ~= nil, v.http2)
    end
    -- the rockspec builds from a checkout (scm) or names this very version
    local spec = {}
    assert(load(assert(servers.read_file("rockspec/coord-scm-1.rockspec")), "rockspec", "t", spec))()
    assert.truthy(spec.version == "scm-1" or spec.version:match("^(.-)%-%d+$") == coord._VERSION, spec.version)
  end)

  it("the README table lists exactly the versions the suite runs on", function()
    local now = measured()
    assert.equal(_VERSION, "Lua " .. now.Lua[1]:match("^%d+%.%d+"))
    local table_ = {}
    for _, row in ipairs(readme.rows("Tested versions")) do
      local list = {}
      for v in row[2]:gmatch("[^,%s]+") do list[#list + 1] = v end
      table.sort(list)
      table_[row[1]] = list
    end
    assert.same(now, table_)
  end)

  it("coord runs on the libcurl this run was asked for (COORD_EXPECT_CURL, default the system's)", function()
    local want = os.getenv("COORD_EXPECT_CURL") or first("pkg-config --modversion libcurl", "^(%S+)")
    assert.equal(want, loaded_curl())
  end)
end)

describe("dependencies", function()
  it("the rockspec declares what lua/coord/ requires: Lua alone", function()
    local spec = {}
    assert(load(assert(servers.read_file("rockspec/coord-scm-1.rockspec")), "rockspec", "t", spec))()
    assert.same({ "lua >= 5.4, < 5.5" }, spec.dependencies)
    local ok, files = servers.sh("find lua/coord -name '*.lua'")
    assert(ok, files)
    local n = 0
    for file in files:gmatch("[^\n]+") do
      local src = assert(servers.read_file(file), file)
      for name in src:gmatch("require%s*%(?%s*[\"']([^\"']+)[\"']") do
        n = n + 1
        assert(name == "coord" or name:match("^coord%."), file .. " requires " .. name .. ", which the rockspec does not declare")
      end
    end
    assert.is_true(n > 30)
  end)

  it("core.null is cjson.null without depending on lua-cjson (Debian's lua-cjson, for this test only)", function()
    local core = require "coord.core"
    local cjson = require "cjson"
    assert.equal(cjson.null, core.null)
    assert.equal(core.null, core.json_decode(cjson.encode({ cjson.null }))[1])
    assert.equal(cjson.null, cjson.decode(core.json_encode({ core.null }))[1])
  end)
end)
