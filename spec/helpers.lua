-- spec/helpers.lua: shared test fixtures: the fault-injecting peer and child Lua processes.

local M = {}

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.sh_quote = sh_quote

local function tmpname()
  local p = os.tmpname()
  os.remove(p)
  return p
end

-- Starts a peer from spec/peer/peer.c. It reads the port it prints through a FIFO (a
-- blocking read, no polling) and keeps the peer's stdin open: closing it stops the peer.
-- opts.upstream (a port on 127.0.0.1) starts it as a proxy in front of that server (see
-- spec/peer/README.md): then peer.arm(path[, times]) makes the next requests for path be
-- applied upstream and their connection dropped unanswered, and peer.count(path) says how
-- many requests for path arrived. opts.strip (a path such as "/etcd", with upstream) makes it
-- forward only paths under that prefix, without it.
function M.start_peer(opts)
  local bin = assert(os.getenv("COORD_PEER"), "COORD_PEER is not set: run the specs through make")
  local fifo = tmpname()
  assert(os.execute("mkfifo " .. sh_quote(fifo)))
  local args = " --max-seconds 900"
  if opts and opts.upstream then args = args .. " --upstream " .. math.tointeger(opts.upstream) end
  if opts and opts.strip then args = args .. " --strip " .. sh_quote(opts.strip) end
  local proc = assert(io.popen("exec " .. sh_quote(bin) .. args .. " > " .. sh_quote(fifo), "w"))
  local f = assert(io.open(fifo, "r"))
  local line = f:read("l")
  f:close()
  os.remove(fifo)
  local port = tonumber(line and line:match("^PORT (%d+)"))
  assert(port, "peer did not report its port: " .. tostring(line))
  local function url(path) return ("http://127.0.0.1:%d%s"):format(port, path) end
  -- control calls go on a connection of their own, so they never share one with the test's
  local function control(path)
    local http = require("coord.http")
    return assert(http.request { url = url(path), expect = 200, headers = { Connection = "close" } }).body
  end
  return {
    port = port,
    url = url,
    arm = function(path, times) control(("/_peer/arm?path=%s&times=%d"):format(path, times or 1)) end,
    count = function(path) return tonumber(control("/_peer/count?path=" .. path)) end,
    stop = function() proc:close() end,
  }
end

-- Runs a Lua chunk in a fresh lua5.4 (under the wrapper the suite runs with, e.g. valgrind)
-- and returns whether it exited 0, its exit code, and its combined output.
function M.run_lua(code)
  local file = tmpname() .. ".lua"
  local f = assert(io.open(file, "w"))
  f:write(code)
  f:close()
  local wrapper = os.getenv("COORD_TEST_WRAPPER") or ""
  local p = assert(io.popen(wrapper .. " lua5.4 " .. sh_quote(file) .. " 2>&1"))
  local out = p:read("a")
  local ok, _, code_ = p:close()
  os.remove(file)
  return ok, code_, out
end

return M
