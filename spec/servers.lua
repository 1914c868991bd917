-- spec/servers.lua: real etcd and Consul servers for the specs, on free loopback ports,
-- plus a throwaway TLS certificate authority. Every server is a child of this process and
-- is stopped by its :stop() (specs call it in teardown; __gc and __close do it too).

local http = require "coord.http"
local coord = require "coord"

local M = {}

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.sh_quote = sh_quote

local top = (debug.getinfo(1, "S").source:match("^@(.*)/spec/[^/]*$")) or "."
M.top = top

M.bin = {
  etcd = { ["3.4"] = "/usr/bin/etcd", ["3.5"] = top .. "/.deps/etcd-3.5/etcd" },
  etcdctl = "/usr/bin/etcdctl",
  consul = top .. "/.deps/consul-1.8/consul",
}

-- Under make asan every child inherits LD_PRELOAD=libasan: without this, LeakSanitizer
-- would append its report to the output (and exit status) of ss, etcdctl, ... (it made
-- free_port take every port for used). Child Lua processes still get ASan itself.
local CLEAN = "export ASAN_OPTIONS=detect_leaks=0; "

--- Runs a shell command; returns ok, output (stdout and stderr together).
function M.sh(cmd)
  local p = assert(io.popen(CLEAN .. cmd .. " 2>&1"))
  local out = p:read("a")
  local ok = p:close()
  return ok == true, out
end

--- A new empty directory, removed by M.rmdir.
function M.tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p " .. sh_quote(p)))
  return p
end

function M.rmdir(d)
  os.execute("rm -rf " .. sh_quote(d))
end

-- Ports handed out by this process, so two servers of one spec never get the same one.
local taken = {}

--- A TCP port that nothing listens on (below the kernel's ephemeral range, so client
--- sockets do not take it meanwhile).
function M.free_port()
  for _ = 1, 200 do
    local p = math.random(20000, 32000)
    if not taken[p] then
      local _, out = M.sh("ss -Htan " .. sh_quote("( sport = :" .. p .. " or dport = :" .. p .. " )"))
      if out == "" then
        taken[p] = true
        return p
      end
    end
  end
  error("no free port found")
end

local Proc = { __name = "servers.proc" }
Proc.__index = Proc

--- Starts `cmd` (a shell command line, exec'd so its pid is the server's) with output to
--- `log`. Returns a process with pid, stop(), kill(), alive().
function M.spawn(cmd, log)
  local p = assert(io.popen(CLEAN .. "echo $$; exec " .. cmd .. " > " .. sh_quote(log) .. " 2>&1 < /dev/null", "r"))
  local pid = assert(tonumber(p:read("l")), "spawn: no pid")
  return setmetatable({ pid = pid, p = p, log = log }, Proc)
end

--- The process's state letter from /proc (R, S, T when stopped, Z...), or nil when it is gone.
function Proc:state()
  local f = io.open("/proc/" .. self.pid .. "/stat")
  if not f then return nil end
  local st = f:read("a")
  f:close()
  return st:match("^%d+ %b() (%a)")
end

function Proc:alive()
  local state = self:state()
  return state ~= nil and state ~= "Z"
end

-- Sends `sig` and reaps the process (pclose waits for it).
function Proc:signal(sig)
  if not self.p then return end
  os.execute("kill -" .. sig .. " " .. self.pid .. " 2>/dev/null")
  self.p:close()
  self.p = nil
end

--- Sends `sig` without waiting for anything (SIGSTOP and SIGCONT pause and resume).
function Proc:send(sig)
  if self.p then os.execute("kill -" .. sig .. " " .. self.pid .. " 2>/dev/null") end
end

--- Sends SIGSTOP and waits until every thread of the process has stopped: kill() returns
--- when the signal is queued, and a thread busy on another core (a reply half written)
--- stops only when it next enters the kernel.
function Proc:pause()
  self:send("STOP")
  M.until_true("process " .. self.pid .. " stopped", function()
    local ls = io.popen("cat /proc/" .. self.pid .. "/task/*/stat 2>/dev/null")
    local out = ls:read("a")
    ls:close()
    if out == "" then return true end -- gone: until_true's caller finds out
    for state in out:gmatch("%d+ %b() (%a)") do
      if state ~= "T" and state ~= "t" then return false end
    end
    return true
  end, 10)
end

