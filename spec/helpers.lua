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
function M.start_peer()
  local bin = assert(os.getenv("COORD_PEER"), "COORD_PEER is not set: run the specs through make")
  local fifo = tmpname()
  assert(os.execute("mkfifo " .. sh_quote(fifo)))
  local proc = assert(io.popen("exec " .. sh_quote(bin) .. " --max-seconds 900 > " .. sh_quote(fifo), "w"))
  local f = assert(io.open(fifo, "r"))
  local line = f:read("l")
  f:close()
  os.remove(fifo)
  local port = tonumber(line and line:match("^PORT (%d+)"))
  assert(port, "peer did not report its port: " .. tostring(line))
  return {
    port = port,
    url = function(path) return ("http://127.0.0.1:%d%s"):format(port, path) end,
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
