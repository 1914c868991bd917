-- spec/soak/main.lua: `make soak`: runs the soak for SOAK_SECONDS (default 600) seconds of
-- load, prints the invariants as a table and exits non-zero when one fails.

local coord = require "coord"
local soak = require "soak.soak"

local seconds = tonumber(os.getenv("SOAK_SECONDS") or "600")
assert(seconds and seconds > 0, "SOAK_SECONDS must be a positive number")
local rows, ok = coord.run(function()
  return soak.run { seconds = seconds, log = function(line) io.stderr:write("soak: ", line, "\n") end }
end)
print(soak.format(rows))
print(ok and "soak: every invariant holds" or "soak: FAILED")
os.exit(ok and 0 or 1)
