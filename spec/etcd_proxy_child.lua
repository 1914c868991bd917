-- A child process of spec/etcd_proxy_spec.lua: lua5.4 spec/etcd_proxy_child.lua ENDPOINT PREFIX
-- WATCHES [noshare]. Opens WATCHES identical watches of PREFIX through the grpc-proxy at ENDPOINT (transport
-- grpc; with noshare each has a server watch of its own, else they share one), prints
-- "ready N" once every one is created (N: the client's server-side watches), then reads each watch until it has the
-- put of PREFIX .. "end" (printing "marked" once every watch has seen PREFIX .. "mark"), and prints "ok N" (N put events in all) or "bad <why>" when a watch
-- saw a revision twice, out of order, or nothing for 60 s.
local coord = require "coord"

local endpoint, prefix = arg[1], arg[2]
local nwatch = assert(math.tointeger(tonumber(arg[3])))
local share = arg[4] ~= "noshare"

local function say(s)
  io.stdout:write(s, "\n")
  io.stdout:flush()
end

coord.run(function()
  local c = coord.etcd.new { endpoints = { endpoint }, transport = "grpc" }
  local ws = {}
  for i = 1, nwatch do ws[i] = c:watch(prefix, { prefix = true, share = share }) end
  for i, w in ipairs(ws) do
    local rev, err = coord.timeout(30, w.ready, w)
    if not rev then return say("bad watch " .. i .. " not ready: " .. tostring(err)) end
  end
  say("ready " .. require("coord.etcd.watch").stats(c).server_watches)
  local total, bad, marks = 0, nil, 0
  local fns = {}
  for i, w in ipairs(ws) do
    fns[i] = function()
      local last, n = 0, 0
      while true do
        local ev, err = coord.timeout(60, w.next, w)
        if not ev then bad = bad or ("watch " .. i .. " after " .. n .. " events: " .. tostring(err)) return end
        if ev.type == "put" then
          local rev = ev.kv.mod_revision
          if rev <= last then bad = bad or ("watch " .. i .. ": revision " .. rev .. " after " .. last) return end
          last, n = rev, n + 1
          total = total + 1
          if ev.kv.key == prefix .. "mark" then
            marks = marks + 1
            if marks == nwatch then say("marked") end
          end
          if ev.kv.key == prefix .. "end" then return end
        end
      end
    end
  end
  coord.gather(table.unpack(fns))
  for _, w in ipairs(ws) do w:close() end
  say(bad and ("bad " .. bad) or ("ok " .. total))
end)
