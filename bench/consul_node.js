// bench/consul_node.js: the npm consul client of bench/consul, with the interface of consul_coord.lua.
//
//   node consul_node.js get|put ADDRESS N C     prints requests=<n> errors=<e> seconds=<wall> cpu_before=<s>
//   node consul_node.js watch ADDRESS W C       W consul.watch on kv.get, one per key; "watching" once all
//                                               have their first value; "ready" once all saw "1"; hold until stdin ends
"use strict";
const Consul = require("consul");
const { now, kvBench, watchDone, key } = require("./common");

const [mode, address, countArg, concArg] = process.argv.slice(2);
const count = Number(countArg);
const conc = Number(concArg);
if (!["get", "put", "watch"].includes(mode) || !address || !(count > 0) || !(conc > 0)) {
  console.error("usage: consul_node.js get|put|watch ADDRESS N C");
  process.exit(2);
}
const [host, port] = address.split(":");
const consul = new Consul({ host, port: Number(port) });
const value = "v".repeat(100);
const bound = Number(process.env.BENCH_WATCH_BOUND || 240) * 1000;

async function kvOp() {
  if (mode === "get") {
    const entry = await consul.kv.get("bench-key");
    if (!entry || entry.Value.length !== 100) throw new Error("bench-key missing or wrong size");
  } else {
    if ((await consul.kv.set("bench-key", value)) !== true) throw new Error("put answered false");
  }
}

function waitCount(getter, target, what) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + bound;
    const tick = () => {
      if (getter() >= target) return resolve();
      if (Date.now() > deadline) return reject(new Error(`${what}: ${getter()} of ${target} within ${bound / 1000} s`));
      setTimeout(tick, 20);
    };
    tick();
  });
}

async function watchBench() {
  const w = count;
  let firsts = 0, events = 0, errors = 0, started = 0, firstErr;
  const fail = (err) => { errors++; firstErr = firstErr || err; };
  const t0 = now();
  for (let i = 1; i <= w; i++) {
    const watch = consul.watch({ method: consul.kv.get, options: { key: key(i) } });
    started++;
    let state = 0;
    watch.on("change", (entry) => {
      if (state === 0) { state = 1; firsts++; }
      if (state === 1 && entry && entry.Value === "1") { state = 2; events++; }
    });
    watch.on("error", fail);
  }
  try {
    await waitCount(() => firsts, w, "first values");
  } catch (err) {
    fail(err);
  }
  const t1 = now();
  console.log("watching"); // the driver now writes "1" to every key, from another process
  try {
    await waitCount(() => events, w, "new values");
  } catch (err) {
    fail(err);
  }
  const t2 = now();
  watchDone(w, started, events, errors, firstErr, t0, t1, t2);
}

(mode === "watch" ? watchBench() : kvBench(count, conc, kvOp).then(() => consul.destroy())).catch((err) => {
  console.error(err);
  process.exit(1);
});
