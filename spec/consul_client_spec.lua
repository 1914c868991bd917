-- coord.consul client options against real Consul dev agents: ACL tokens, TLS, a Unix socket,
-- and the defaults taken from the environment (in child Lua processes).
local coord = require "coord"
local consul_mod = require "coord.consul"
local servers = require "servers"
local helpers = require "helpers"

local master = "3b0f5e0a-8f0e-4d7c-9a43-master-token"

-- Runs a Lua chunk in a fresh lua5.4 with `env` (a table) added to the environment; returns
-- whether it exited 0 and its output.
local function run_lua(env, code)
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  f:write(code)
  f:close()
  local vars = {}
  for k, v in pairs(env) do vars[#vars + 1] = k .. "=" .. servers.sh_quote(v) end
  local wrapper = os.getenv("COORD_TEST_WRAPPER") or ""
  local p = assert(io.popen("env " .. table.concat(vars, " ") .. " " .. wrapper .. " lua5.4 " .. servers.sh_quote(file) .. " 2>&1"))
  local out = p:read("a")
  local ok = p:close()
  os.remove(file)
  return ok == true, out
end

-- A child that writes and reads a key with a client built from the environment alone.
local child = [[
local c = require("coord.consul").new()
local ok, err = c.kv:put("from/env", "yes")
if not ok then print("ERR " .. tostring(err)) os.exit(1) end
print("GOT " .. c.kv:get("from/env").value)
]]

describe("coord.consul client", function()
  describe("with ACLs (default deny)", function()
    local server
    setup(function() server = servers.consul { acl = master } end)
    teardown(function() server:stop() end)

    it("returns 403s as auth (unknown token) and permission (denied) errors without the token", function()
      local bad = "secret-4f1c-not-a-real-token"
      local c = consul_mod.new { address = server.address, token = bad }
      local e, err = c.kv:get("x")
      assert.is_nil(e)
      assert.are.equal("auth", err.kind)
      assert.are.equal(403, err.status)
      assert.matches("ACL not found", err.message)
      assert.is_nil(tostring(err):find(bad, 1, true))
      assert.is_nil(tostring(err.url):find(bad, 1, true))
      local anon = consul_mod.new { address = server.address }
      local ok, err2 = anon.kv:put("x", "1")
      assert.is_nil(ok)
      assert.are.equal("permission", err2.kind)
      assert.are.equal(403, err2.status)
      assert.matches("Permission denied", err2.message)
    end)

    it("sends the client's token, and a per-call token instead", function()
      local c = consul_mod.new { address = server.address, token = master }
      assert.is_true((c.kv:put("acl/k", "v")))
      assert.are.equal("v", c.kv:get("acl/k").value)
      local anon = consul_mod.new { address = server.address }
      assert.are.equal("v", anon.kv:get("acl/k", { token = master }).value)
      local _, err = c.kv:get("acl/k", { token = "" })
      assert.are.equal(403, err.status)
    end)

    it("ends a watch denied by ACLs with the error instead of retrying", function()
      local anon = consul_mod.new { address = server.address }
      local w = anon.kv:watch("acl/k")
      local n = 0
      for _ in w do n = n + 1 end
      assert.are.equal(0, n)
      assert.are.equal(403, w.error.status)
      assert.are.equal(1, w:requests())
    end)

    -- An ACL token made with the master token: its secret and accessor IDs.
    local function new_token()
      local c = consul_mod.new { address = server.address, token = master }
      local res = assert(c:_call("PUT", "/v1/acl/token",
        { body = { Description = "rotated", Policies = { { Name = "global-management" } } } }))
      return res.body.SecretID, res.body.AccessorID
    end

    it("replaces its token at run time with set_token", function()
      local c = consul_mod.new { address = server.address }
      local _, err = c.kv:put("acl/set", "v")
      assert.are.equal("permission", err.kind)
      assert.is_true(c:set_token(master))
      assert.is_true((c.kv:put("acl/set", "v")))
      assert.is_true(c:set_token(nil))
      _, err = c.kv:get("acl/set")
      assert.are.equal("permission", err.kind)
      assert.has_error(function() c:set_token(5) end, "bad argument #1 to 'set_token' (string or nil expected, got number)")
    end)

    it("reads its token file again when Consul no longer knows the token", function()
      local first, first_accessor = new_token()
      local file = os.tmpname()
      local function write(t)
        local f = assert(io.open(file, "w"))
        f:write(t, "\n")
        f:close()
      end
      write(first)
      local c = consul_mod.new { address = server.address, token_file = file }
      assert.is_true((c.kv:put("acl/rot", "1")))
      -- the token is rotated: a new one in the file, the old one deleted
      local second = new_token()
      write(second)
      local admin = consul_mod.new { address = server.address, token = master }
      assert(admin:_call("DELETE", "/v1/acl/token/" .. first_accessor))
      assert.is_true((c.kv:put("acl/rot", "2")), "the write went through with the file's new token")
      assert.are.equal("2", c.kv:get("acl/rot").value)
      assert.are.equal(second, c.token)
      -- a token that is merely denied is not a reason to read the file
      write("not-" .. second)
      local _, err = c.kv:get("acl/rot", { token = first })
      assert.are.equal("auth", err.kind)
      assert.are.equal(second, c.token)
      os.remove(file)
    end)

    it("reads the token from CONSUL_HTTP_TOKEN and CONSUL_HTTP_TOKEN_FILE", function()
      local ok, out = run_lua({ CONSUL_HTTP_ADDR = server.address, CONSUL_HTTP_TOKEN = master }, child)
      assert.is_true(ok, out)
      assert.matches("GOT yes", out)
      local file = os.tmpname()
      local f = assert(io.open(file, "w"))
      f:write(master, "\n")
      f:close()
      ok, out = run_lua({ CONSUL_HTTP_ADDR = server.address, CONSUL_HTTP_TOKEN_FILE = file }, child)
      os.remove(file)
      assert.is_true(ok, out)
      assert.matches("GOT yes", out)
      ok, out = run_lua({ CONSUL_HTTP_ADDR = server.address, CONSUL_HTTP_TOKEN = "wrong-token-123" }, child)
      assert.is_false(ok)
      assert.matches("ERR auth 403", out)
      assert.is_nil(out:find("wrong-token-123", 1, true))
    end)
  end)

  describe("over TLS", function()
    local server
    setup(function() server = servers.consul { tls = true, verify_incoming = true } end)
    teardown(function() server:stop() end)

    it("connects with a CA and a client certificate", function()
      local c = consul_mod.new { address = server.address, tls = server:client_tls() }
      assert.is_true((c.kv:put("tls/k", "v")))
      assert.are.equal("v", c.kv:get("tls/k").value)
      local hostport = server.address:gsub("^https://", "")
      local c2 = consul_mod.new { address = hostport, tls = server:client_tls() }
      assert.are.equal("v", c2.kv:get("tls/k").value)
    end)

    it("fails with a tls error when the server cannot be verified", function()
      local c = consul_mod.new { address = server.address, tls = { verify = true } }
      local _, err = c.kv:get("tls/k")
      assert.are.equal("tls", err.kind)
    end)

    it("takes CONSUL_CACERT, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY and CONSUL_HTTP_SSL_VERIFY", function()
      local t = server:client_tls()
      local ok, out = run_lua({ CONSUL_HTTP_ADDR = server.address, CONSUL_CACERT = t.ca_file,
        CONSUL_CLIENT_CERT = t.cert_file, CONSUL_CLIENT_KEY = t.key_file }, child)
      assert.is_true(ok, out)
      assert.matches("GOT yes", out)
      ok, out = run_lua({ CONSUL_HTTP_ADDR = server.address, CONSUL_HTTP_SSL_VERIFY = "false",
        CONSUL_CLIENT_CERT = t.cert_file, CONSUL_CLIENT_KEY = t.key_file }, child)
      assert.is_true(ok, out)
      ok, out = run_lua({ CONSUL_HTTP_ADDR = server.address,
        CONSUL_CLIENT_CERT = t.cert_file, CONSUL_CLIENT_KEY = t.key_file }, child)
      assert.is_false(ok)
      assert.matches("ERR tls", out)
    end)
  end)

  describe("on a Unix socket and plain TCP", function()
    local server
    setup(function() server = servers.consul { unix_socket = true } end)
    teardown(function() server:stop() end)

    it("speaks over unix:// given as address or in CONSUL_HTTP_ADDR", function()
      local c = consul_mod.new { address = "unix://" .. server.socket }
      assert.is_true((c.kv:put("sock/k", "v")))
      assert.are.equal("v", c.kv:get("sock/k").value)
      local ok, out = run_lua({ CONSUL_HTTP_ADDR = "unix://" .. server.socket }, child)
      assert.is_true(ok, out)
      assert.matches("GOT yes", out)
    end)

    it("takes CONSUL_HTTP_ADDR without a scheme, and defaults to 127.0.0.1:8500", function()
      local ok, out = run_lua({ CONSUL_HTTP_ADDR = "127.0.0.1:" .. server.port }, child)
      assert.is_true(ok, out)
      assert.matches("GOT yes", out)
      ok, out = run_lua({ CONSUL_HTTP_ADDR = "" }, [[
        local c = require("coord.consul").new()
        print(c.base)
      ]])
      assert.is_true(ok, out)
      assert.matches("http://127.0.0.1:8500", out, 1, true)
    end)

    it("never opens more connections to one agent than max_connections", function()
      local c = consul_mod.new { address = server.address, max_connections = 4 }
      local c2 = consul_mod.new { address = server.address, max_connections = 4 }
      assert.are.equal(c.limit, c2.limit, "clients of one agent share the limit")
      local _, _, meta = c.kv:get("busy")
      coord.run(function()
        local tasks = {}
        for i = 1, 40 do
          -- blocking reads of a key that does not change: each holds its connection
          tasks[i] = coord.spawn(function() return c.kv:get("busy", { index = meta.index, wait = 1 }) end)
        end
        coord.sleep(0.3)
        local _, out = servers.sh("ss -Htn state established " .. servers.sh_quote("( dport = :" .. server.port .. " )"))
        local conns = select(2, out:gsub("\n", ""))
        assert.is_true(conns >= 1 and conns <= 4, conns .. " connections")
        -- blocking reads never take the last permits: a plain call gets through meanwhile
        local t0 = coord.now()
        assert(c2.kv:put("busy2", "x"))
        assert.is_true(coord.now() - t0 < 0.5)
        for i = 1, 40 do assert(tasks[i]:join()) end
      end)
    end)
  end)

  describe("with several addresses", function()
    local server
    setup(function() server = servers.consul {} end)
    teardown(function() server:stop() end)

    it("moves to the next address when one cannot be reached, for reads and writes", function()
      local closed = "127.0.0.1:" .. servers.free_port()
      local c = consul_mod.new { address = { closed, server.address } }
      assert.is_true((c.kv:put("fo/k", "v")), "a write that never left goes to the next address")
      assert.are.equal("v", c.kv:get("fo/k").value)
      assert.are.equal(server.address, c.base)
      assert.has_error(function() consul_mod.new { address = {} } end)
    end)

    it("fails over when the agent in use goes away", function()
      local peer = helpers.start_peer { upstream = server.port }
      local c = consul_mod.new { address = { peer.url(""), server.address } }
      assert.is_true((c.kv:put("fo/a", "1")))
      assert.are.equal(peer.url(""), c.base)
      peer.stop()
      assert.are.equal("1", c.kv:get("fo/a").value, "the read moved to the next address")
      assert.are.equal(server.address, c.base)
    end)

    it("sends a write that may have been applied to no other address", function()
      local peer = helpers.start_peer { upstream = server.port }
      local c = consul_mod.new { address = { peer.url(""), server.address } }
      assert.is_true((c.kv:put("fo/warm", "1"))) -- the drop happens on a reused connection
      peer.arm("/v1/kv/fo/cas", 1)
      local ok, err = c.kv:put("fo/cas", "x", { cas = 0 })
      -- sent again to the second address, the create would have answered false
      assert.is_nil(ok)
      assert.is_true(err.maybe_applied)
      assert.are.equal(1, peer.count("/v1/kv/fo/cas"))
      assert.are.equal("x", consul_mod.new { address = server.address }.kv:get("fo/cas").value)
      peer.stop()
    end)
  end)

  -- coord.pipeline's retry policy and whole-call deadline, against the fault peer's /status
  describe("the request pipeline", function()
    local peer
    setup(function() peer = helpers.start_peer() end)
    teardown(function() peer.stop() end)

    local function requests()
      local res = assert(require("coord.http").request { url = peer.url("/stats"), expect = 200 })
      return require("coord.core").json_decode(res.body).requests
    end

    it("retries a transient answer `retries` times, and a caller's timeout caps the whole call", function()
      local c = consul_mod.new { address = peer.url("") }
      local before = requests()
      local ok, err = c:request { path = "/status", query = { code = 503, body = "busy" } }
      assert.is_nil(ok)
      assert.are.equal("unavailable", err.kind)
      assert.are.equal(3, requests() - before - 1, "one attempt and two retries")
      -- 60 retries would back off for minutes (up to 5 s each): the timeout ends it
      before = requests()
      local t0 = coord.now()
      ok, err = c:request { path = "/status", query = { code = 503, body = "busy" }, retries = 60, timeout = 0.5 }
      assert.is_nil(ok)
      assert.are.equal("unavailable", err.kind, "the last attempt's error")
      assert.is_true(coord.now() - t0 < 10, "ended by the call's timeout")
      assert.is_true(requests() - before - 1 >= 2, "retried within it")
      -- a write is not retried on a transient answer
      before = requests()
      ok, err = c:request { method = "PUT", path = "/status", query = { code = 503 }, retries = 5 }
      assert.is_nil(ok)
      assert.are.equal(503, err.status)
      assert.are.equal(1, requests() - before - 1)
    end)
  end)
end)
