-- bench/http_coord.lua URL N C [POST-BODY]: N requests at concurrency C through coord.http,
-- each reply decoded as JSON (as a client would). Prints one summary line like bench/bare.
local coord = require "coord"
local decode = require("coord.core").json_decode
package.path = (arg[0]:match("^(.*)[/\\]") or ".") .. "/?.lua;" .. package.path
local common = require "common"

local url, n, c, body = arg[1], tonumber(arg[2]), tonumber(arg[3]), arg[4]
assert(url and n and c, "usage: http_coord.lua URL N C [POST-BODY]")
local request = coord.http.request
local opts = { url = url, method = body and "POST" or "GET", body = body,
               headers = body and { ["Content-Type"] = "application/json" } or nil }

-- one request; ok when it answered 200 with a body that decodes as JSON
local function call()
  local res = request(opts)
  return res and res.status == 200 and decode(res.body) and true
end

local t0 = coord.now()
local done, errors = common.pool(n, c, call)
print(("requests=%d errors=%d seconds=%.3f"):format(done, errors, coord.now() - t0))
