-- bench/etcd_coord.lua: the coord.etcd client of bench/etcd (N gets or puts at concurrency C, or W watches).
--
--   lua5.4 etcd_coord.lua get|put ENDPOINT N C     prints requests=<n> errors=<e> seconds=<wall>
--   lua5.4 etcd_coord.lua watch ENDPOINT W C       see below (C: watches being created at a time)
--
-- With BENCH_TLS_DIR set, connects with mutual TLS using ca.pem, client.pem and client.key from it.
-- get reads the key bench-key (it must hold a 100-byte value), put writes it.
--
-- watch: W watches on the keys bw/000001 ... (one key each, from the revision after the current
-- one, so no event can be missed), then a line "watching"; the driver then puts one value on
-- each key from another process (bench/writer.lua), and this waits until every watch has seen its
-- put. Prints "watches=<W> created=<c> events=<e> errors=<x> create_seconds=<s> events_seconds=<s>"
-- and a line "ready", then holds the watches open until its stdin ends (the driver measures
-- meanwhile), and exits. Creating and delivering are bounded by BENCH_WATCH_BOUND s (default 240).
local coord = require "coord"
local etcd_client = require "coord.etcd"

local mode, endpoint, count, conc = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4])
assert((mode == "get" or mode == "put" or mode == "watch") and endpoint and count and conc,
  "usage: etcd_coord.lua get|put|watch ENDPOINT N C")

local tls
local dir = os.getenv("BENCH_TLS_DIR")
if dir and dir ~= "" then
  tls = { ca_file = dir .. "/ca.pem", cert_file = dir .. "/client.pem", key_file = dir .. "/client.key" }
end
local etcd = etcd_client.new { endpoints = { endpoint }, tls = tls }
local value = string.rep("v", 100)

local function say(...)
  io.stdout:write(string.format(...), "\n")
  io.stdout:flush()
end

local function kv_bench()
  local done, errors, next_id, first_err = 0, 0, 0, nil
  local function worker()
    while next_id < count do
      next_id = next_id + 1
      local ok, err
      if mode == "get" then
        local kv
        kv, err = etcd:get("bench-key")
        ok = kv ~= nil and #kv.value == 100
      else
        ok, err = etcd:put("bench-key", value)
      end
      if not ok then
        errors = errors + 1
        first_err = first_err or err
      end
      done = done + 1
    end
  end
  local function round()
    coord.run(function()
      local fns = {}
      for i = 1, conc do fns[i] = worker end
      coord.gather(table.unpack(fns))
    end)
  end
  -- Warm-up (connections), left out of the figures: cpu_before is the CPU spent up to t0.
  local total = count
  count = tonumber(os.getenv("BENCH_WARMUP")) or 500
  round()
  if errors > 0 then io.stderr:write(("warm-up: %d errors\n"):format(errors)) end
  count, done, errors, next_id = total, 0, 0, 0
  local before = os.clock()
  local t0 = coord.now()
  round()
  if first_err then io.stderr:write("first error: ", tostring(first_err), "\n") end
  say("requests=%d errors=%d seconds=%.3f cpu_before=%.3f", done, errors, coord.now() - t0, before)
end

local function watch_bench()
  local w_count = count
  local bound = tonumber(os.getenv("BENCH_WATCH_BOUND")) or 240
  local created, events, errors, first_err = 0, 0, 0, nil
  local all_seen = coord.queue(1)
  local function fail(err)
    errors = errors + 1
    first_err = first_err or err
  end
  local t0, t1, t2 = coord.now(), nil, nil

  coord.run(function()
    -- The revision to start from: the one after the current, so puts made later are all seen.
    local _, header = etcd:get("bw/")
    local start = header and header.revision and header.revision + 1
    local create_sem = coord.semaphore(conc)
    local ready = coord.queue(w_count)
    for i = 1, w_count do
      coord.spawn(function()
        local permit = create_sem:acquire()
        local w, err = etcd:watch(("bw/%06d"):format(i), { start_revision = start })
        permit:release()
        if not w then
          fail(err)
          ready:put(false)
          return
        end
        created = created + 1
        ready:put(true)
        local seen = false
        for ev in w:events() do
          if ev.type == "put" and not seen then
            seen = true
            events = events + 1
            if events == w_count then all_seen:put(true) end
          end
        end
      end)
    end
    local ok = coord.timeout(bound, function()
      for _ = 1, w_count do ready:get() end
      return true
    end)
    t1 = coord.now()
    if not ok then fail("creating the watches took longer than " .. bound .. " s") end
    say("watching") -- the driver now writes one value to every key, from another process

    if events < w_count then
      local seen = coord.timeout(bound, all_seen.get, all_seen)
      if not seen then fail(("only %d of %d watches saw their put within %d s"):format(events, w_count, bound)) end
    end
    t2 = coord.now()

    if first_err then io.stderr:write("first error: ", tostring(first_err), "\n") end
    say("watches=%d created=%d events=%d errors=%d create_seconds=%.3f events_seconds=%.3f",
      w_count, created, events, errors, t1 - t0, t2 - t1)
    say("ready")
    -- Hold the watches (blocking the loop) until the driver closes our stdin, then exit without
    -- closing them one by one: the server drops them with the connections.
    io.stdin:read("a")
  end)
  os.exit(errors == 0 and 0 or 1)
end

if mode == "watch" then watch_bench() else kv_bench() end
