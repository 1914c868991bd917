-- bench/etcd_coord.lua: the coord.etcd client of bench/etcd (N gets or puts at concurrency C, or W watches).
--
--   lua5.4 etcd_coord.lua get|put ENDPOINT N C     prints requests=<n> errors=<e> seconds=<wall>
--   lua5.4 etcd_coord.lua watch ENDPOINT W C       see below (C: watches being created at a time)
--
-- With BENCH_TRANSPORT=grpc, the client uses etcd's gRPC instead of the JSON gateway.
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
package.path = (arg[0]:match("^(.*)[/\\]") or ".") .. "/?.lua;" .. package.path
local common = require "common"

local mode, endpoint, count, conc = common.client_args("usage: etcd_coord.lua get|put|watch ENDPOINT N C")

-- BENCH_TRANSPORT: the client's transport option ("json", the default, or "grpc")
local etcd = etcd_client.new { endpoints = { endpoint }, tls = common.tls_from_env(),
  transport = os.getenv("BENCH_TRANSPORT") or nil }

-- one get (ok when bench-key holds 100 bytes) or put: ok, err
local function kv_op()
  if mode == "put" then return etcd:put("bench-key", common.value) end
  local kv, err = etcd:get("bench-key")
  return kv ~= nil and #kv.value == 100, err
end

local function watch_bench()
  local w_count = count
  local bound = common.watch_bound()
  local created, events = 0, 0
  local all_seen = coord.queue(1)
  local tally = common.tally()
  local function fail(err) tally:fail(err) end
  local t0, t1, t2 = coord.now(), nil, nil

  common.watch_main(tally, function()
    -- The revision to start from: the one after the current, so puts made later are all seen.
    local _, _, header = etcd:get("bw/")
    local start = header and header.revision and header.revision + 1
    local create_sem = coord.semaphore(conc)
    local ready = coord.queue(w_count)
    for i = 1, w_count do
      coord.spawn(function()
        local permit = create_sem:acquire()
        local w, err = etcd:watch(common.key(i), { start_revision = start })
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
    local ok = common.wait_all(ready, w_count, bound)
    t1 = coord.now()
    if not ok then fail("creating the watches took longer than " .. bound .. " s") end
    common.say("watching") -- the driver now writes one value to every key, from another process

    if events < w_count then
      local seen = coord.timeout(bound, all_seen.get, all_seen)
      if not seen then fail(("only %d of %d watches saw their put within %d s"):format(events, w_count, bound)) end
    end
    t2 = coord.now()

    -- Hold the watches until the driver closes our stdin, then exit without closing them one by
    -- one: the server drops them with the connections.
    common.watch_done(w_count, created, events, tally, t1 - t0, t2 - t1)
  end)
end

if mode == "watch" then watch_bench() else common.kv_bench(count, conc, kv_op) end
