-- spec/file_spec.lua: coord.core's durable file helpers (the mirror's snapshot file and
-- etcd:snapshot use them).
local core = require "coord.core"

local function listing(dir)
  local p = assert(io.popen("ls -A " .. dir))
  local names = {}
  for line in p:lines() do names[#names + 1] = line end
  p:close()
  table.sort(names)
  return names
end

describe("coord.core files", function()
  local dir
  before_each(function()
    dir = assert(io.popen("mktemp -d")):read("l")
  end)
  after_each(function()
    os.execute("rm -rf " .. dir)
  end)

  it("write_atomic replaces a whole file and leaves no temporary file", function()
    local path = dir .. "/state.json"
    assert.is_true(core.write_atomic(path, "one"))
    assert.is_true(core.write_atomic(path, "two, longer"))
    local f = assert(io.open(path, "rb"))
    assert.equal("two, longer", f:read("a"))
    f:close()
    assert.same({ "state.json" }, listing(dir))
  end)

  it("write_atomic says which step failed and leaves nothing behind", function()
    local ok, err = core.write_atomic(dir .. "/missing/state.json", "x")
    assert.is_nil(ok)
    assert.matches("^create .*/missing/state.json: No such file or directory$", err)
    assert.same({}, listing(dir))
  end)

  it("fsync flushes a file or a directory, and reports a path it cannot open", function()
    local path = dir .. "/f"
    local f = assert(io.open(path, "wb"))
    f:write("data")
    f:close()
    assert.is_true(core.fsync(path))
    assert.is_true(core.fsync(dir))
    local ok, err = core.fsync(dir .. "/absent")
    assert.is_nil(ok)
    assert.matches("^fsync .*/absent: No such file or directory$", err)
    assert.has_error(function() core.fsync() end)
  end)
end)
