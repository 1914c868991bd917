-- The rockspec, as README's "Installing with LuaRocks" prints it: installed offline into a fresh
-- tree without touching the checkout's build, then used through `luarocks path` from a fresh
-- lua5.4 (.ci/rock does the work; it is also `make rock`).
describe("rockspec", function()
  it("installs offline with the README's command and runs from the tree with the README's lines", function()
    local p = assert(io.popen("env -u LD_PRELOAD bash .ci/rock 2>&1"))
    local out = p:read("a")
    local ok = p:close()
    assert.is_true(ok, out)
    assert.matches("your_script ok: %d+%.%d+%.%d+, %d+ modules, coord.core from /[^\n]*/%.coord%-rocks/lib/lua/5%.4/coord/core%.so", out)
    assert.matches("rock ok: installed offline", out)
  end)
end)

describe("the rockspec's module list", function()
  it("installs every Lua file under lua/ (a new module not listed would be missing from a rock)", function()
    local f = assert(io.open("rockspec/coord-scm-1.rockspec"))
    local spec = f:read("a")
    f:close()
    local p = assert(io.popen("cd lua && find . -name '*.lua' | sort"))
    local missing, n = {}, 0
    for path in p:lines() do
      path = path:gsub("^%./", "")
      n = n + 1
      local mod = path:gsub("/init%.lua$", ""):gsub("%.lua$", ""):gsub("/", ".")
      if not spec:find('["' .. mod .. '"] = "lua/' .. path .. '"', 1, true) then missing[#missing + 1] = path end
    end
    p:close()
    assert.is_true(n > 30)
    assert.same({}, missing)
  end)
end)
