// bench/common.js: what the node bench clients share (the timed get/put loop with its warm-up, the watch report).
"use strict";

const now = () => Number(process.hrtime.bigint()) / 1e9;

// kvBench(count, conc, op): BENCH_WARMUP (default 500) calls of op() left out of the figures
// (connections, JIT), then count calls, conc at a time; prints
// "requests=<n> errors=<e> seconds=<wall> cpu_before=<s> warmup=<w>" where cpu_before is the CPU spent
// up to t0 and w the warm-up calls made (the driver adds them to the server's request count).
// op is async and throws on failure.
async function kvBench(count, conc, op) {
  let done = 0, errors = 0, next = 0, firstErr;
  let limit = Number(process.env.BENCH_WARMUP || 500);
  const warmup = limit;
  async function worker() {
    while (next < limit) {
      next++;
      try {
        await op();
      } catch (err) {
        errors++;
        firstErr = firstErr || err;
      }
      done++;
    }
  }
  await Promise.all(Array.from({ length: conc }, worker));
  if (errors) console.error(`warm-up: ${errors} errors`);
  limit = count; done = 0; errors = 0; next = 0;
  const u = process.cpuUsage();
  const before = (u.user + u.system) / 1e6;
  const t0 = now();
  await Promise.all(Array.from({ length: conc }, worker));
  const secs = now() - t0;
  if (firstErr) console.error("first error:", firstErr.message);
  console.log(`requests=${done} errors=${errors} seconds=${secs.toFixed(3)} cpu_before=${before.toFixed(3)} warmup=${warmup}`);
}

// watchDone(w, created, events, errors, firstErr, t0, t1, t2): prints the watch summary and "ready",
// then holds the watches until stdin ends and exits (1 if there were errors).
function watchDone(w, created, events, errors, firstErr, t0, t1, t2) {
  if (firstErr) console.error("first error:", firstErr.message || firstErr);
  console.log(`watches=${w} created=${created} events=${events} errors=${errors} ` +
    `create_seconds=${(t1 - t0).toFixed(3)} events_seconds=${(t2 - t1).toFixed(3)}`);
  console.log("ready");
  process.stdin.resume();
  process.stdin.on("end", () => process.exit(errors === 0 ? 0 : 1));
}

// key(i): the i-th key of the watch benchmarks, bw/000001 ...
const key = (i) => `bw/${String(i).padStart(6, "0")}`;

module.exports = { now, kvBench, watchDone, key };
