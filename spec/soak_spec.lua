-- spec/soak_spec.lua: the soak (spec/soak/soak.lua) for 120 s of load, or SOAK_SPEC_SECONDS:
-- chaos on a 3-member etcd cluster and a Consul agent, then every invariant must hold.

local coord = require "coord"
local soak = require "soak.soak"

describe("the soak", function()
  it("keeps every invariant through etcd member kills and a Consul agent restart", function()
    local seconds = tonumber(os.getenv("SOAK_SPEC_SECONDS") or "120")
    local rows = coord.run(function()
      return soak.run { seconds = seconds, log = function(line) io.stderr:write("soak: ", line, "\n") end }
    end)
    print("\n" .. soak.format(rows))
    local failed = {}
    for _, r in ipairs(rows) do
      if not r.ok then failed[#failed + 1] = ("%s = %s (bound %s)"):format(r.name, tostring(r.value), tostring(r.bound)) end
    end
    assert.same({}, failed)
  end)
end)
