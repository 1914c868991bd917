-- bench/etcd_perwatch.lua: the naive baseline of bench/etcd's watch part: one HTTP/1.1 connection per watch.
--
--   lua5.4 etcd_perwatch.lua watch ENDPOINT W C
--
-- Same protocol as etcd_coord.lua watch ("watching", then "watches=..." and "ready", hold until
-- stdin ends), but each watch is its own POST /v3/watch through coord.http.stream, forced to
-- HTTP/1.1 so that it holds a connection of its own (what a gateway client without a shared watch
-- stream does). It shows what the server pays for that. BENCH_TLS_DIR as in etcd_coord.lua.
local coord = require "coord"
local core = require "coord.core"
package.path = (arg[0]:match("^(.*)[/\\]") or ".") .. "/?.lua;" .. package.path
local common = require "common"

local mode, endpoint, w_count, conc = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4])
assert(mode == "watch" and endpoint and w_count and conc, "usage: etcd_perwatch.lua watch ENDPOINT W C")

local tls = common.tls_from_env()
local bound = common.watch_bound()

local created, events = 0, 0
local tally = common.tally()
local function fail(err) tally:fail(err) end

common.watch_main(tally, function()
  local res = coord.http.request { url = endpoint .. "/v3/kv/range", body = '{"key":"YncvAA=="}', tls = tls,
    expect = 200, timeout = 10 }
  local head = res and core.json_decode(res.body)
  local start = head and head.header and core.i64(head.header.revision) + 1
  if not start then fail("no revision from the range call") end

  local sem = coord.semaphore(conc)
  local ready, all_seen = coord.queue(w_count), coord.queue(1)
  local t0 = coord.now()
  for i = 1, w_count do
    coord.spawn(function()
      local permit = sem:acquire()
      local body = core.json_encode { create_request = {
        key = core.b64encode(common.key(i)), start_revision = tostring(start) } }
      local s = coord.http.stream { url = endpoint .. "/v3/watch", body = body, tls = tls, http_version = "1.1" }
      local line, err = s:read_line()
      permit:release()
      local msg = line and core.json_decode(line)
      if not (msg and msg.result and msg.result.created) then
        fail(err or ("watch not created: " .. tostring(line)))
        ready:put(false)
        return
      end
      created = created + 1
      ready:put(true)
      for l in s:lines() do
        local m = core.json_decode(l)
        if m and m.result and m.result.events then
          events = events + 1
          if events == w_count then all_seen:put(true) end
          break
        end
      end
      -- keep the stream (and its connection) open until the process exits
      s:read_line()
    end)
  end
  local ok = common.wait_all(ready, w_count, bound)
  local t1 = coord.now()
  if not ok then fail("creating the watches took longer than " .. bound .. " s") end
  common.say("watching")
  if events < w_count and not coord.timeout(bound, all_seen.get, all_seen) then
    fail(("only %d of %d watches saw their put within %d s"):format(events, w_count, bound))
  end
  local t2 = coord.now()
  common.watch_done(w_count, created, events, tally, t1 - t0, t2 - t1)
end)