function Proc:stop() self:signal("TERM") end
function Proc:kill() self:signal("KILL") end
Proc.__gc = Proc.stop
Proc.__close = Proc.stop

function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- Waits (bounded) until check() returns true, trying every 50 ms; there is no event to
-- await for a server becoming ready, so this is the one place that polls.
function M.until_true(what, check, limit, proc)
  local deadline = coord.now() + (limit or 30)
  while true do
    if check() then return true end
    if proc and not proc:alive() then
      error(what .. ": process exited:\n" .. (M.read_file(proc.log) or ""):sub(-3000))
    end
    if coord.now() > deadline then
      error(what .. ": not ready in time" .. (proc and (":\n" .. (M.read_file(proc.log) or ""):sub(-3000)) or ""))
    end
    coord.sleep(0.05)
  end
end

---------------------------------------------------------------------------------------------
-- TLS

--- Makes a CA, a server certificate for 127.0.0.1/localhost and a client certificate in a
--- new directory. Returns {dir, ca, cert, key, client_cert, client_key}.
function M.certs()
  local d = M.tmpdir()
  local q = function(n) return sh_quote(d .. "/" .. n) end
  local ext = d .. "/ext.cnf"
  local f = assert(io.open(ext, "w"))
  f:write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
  f:close()
  local steps = {
    "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=coord-test-ca"
      .. " -keyout " .. q("ca.key") .. " -out " .. q("ca.pem"),
  }
  for _, n in ipairs { "server", "client" } do
    steps[#steps + 1] = "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=" .. n
      .. " -keyout " .. q(n .. ".key") .. " -out " .. q(n .. ".csr")
    steps[#steps + 1] = "openssl x509 -req -in " .. q(n .. ".csr") .. " -CA " .. q("ca.pem") .. " -CAkey " .. q("ca.key")
      .. " -CAcreateserial -days 2 -extfile " .. sh_quote(ext) .. " -out " .. q(n .. ".pem")
  end
  for _, cmd in ipairs(steps) do
    local ok, out = M.sh(cmd)
    assert(ok, "certs: " .. cmd .. "\n" .. out)
  end
  return {
    dir = d, ca = d .. "/ca.pem", cert = d .. "/server.pem", key = d .. "/server.key",
    client_cert = d .. "/client.pem", client_key = d .. "/client.key",
  }
end

---------------------------------------------------------------------------------------------
-- etcd

local Etcd = { __name = "servers.etcd" }
Etcd.__index = Etcd

-- The etcdctl command line for this member or cluster (ETCDCTL_API=3), without arguments.
function Etcd:ctl_cmd()
  local c = "ETCDCTL_API=3 " .. sh_quote(M.bin.etcdctl) .. " --command-timeout=10s --endpoints=" .. sh_quote(self.endpoint_list)
  if self.certs then
    c = c .. " --cacert " .. sh_quote(self.certs.ca) .. " --cert " .. sh_quote(self.certs.client_cert)
      .. " --key " .. sh_quote(self.certs.client_key)
  end
  if self.auth then c = c .. " --user " .. sh_quote("root:" .. self.auth.password) end
  return c
end

--- Runs etcdctl with `args` (a string of shell words); returns ok, output.
function Etcd:ctl(args)
  return M.sh(self:ctl_cmd() .. " " .. args)
end

--- Starts etcdctl with `args` in the background, output to `log`; returns the process.
function Etcd:ctl_spawn(args, log)
  return M.spawn("env " .. self:ctl_cmd() .. " " .. args, log)
end

-- Options the client-side TLS needs to talk to this server.
function Etcd:client_tls()
  local c = self.certs
  return c and { ca_file = c.ca, cert_file = c.client_cert, key_file = c.client_key } or nil
end

local function etcd_member(self, i)
  local m = self.members[i]
  local scheme = self.certs and "https" or "http"
  -- etcd wants unix://host:port and makes the socket file "host:port" in its working directory
  local unix = self.opts.unix and (",unix://localhost:" .. m.port) or ""
  local cmd = { self.opts.unix and ("env -C " .. sh_quote(self.dir) .. " " .. sh_quote(self.bin)) or sh_quote(self.bin),
    "--name", m.name, "--data-dir", sh_quote(m.dir), "--logger=zap",
    "--listen-client-urls", scheme .. "://127.0.0.1:" .. m.port .. unix,
    "--advertise-client-urls", scheme .. "://127.0.0.1:" .. m.port,
    "--listen-peer-urls", "http://127.0.0.1:" .. m.peer_port,
    "--initial-advertise-peer-urls", "http://127.0.0.1:" .. m.peer_port,
    "--initial-cluster", self.initial_cluster,
    "--initial-cluster-token", "coord-spec", "--initial-cluster-state", "new",
  }
  if self.certs then
    local c = self.certs
    cmd[#cmd + 1] = "--cert-file " .. sh_quote(c.cert) .. " --key-file " .. sh_quote(c.key)
      .. " --trusted-ca-file " .. sh_quote(c.ca) .. " --client-cert-auth"
  end
  if self.opts.auth_token_ttl then cmd[#cmd + 1] = "--auth-token-ttl " .. self.opts.auth_token_ttl end
  if self.opts.args then cmd[#cmd + 1] = self.opts.args end
  m.proc = M.spawn(table.concat(cmd, " "), m.dir .. ".log")
end

-- The HTTP version of the harness's own gateway calls: on a plain port HTTP/1.1, or libcurl 8
-- could send them on a gRPC client's h2c connection, which etcd's gRPC server answers 415.
-- Over TLS the default, so that they leave no HTTP/1.1 connection for the client's calls.
local function gateway(self)
  return not self.certs and "1.1" or nil
end

-- Whether the member answers /health with "true" (leader known).
function Etcd:healthy(i)
  local m = self.members[i]
  local res = http.get(m.url .. "/health", { timeout = 2, tls = self:client_tls(), http_version = gateway(self) })
  return res and res.status == 200 and res.body:find('"true"') ~= nil
end

--- Starts an etcd member (or cluster) and waits until it serves. opts: version ("3.4" or
--- "3.5", default "3.4"), members (default 1), tls (true: make certificates; client
--- certificates are required), auth = true (root user with password "rootpw", auth on),
--- auth_token_ttl (seconds), args (more etcd flags), unix = true (each member also serves
--- on a unix socket, its path in members[i].unix_socket). Returns a server with endpoint (the
--- first member's URL), endpoints (all), members, ctl(args), stop(), and for one member
--- kill(i), restart(i).
function M.etcd(opts)
  opts = opts or {}
  local version = opts.version or "3.4"
  local self = setmetatable({
    opts = opts, version = version, bin = assert(M.bin.etcd[version], "unknown etcd version " .. version),
    dir = M.tmpdir(), members = {},
  }, Etcd)
  if opts.tls then self.certs = M.certs() end
  local scheme = self.certs and "https" or "http"
  local cluster, urls = {}, {}
  for i = 1, opts.members or 1 do
    local m = { name = "m" .. i, port = M.free_port(), peer_port = M.free_port() }
    m.dir = self.dir .. "/" .. m.name
    m.url = scheme .. "://127.0.0.1:" .. m.port
    if opts.unix then m.unix_socket = self.dir .. "/localhost:" .. m.port end
    self.members[i] = m
    cluster[i] = m.name .. "=http://127.0.0.1:" .. m.peer_port
    urls[i] = m.url
  end
  self.initial_cluster = table.concat(cluster, ",")
  self.endpoints, self.endpoint, self.endpoint_list = urls, urls[1], table.concat(urls, ",")
  for i = 1, #self.members do etcd_member(self, i) end
  for i = 1, #self.members do
    M.until_true("etcd " .. self.members[i].name, function() return self:healthy(i) end, 60, self.members[i].proc)
  end
  if opts.auth then
    local pw = "rootpw"
    local ok, out = self:ctl("user add root --new-user-password=" .. pw)
    assert(ok, out)
    ok, out = self:ctl("auth enable")
    assert(ok, out)
    self.auth = { user = "root", password = pw }
  end
  return self
end

--- Kills member i at once (SIGKILL).
function Etcd:kill(i)
  self.members[i].proc:kill()
end

--- Starts member i again with its data and waits until it is healthy.
function Etcd:restart(i)
  local m = self.members[i]
  if m.proc then m.proc:stop() end
  etcd_member(self, i)
  M.until_true("etcd " .. m.name, function() return self:healthy(i) end, 60, m.proc)
end

function Etcd:stop()
  for _, m in ipairs(self.members) do
    if m.proc then m.proc:stop() end
  end
  if self.dir then M.rmdir(self.dir) end
  if self.certs then M.rmdir(self.certs.dir) end
  self.dir, self.certs = nil, nil
end
Etcd.__gc = Etcd.stop
Etcd.__close = Etcd.stop

--- Starts one more etcd member that joins the running cluster with --initial-cluster-state
--- existing, at the peer URL http://127.0.0.1:<peer_port> that the spec has added (e.g. with
--- etcd:member_add) first. Returns the member {name, url, port, peer_port, peer_url, dir,
--- proc}, not in self.members: the spec stops its proc. Waits for nothing (a learner may not
--- answer /health until it has caught up).
function Etcd:join(peer_port)
  local m = { name = "j" .. peer_port, port = M.free_port(), peer_port = peer_port }
  m.dir, m.url = self.dir .. "/" .. m.name, "http://127.0.0.1:" .. m.port
  m.peer_url = "http://127.0.0.1:" .. peer_port
  local cmd = { sh_quote(self.bin), "--name", m.name, "--data-dir", sh_quote(m.dir), "--logger=zap",
    "--listen-client-urls", m.url, "--advertise-client-urls", m.url,
    "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
    "--initial-cluster", sh_quote(self.initial_cluster .. "," .. m.name .. "=" .. m.peer_url),
    "--initial-cluster-token", "coord-spec", "--initial-cluster-state", "existing" }
  m.proc = M.spawn(table.concat(cmd, " "), m.dir .. ".log")
  return m
end

---------------------------------------------------------------------------------------------
-- Consul

local Consul = { __name = "servers.consul" }
Consul.__index = Consul

local function consul_start(self)
  local o = self.opts
  local hcl = {}
  if o.acl then
    hcl[#hcl + 1] = ('acl { enabled = true, default_policy = "deny", enable_token_persistence = true, tokens { master = "%s" } }')
      :format(o.acl)
  end
  if self.certs then
    local c = self.certs
    hcl[#hcl + 1] = ('ca_file = "%s"\ncert_file = "%s"\nkey_file = "%s"\nverify_incoming = %s')
      :format(c.ca, c.cert, c.key, o.verify_incoming and "true" or "false")
  end
  -- no writes of its own: the agent's periodic coordinate update takes a Raft index, which
  -- write_at_fixed_indexes cannot have happen between its writes
  if o.fixed_indexes then hcl[#hcl + 1] = "disable_coordinates = true" end
  if self.socket then
    hcl[#hcl + 1] = ('addresses { http = "127.0.0.1 unix://%s" }'):format(self.socket)
  end
  local f = assert(io.open(self.dir .. "/extra.hcl", "w"))
  f:write(table.concat(hcl, "\n"), "\n")
  f:close()
  local http_port = self.certs and -1 or self.port
  local cmd = table.concat({ sh_quote(M.bin.consul), "agent -dev -bind 127.0.0.1 -client 127.0.0.1",
    "-node coord-test", "-data-dir", sh_quote(self.dir .. "/data"),
    "-http-port", http_port, "-https-port", self.certs and self.port or -1,
    "-dns-port -1 -grpc-port -1",
    "-serf-lan-port", self.serf_lan, "-serf-wan-port", self.serf_wan, "-server-port", self.server_port,
    "-config-file", sh_quote(self.dir .. "/extra.hcl"), o.args or "" }, " ")
  self.proc = M.spawn(cmd, self.dir .. "/consul.log")
  M.until_true("consul", function()
    local res = http.get(self.address .. "/v1/status/leader",
      { timeout = 2, tls = self:client_tls() })
    return res and res.status == 200 and res.body:find('"127.0.0.1:', 1, true) ~= nil
  end, 60, self.proc)
  if o.acl then
    -- the dev agent elects itself at once but may still be setting up ACLs
    M.until_true("consul acl", function()
      local res = http.get(self.address .. "/v1/acl/token/self",
        { timeout = 2, headers = { ["X-Consul-Token"] = o.acl }, tls = self:client_tls() })
      return res and res.status == 200
    end, 60, self.proc)
  end
end

function Consul:client_tls()
  local c = self.certs
  return c and { ca_file = c.ca, cert_file = c.client_cert, key_file = c.client_key } or nil
end

--- Starts a Consul dev agent and waits until it has a leader. opts: acl (the master token:
--- ACLs on, default deny), tls = true (HTTPS only, with certificates from M.certs),
--- verify_incoming (require client certificates), unix_socket = true (HTTP also on a Unix
--- socket, server.socket), args (more agent flags). Returns a server with address
--- ("http://127.0.0.1:P" or https), port, socket, consul(args), restart(), stop().
function M.consul(opts)
  opts = opts or {}
  local self = setmetatable({ opts = opts, dir = M.tmpdir(), port = M.free_port(), serf_lan = M.free_port(),
    serf_wan = M.free_port(), server_port = M.free_port() }, Consul)
  if opts.tls then self.certs = M.certs() end
  if opts.unix_socket then self.socket = self.dir .. "/http.sock" end
  self.address = (self.certs and "https" or "http") .. "://127.0.0.1:" .. self.port
  consul_start(self)
  return self
end

--- Waits until the agent has registered its own node in the catalog: until then, creating
--- a session fails with "500 Missing node registration".
function Consul:wait_node()
  local opts = { timeout = 2, headers = self.opts.acl and { ["X-Consul-Token"] = self.opts.acl } or nil,
    tls = self:client_tls() }
  -- the leader registers the node when it joins; the agent's own sync of it (which adds the
  -- tagged addresses) is a second write, a little later
  M.until_true("consul node registration", function()
    local res = http.get(self.address .. "/v1/catalog/node/coord-test", opts)
    local j = res and res.status == 200 and require("coord.core").json_decode(res.body)
    local node = type(j) == "table" and type(j.Node) == "table" and j.Node
    return node and type(node.TaggedAddresses) == "table" and node.TaggedAddresses.lan ~= nil or false
  end, 60, self.proc)
  -- sessions need the node's serfHealth check too ("Missing check 'serfHealth' registration")
  M.until_true("consul serfHealth check passing", function()
    local res = http.get(self.address .. "/v1/health/node/coord-test", opts)
    local checks = res and res.status == 200 and require("coord.core").json_decode(res.body)
    if type(checks) ~= "table" then return false end
    for _, c in ipairs(checks) do
      if c.CheckID == "serfHealth" and c.Status == "passing" then return true end
    end
    return false
  end, 60, self.proc)
end

--- Writes a filler key (`fill/index`, new values through `client`, a coord.consul client)
--- until the agent's index is `target` - 1, so that the next write gets index `target` on a
--- settled agent (after wait_node). Returns the index reached; errors when it is already past.
function Consul:fill_index(client, target)
  for i = 1, target do
    assert(client.kv:put("fill/index", tostring(i)))
    local e = assert(client.kv:get("fill/index"))
    if e.modify_index == target - 1 then return e.modify_index end
    if e.modify_index >= target then error(("fill_index: index %d already past %d"):format(e.modify_index, target - 1)) end
  end
  error("fill_index: target not reached")
end

--- On a settled agent started with fixed_indexes = true, writes `tag .. i` to each of keys
--- in one transaction after filling the index to 99, so that the same call on a fresh agent
--- gives the keys the same ModifyIndex (100: what an agent restarted with its data lost does
--- to a watcher). Returns the indexes.
function Consul:write_at_fixed_indexes(client, keys, tag)
  assert(self.opts.fixed_indexes, "write_at_fixed_indexes needs servers.consul{fixed_indexes = true}")
  self:wait_node()
  self:fill_index(client, 100)
  local ops = {}
  for i, k in ipairs(keys) do ops[i] = { verb = "set", key = k, value = tag .. i } end
  local r = assert(client.txn:run(ops))
  assert(r.applied, "the transaction was rolled back")
  local idx = {}
  for i, k in ipairs(keys) do
    idx[i] = assert(client.kv:get(k)).modify_index
    assert(idx[i] == 100, ("a write of the agent's own took index 100 (%s is at %d)"):format(k, idx[i]))
  end
  return idx
end

--- The consul CLI against this agent (CONSUL_HTTP_ADDR and the master token set).
function Consul:cli_cmd()
  local env = "CONSUL_HTTP_ADDR=" .. sh_quote(self.address)
  if self.opts.acl then env = env .. " CONSUL_HTTP_TOKEN=" .. sh_quote(self.opts.acl) end
  if self.certs then
    env = env .. " CONSUL_CACERT=" .. sh_quote(self.certs.ca) .. " CONSUL_CLIENT_CERT="
      .. sh_quote(self.certs.client_cert) .. " CONSUL_CLIENT_KEY=" .. sh_quote(self.certs.client_key)
  end
  return env .. " " .. sh_quote(M.bin.consul)
end

--- Runs the consul CLI with `args`; returns ok, output.
function Consul:consul(args)
  return M.sh(self:cli_cmd() .. " " .. args)
end

--- Stops the agent and starts a fresh one on the same port (a dev agent keeps no data, so
--- its indexes start over).
function Consul:restart()
  self.proc:stop()
  M.rmdir(self.dir .. "/data")
  consul_start(self)
end

function Consul:stop()
  if self.proc then self.proc:stop() end
  if self.dir then M.rmdir(self.dir) end
  if self.certs then M.rmdir(self.certs.dir) end
  self.dir, self.certs = nil, nil
end
Consul.__gc = Consul.stop
Consul.__close = Consul.stop

---------------------------------------------------------------------------------------------
-- Chaos helpers (spec/soak/soak.lua)

--- The index of the member that is the cluster's leader (it says so in its status), or nil.
function Etcd:leader()
  for i, m in ipairs(self.members) do
    if m.proc and m.proc:alive() then
      local res = http.post(m.url .. "/v3/maintenance/status", "{}",
        { timeout = 2, tls = self:client_tls(), http_version = gateway(self) })
      local j = res and res.status == 200 and require("coord.core").json_decode(res.body)
      if type(j) == "table" and type(j.header) == "table" and j.leader and j.leader == j.header.member_id then
        return i
      end
    end
  end
  return nil
end

--- The index of the member whose client URL is `url`, or nil.
function Etcd:member_at(url)
  for i, m in ipairs(self.members) do
    if m.url == url then return i end
  end
  return nil
end

--- Stops the agent and drops its data (the first half of restart(), for a longer outage).
function Consul:down()
  self.proc:stop()
  M.rmdir(self.dir .. "/data")
end

--- Starts a fresh agent after down() and waits until it has a leader and its node is
--- registered (sessions can be created).
function Consul:up()
  consul_start(self)
  self:wait_node()
end

---------------------------------------------------------------------------------------------
-- etcd grpc-proxy (spec/etcd_proxy_spec.lua)

--- The value of the metric `name` on etcd member i's /metrics (default 1), summed over its
--- label sets (only those holding the text `labels`, when given, such as
--- 'grpc_method="LeaseKeepAlive"'); nil when the member does not report it (or does not answer).
function Etcd:metric(name, i, labels)
  local res = http.get(self.members[i or 1].url .. "/metrics", { timeout = 5, tls = self:client_tls(), http_version = "1.1" })
  if not (res and res.status == 200) then return nil end
  local sum
  for line in res.body:gmatch("[^\n]+") do
    local n, set, v = line:match("^([%w_:]+)(%b{}) (%S+)$")
    if not n then n, v = line:match("^([%w_:]+) (%S+)$") end
    if n == name and (not labels or (set and set:find(labels, 1, true))) then
      sum = (sum or 0) + assert(tonumber(v), line)
    end
  end
  return sum and (math.tointeger(sum) or sum)
end

local Proxy = { __name = "servers.grpc_proxy" }
Proxy.__index = Proxy

-- A client certificate for the proxy's own connections to etcd, from the server's CA, with no
-- Common Name: the proxy refuses one with a CN ("cert has non empty Common Name"), which etcd
-- would take for a user name.
local function proxy_cert(c)
  local q = function(n) return sh_quote(c.dir .. "/" .. n) end
  for _, cmd in ipairs {
    "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /O=coord-proxy"
      .. " -keyout " .. q("proxy.key") .. " -out " .. q("proxy.csr"),
    "openssl x509 -req -in " .. q("proxy.csr") .. " -CA " .. q("ca.pem") .. " -CAkey " .. q("ca.key")
      .. " -CAcreateserial -days 2 -extfile " .. q("ext.cnf") .. " -out " .. q("proxy.pem"),
  } do
    local ok, out = M.sh(cmd)
    assert(ok, "grpc_proxy certs: " .. cmd .. "\n" .. out)
  end
  return c.dir .. "/proxy.pem", c.dir .. "/proxy.key"
end

local function proxy_start(self)
  local e, c = self.etcd, self.etcd.certs
  local cmd = { sh_quote(self.bin), "grpc-proxy start", "--endpoints", sh_quote(e.endpoint_list),
    "--listen-addr", "127.0.0.1:" .. self.port, "--data-dir", sh_quote(self.dir),
    -- what MemberList through the proxy answers (the default is 127.0.0.1:23790)
    "--advertise-client-url", sh_quote(self.endpoint) }
  if c then
    if not self.cert then self.cert, self.key = proxy_cert(c) end
    cmd[#cmd + 1] = "--cacert " .. sh_quote(c.ca) .. " --cert " .. sh_quote(self.cert) .. " --key " .. sh_quote(self.key)
      .. " --cert-file " .. sh_quote(c.cert) .. " --key-file " .. sh_quote(c.key) .. " --trusted-ca-file " .. sh_quote(c.ca)
  end
  if self.opts.args then cmd[#cmd + 1] = self.opts.args end
  self.proc = M.spawn(table.concat(cmd, " "), self.dir .. ".log")
  M.until_true("grpc-proxy", function() return self:healthy() end, 60, self.proc)
end

--- Starts `etcd grpc-proxy start` (the subcommand of the etcd binary of opts.etcd's version)
--- in front of the etcd server opts.etcd (from M.etcd; with tls, the proxy serves the server's
--- certificate and reaches etcd with a client certificate of its own), on a free 127.0.0.1
--- port, its data in the server's directory, and waits until it is healthy(). opts.args: more
--- proxy flags. Returns a proxy with endpoint (its URL), port, proc, healthy(), stop(),
--- start(), restart().
function M.grpc_proxy(opts)
  local e = assert(opts and opts.etcd, "grpc_proxy needs opts.etcd")
  local self = setmetatable({ opts = opts, etcd = e, bin = e.bin, port = M.free_port() }, Proxy)
  self.endpoint = (e.certs and "https" or "http") .. "://127.0.0.1:" .. self.port
  self.dir = e.dir .. "/proxy-" .. self.port
  proxy_start(self)
  return self
end

--- Whether the proxy answers /health with "true" (it reaches etcd). Its /health reads a key
--- from etcd without credentials, which etcd with auth on refuses ("user name is empty"): in
--- front of such an etcd, whether it answers /metrics.
function Proxy:healthy()
  local tls = self.etcd:client_tls()
  if self.etcd.auth then
    local res = http.get(self.endpoint .. "/metrics", { timeout = 2, tls = tls, http_version = "1.1" })
    return res and res.status == 200 or false
  end
  local res = http.get(self.endpoint .. "/health", { timeout = 2, tls = tls, http_version = "1.1" })
  return res and res.status == 200 and res.body:find('"true"') ~= nil or false
end

--- Stops the proxy (SIGTERM, reaped); start() brings it back on the same port.
function Proxy:stop()
  if self.proc then self.proc:stop() end
  self.proc = nil
end
Proxy.__gc = Proxy.stop
Proxy.__close = Proxy.stop

function Proxy:start()
  assert(not self.proc, "grpc-proxy already running")
  proxy_start(self)
end

function Proxy:restart()
  self:stop()
  self:start()
end

---------------------------------------------------------------------------------------------
-- DNS

--- A dnsmasq on a free 127.0.0.1 port answering SRV records: srv is a list of dnsmasq
--- --srv-host values ("_svc._tcp.domain,target,port[,priority[,weight]]"); names under .test
--- that it does not know get NXDOMAIN. opts.port reuses a port (a restart with other records).
--- Returns {port, server = "127.0.0.1:PORT", proc}; stop() stops it.
function M.dnsmasq(srv, opts)
  local port = opts and opts.port or M.free_port()
  local dir = M.tmpdir()
  local args = { "dnsmasq", "--no-daemon", "--port=" .. port, "--listen-address=127.0.0.1", "--bind-interfaces",
    "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--user=root", "--pid-file=" .. dir .. "/pid",
    "--local=/test/", "--srv-host=_probe._tcp.probe.test,localhost,1" }
  for _, r in ipairs(srv) do args[#args + 1] = "--srv-host=" .. r end
  for i, a in ipairs(args) do args[i] = sh_quote(a) end
  table.insert(args, 1, "env -u LD_PRELOAD") -- under make asan, libasan makes dnsmasq hang at start
  local self = { port = port, server = "127.0.0.1:" .. port, dir = dir }
  self.proc = M.spawn(table.concat(args, " "), dir .. "/log")
  local dns = require "coord.dns"
  M.until_true("dnsmasq", function()
    return dns.srv("_probe._tcp.probe.test", { dns_server = self.server, timeout = 0.5 }) ~= nil
  end, 30, self.proc)
  function self.stop()
    self.proc:send("CONT")
    self.proc:stop()
    M.rmdir(dir)
  end
  return self
end

return M
