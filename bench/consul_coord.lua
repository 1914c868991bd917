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
package.path = (arg[0]:match("^(.*)[/\\]") or ".") .. "/?.lua;" .. package.path
local common = require "common"

local mode, address, count, conc = common.client_args("usage: consul_coord.lua get|put|watch ADDRESS N C")

local consul = consul_client.new { address = address }

-- one get (ok when bench-key holds 100 bytes) or put: ok, err
local function kv_op()
  if mode == "put" then return consul.kv:put("bench-key", common.value) end
  local entry, err = consul.kv:get("bench-key")
  return entry ~= nil and #entry.value == 100, err
end

local function watch_bench()
  local w_count = count
  local bound = common.watch_bound()
  local started, events = 0, 0
  local first, second = coord.queue(w_count), coord.queue(w_count)
  local tally = common.tally()
  local function fail(err) tally:fail(err) end
  local function wait_for(q, what)
    if not common.wait_all(q, w_count, bound) then fail(what .. " took longer than " .. bound .. " s") end
  end
  local t0, t1, t2
  local wopts = os.getenv("BENCH_WATCH_SHARE") ~= "0" and { share = "bw/" } or nil

  common.watch_main(tally, function()
    t0 = coord.now()
    for i = 1, w_count do
      coord.spawn(function()
        started = started + 1
        local state = 0
        for entry in consul.kv:watch(common.key(i), wopts) do
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
    common.say("watching")
    wait_for(second, "delivering the new values")
    t2 = coord.now()

    -- Hold the watches until the driver closes our stdin, then exit.
    common.watch_done(w_count, started, events, tally, t1 - t0, t2 - t1)
  end)
end

if mode == "watch" then watch_bench() else common.kv_bench(count, conc, kv_op) end
