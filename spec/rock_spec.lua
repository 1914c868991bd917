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
