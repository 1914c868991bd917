-- bench/consul_coord.lua: the coord.consul client of bench/consul (N gets or puts at concurrency C, or W watches).
--
--   lua5.4 consul_coord.lua get|put ADDRESS N C     prints requests=<n> errors=<e> seconds=<wall> cpu_before=<s>
--   lua5.4 consul_coord.lua watch ADDRESS W C       see below
--
-- ADDRESS is host:port. get reads the key bench-key (it must hold a 100-byte value), put writes it.
--
-- watch: the driver has written "0" to the keys bw/000001 ...; this starts one consul.kv:watch per
-- key, waits until every watch delivered its first value and prints "watching"; the driver then
-- writes "1" to every key from another process (bench/writer.lua), and this waits until every
-- watch delivered it. Prints "watches=<W> created=<w> events=<e> errors=<x> create_seconds=<s>
-- events_seconds=<s>" and a line "ready", then holds the watches until its stdin ends (the driver
-- counts the agent's connections meanwhile), and exits. Each phase is bounded by BENCH_WATCH_BOUND
-- seconds (default 240). The watches share one blocking query on the prefix bw/ through the
-- watch option share = "bw/"; BENCH_WATCH_SHARE=0 makes them independent (one query each).
local coord = require "coord"
local consul_client = require "coord.consul"

local mode, address, count, conc = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4])
assert((mode == "get" or mode == "put" or mode == "watch") and address and count and conc,
  "usage: consul_coord.lua get|put|watch ADDRESS N C")

local consul = consul_client.new { address = address }
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
        local entry
        entry, err = consul.kv:get("bench-key")
        ok = entry ~= nil and #entry.value == 100
      else
        ok, err = consul.kv:put("bench-key", value)
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
  local started, events, errors, first_err = 0, 0, 0, nil
  local first, second = coord.queue(w_count), coord.queue(w_count)
  local function fail(err)
    errors = errors + 1
    first_err = first_err or err
  end
  local function key(i) return ("bw/%06d"):format(i) end
  local function wait_for(q, what)
    local ok = coord.timeout(bound, function()
      for _ = 1, w_count do q:get() end
      return true
    end)
    if not ok then fail(what .. " took longer than " .. bound .. " s") end
  end
  local t0, t1, t2
  local wopts = os.getenv("BENCH_WATCH_SHARE") ~= "0" and { share = "bw/" } or nil

  coord.run(function()
    t0 = coord.now()
    for i = 1, w_count do
      coord.spawn(function()
        started = started + 1
        local state = 0
        for entry in consul.kv:watch(key(i), wopts) do
          local v = entry and entry.value
          if state == 0 then
            state = 1
            first:put(true)
          end
          if state == 1 and v == "1" then
            state = 2
            events = events + 1
            second:put(true)
          end
        end
      end)
    end
    wait_for(first, "the watches' first values")
    t1 = coord.now()
    say("watching")
    wait_for(second, "delivering the new values")
    t2 = coord.now()

    if first_err then io.stderr:write("first error: ", tostring(first_err), "\n") end
    say("watches=%d created=%d events=%d errors=%d create_seconds=%.3f events_seconds=%.3f",
      w_count, started, events, errors, t1 - t0, t2 - t1)
    say("ready")
    -- Hold the watches (blocking the loop) until the driver closes our stdin, then exit.
    io.stdin:read("a")
  end)
  os.exit(errors == 0 and 0 or 1)
end

if mode == "watch" then watch_bench() else kv_bench() end
