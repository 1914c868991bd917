-- bench/common.lua: what the Lua bench clients share (output lines, TLS from BENCH_TLS_DIR, worker pools, watch report).
--
-- Loaded by the scripts beside it with the script's own folder put first on package.path:
--   package.path = (arg[0]:match("^(.*)[/\\]") or ".") .. "/?.lua;" .. package.path
local coord = require "coord"

local M = {}

-- client_args(usage): mode, target, count, conc of a client script from its command line
-- (MODE TARGET N C); raises with the usage text unless MODE is get, put or watch and all are there.
function M.client_args(usage)
  local mode, target, count, conc = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4])
  if not ((mode == "get" or mode == "put" or mode == "watch") and target and count and conc) then
    error(usage, 2)
  end
  return mode, target, count, conc
end

-- value: the 100-byte value the get/put benchmarks read and write at bench-key.
M.value = string.rep("v", 100)

-- watch_bound(): the seconds each watch phase may take, BENCH_WATCH_BOUND (default 240).
function M.watch_bound() return tonumber(os.getenv("BENCH_WATCH_BOUND")) or 240 end

-- say(fmt, ...): one formatted line on stdout, flushed at once (the drivers read it as it comes).
function M.say(...)
  io.stdout:write(string.format(...), "\n")
  io.stdout:flush()
end

-- tls_from_env(): the mutual-TLS options from BENCH_TLS_DIR (ca.pem, client.pem, client.key), or nil.
function M.tls_from_env()
  local dir = os.getenv("BENCH_TLS_DIR")
  if dir and dir ~= "" then
    return { ca_file = dir .. "/ca.pem", cert_file = dir .. "/client.pem", key_file = dir .. "/client.key" }
  end
end

-- key(i): the i-th key of the watch benchmarks, bw/000001 ...
function M.key(i) return ("bw/%06d"):format(i) end

-- pool(n, conc, call): call(i) for i = 1 .. n, conc at a time, in coord.run. call returns ok, err.
-- Returns done, errors, first_err.
function M.pool(n, conc, call)
  local done, errors, next_i, first_err = 0, 0, 0, nil
  local function worker()
    while next_i < n do
      next_i = next_i + 1
      local ok, err = call(next_i)
      if not ok then
        errors = errors + 1
        first_err = first_err or err
      end
      done = done + 1
    end
  end
  coord.run(function()
    local fns = {}
    for i = 1, conc do fns[i] = worker end
    coord.gather(table.unpack(fns))
  end)
  return done, errors, first_err
end

-- kv_bench(count, conc, op): BENCH_WARMUP (default 500) calls of op() left out of the figures
-- (connections), then count calls; prints
-- "requests=<n> errors=<e> seconds=<wall> cpu_before=<s> warmup=<w>" where cpu_before is the CPU
-- spent up to t0 and w the warm-up calls made (the driver adds them to the server's request count).
-- op returns ok, err.
function M.kv_bench(count, conc, op)
  local warm_n = tonumber(os.getenv("BENCH_WARMUP")) or 500
  local _, warm_errors, warm_err = M.pool(warm_n, conc, op)
  if warm_errors > 0 then io.stderr:write(("warm-up: %d errors\n"):format(warm_errors)) end
  local before = os.clock()
  local t0 = coord.now()
  local done, errors, first_err = M.pool(count, conc, op)
  local secs = coord.now() - t0
  first_err = warm_err or first_err
  if first_err then io.stderr:write("first error: ", tostring(first_err), "\n") end
  M.say("requests=%d errors=%d seconds=%.3f cpu_before=%.3f warmup=%d", done, errors, secs, before, warm_n)
end

-- wait_all(q, n, bound): takes n items from queue q within bound seconds; true, or nil on timeout.
function M.wait_all(q, n, bound)
  return coord.timeout(bound, function()
    for _ = 1, n do q:get() end
    return true
  end)
end

-- tally(): an error count with the first error: t:fail(err) counts one; t.errors, t.first_err.
function M.tally()
  local t = { errors = 0, first_err = nil }
  function t:fail(err)
    self.errors = self.errors + 1
    self.first_err = self.first_err or err
  end
  return t
end

-- watch_done(w, created, events, tally, create_s, events_s): prints the watch summary and "ready",
-- then holds (blocking the loop, so the watches stay open) until stdin ends.
function M.watch_done(w, created, events, tally, create_s, events_s)
  if tally.first_err then io.stderr:write("first error: ", tostring(tally.first_err), "\n") end
  M.say("watches=%d created=%d events=%d errors=%d create_seconds=%.3f events_seconds=%.3f",
    w, created, events, tally.errors, create_s, events_s)
  M.say("ready")
  io.stdin:read("a")
end

-- watch_main(tally, body): runs body in coord.run, then exits the process: 0 if tally counted no error, else 1.
function M.watch_main(tally, body)
  coord.run(body)
  os.exit(tally.errors == 0 and 0 or 1)
end

return M
