-- examples/worker_pool.lua: many KV reads from many coroutines, at most 8 in flight at a
-- time thanks to coord.semaphore, whatever the number of workers.
local coord = require "coord"

local etcd = coord.etcd.new()
local N, LIMIT = 200, 8

coord.run(function()
  for i = 1, N do assert(etcd:put(("pool/item/%03d"):format(i), tostring(i * i))) end

  local sem = coord.semaphore(LIMIT)
  local in_flight, peak, sum = 0, 0, 0
  local t0 = coord.now()
  local workers = {}
  for i = 1, N do
    workers[i] = coord.spawn(function()
      local permit <close> = sem:acquire()
      in_flight = in_flight + 1
      peak = math.max(peak, in_flight)
      local kv = assert(etcd:get(("pool/item/%03d"):format(i)))
      in_flight = in_flight - 1
      sum = sum + tonumber(kv.value)
    end)
  end
  for _, w in ipairs(workers) do assert(w:join()) end
  print(("%d reads by %d workers in %.3f s, at most %d in flight (limit %d)"):format(
    N, N, coord.now() - t0, peak, LIMIT))
  print(("sum of the values: %d (expected %d)"):format(sum, N * (N + 1) * (2 * N + 1) // 6))
end)
