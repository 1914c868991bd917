// bench/etcd_node.js: the npm etcd3 client of bench/etcd, with the interface of etcd_coord.lua.
//
//   node etcd_node.js get|put ENDPOINT N C     prints requests=<n> errors=<e> seconds=<wall>
//   node etcd_node.js watch ENDPOINT W C       W watches, "watching", one put each (by the driver),
//                                              "ready", hold until stdin ends
//
// BENCH_TLS_DIR: mutual TLS with ca.pem, client.pem, client.key from that folder.
"use strict";
const fs = require("fs");
const path = require("path");
const { Etcd3 } = require("etcd3");
const { now, kvBench, watchDone, key } = require("./common");

const [mode, endpoint, countArg, concArg] = process.argv.slice(2);
const count = Number(countArg);
const conc = Number(concArg);
if (!["get", "put", "watch"].includes(mode) || !endpoint || !(count > 0) || !(conc > 0)) {
  console.error("usage: etcd_node.js get|put|watch ENDPOINT N C");
  process.exit(2);
}

const opts = { hosts: endpoint };
const dir = process.env.BENCH_TLS_DIR;
if (dir) {
  opts.credentials = {
    rootCertificate: fs.readFileSync(path.join(dir, "ca.pem")),
    certChain: fs.readFileSync(path.join(dir, "client.pem")),
    privateKey: fs.readFileSync(path.join(dir, "client.key")),
  };
}
const client = new Etcd3(opts);
const value = "v".repeat(100);
const bound = Number(process.env.BENCH_WATCH_BOUND || 240) * 1000;

function withBound(promise, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${bound / 1000} s`)), bound);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

async function kvOp() {
  if (mode === "get") {
    const v = await client.get("bench-key").string();
    if (v === null || v.length !== 100) throw new Error("bench-key missing or wrong size");
  } else {
    await client.put("bench-key").value(value);
  }
}

async function watchBench() {
  const w = count;
  let created = 0, events = 0, errors = 0, firstErr;
  const fail = (err) => { errors++; firstErr = firstErr || err; };
  const watchers = [];
  let allSeen;
  const seenAll = new Promise((resolve) => { allSeen = resolve; });

  const t0 = now();
  const head = await client.get("bw/").exec();
  const start = String(BigInt(head.header.revision) + 1n);
  let next = 0;
  async function creator() {
    while (next < w) {
      const i = ++next;
      try {
        const watcher = await client.watch().key(key(i)).startRevision(start).create();
        watchers.push(watcher);
        created++;
        let seen = false;
        watcher.on("put", () => {
          if (seen) return;
          seen = true;
          if (++events === w) allSeen();
        });
        watcher.on("error", fail);
      } catch (err) {
        fail(err);
      }
    }
  }
  try {
    await withBound(Promise.all(Array.from({ length: conc }, creator)), "creating the watches");
  } catch (err) {
    fail(err);
  }
  const t1 = now();
  console.log("watching"); // the driver now writes one value to every key, from another process
  try {
    if (events < w) await withBound(seenAll, "delivering the puts");
  } catch (err) {
    fail(new Error(`only ${events} of ${w} watches saw their put: ${err.message}`));
  }
  const t2 = now();
  // Exits once stdin ends, without cancelling one by one: the server drops the watches with the connection.
  watchDone(w, created, events, errors, firstErr, t0, t1, t2);
}

(mode === "watch" ? watchBench() : kvBench(count, conc, kvOp).then(() => client.close())).catch((err) => {
  console.error(err);
  process.exit(1);
});
