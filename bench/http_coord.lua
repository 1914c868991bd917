-- bench/http_coord.lua URL N C [POST-BODY]: N requests at concurrency C through coord.http,
-- each reply decoded as JSON (as a client would). Prints one summary line like bench/bare.
local coord = require "coord"
local decode = require("coord.core").json_decode

local url, n, c, body = arg[1], tonumber(arg[2]), tonumber(arg[3]), arg[4]
assert(url and n and c, "usage: http_coord.lua URL N C [POST-BODY]")
local request = coord.http.request
local opts = { url = url, method = body and "POST" or "GET", body = body,
               headers = body and { ["Content-Type"] = "application/json" } or nil }

local done, errors, bytes = 0, 0, 0
local next_id = 0
local function worker()
  while next_id < n do
    next_id = next_id + 1
    local res = request(opts)
    if res and res.status == 200 and decode(res.body) then
      bytes = bytes + #res.body
    else
      errors = errors + 1
    end
    done = done + 1
  end
end

local t0 = coord.now()
coord.run(function()
  local fns = {}
  for i = 1, c do fns[i] = worker end
  coord.gather(table.unpack(fns))
end)
print(("requests=%d errors=%d seconds=%.3f"):format(done, errors, coord.now() - t0))
