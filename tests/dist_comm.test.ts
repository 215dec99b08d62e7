/**
 * Communicators: the host transport across real rank processes (P = 2, 3, 4), its failure modes
 * in-process (timeouts, out-of-step operations, a peer that disappears), and the NCCL
 * communicator's logic against a fake NCCL (the real one runs in the GPU suite).
 */
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { TEST_BACKEND, testDevice } from "./_util.ts";
import { launch } from "../src/launch/launcher.ts";
import { COMM_FAILURE_EXIT_CODE, type CommDType, CommError, sumHost } from "../src/comm/comm.ts";
import { TcpStore } from "../src/comm/store_client.ts";
import { createHostCommunicator, type HostCommunicator } from "../src/comm/host_communicator.ts";
import { NcclCommunicator, NcclError } from "../src/comm/nccl_comm.ts";
import type { NcclSymbols } from "../ffi/nccl.ts";
import type { Device } from "../src/runtime/device.ts";
import { bf16ToF32, f32ToBf16 } from "../src/io/dtype.ts";

/** The rendezvous secret of the in-process stores. */
const secret = "dist-comm-test-secret";

const WORKER = new URL("./workers/comm_worker.ts", import.meta.url).pathname;
const workerCommand = [Deno.execPath(), "run", "-A", WORKER];

function capture() {
  const chunks: string[] = [];
  const decoder = new TextDecoder();
  const sink = (b: Uint8Array) => chunks.push(decoder.decode(b));
  return { chunks, output: { stdout: sink, stderr: sink }, text: () => chunks.join("") };
}

// On the GPU suite (DISTFLASH_TEST_BACKEND=cuda) the same checks run over NCCL, one GPU per rank.
const gpus = TEST_BACKEND === "cuda" ? testDevice().deviceCount() : 0;
for (const P of [2, 3, 4]) {
  const what = TEST_BACKEND === "cuda" ? "NCCL: GPU" : "host transport: CPU";
  Deno.test({
    name: `${what} rank processes pass every communicator check (P = ${P})`,
    ignore: TEST_BACKEND === "cuda" && P > gpus,
    fn: async () => {
      const outputDir = await Deno.makeTempDir({ prefix: "distflash-comm-" });
      try {
        const out = capture();
        const lines: string[] = [];
        const t0 = performance.now();
        const result = await launch({
          nprocPerNode: P,
          args: ["check"],
          command: workerCommand,
          outputDir,
          output: out.output,
          report: (l) => lines.push(l),
          handleSignals: false,
        });
        const logs = result.ranks.map((r) => Deno.readTextFileSync(r.logPath));
        assertEquals(result.code, 0, `launcher: ${lines.join("\n")}\n${logs.join("\n---\n")}`);
        for (const r of result.ranks) assertEquals([r.rank, r.code], [r.rank, 0]);
        for (let r = 0; r < P; r++) {
          assert(logs[r].includes(`rank ${r}/${P}: all checks passed on ${TEST_BACKEND}`), logs[r]);
        }
        assert(out.text().includes(`rank 0/${P}: all checks passed`), "rank 0's output is shown");
        assert(!out.text().includes(`rank 1/${P}`), "other ranks' output is not shown");
        console.log(`P=${P}: ${(performance.now() - t0).toFixed(0)} ms`);
      } finally {
        await Deno.remove(outputDir, { recursive: true });
      }
    },
  });
}

Deno.test("a rank whose peer exits mid-collective stops by itself, naming the peer", async () => {
  // Started directly (no launcher to stop anyone): ranks 0 and 2 wait in an all-reduce when rank 1
  // exits; they must fail with COMM_FAILURE_EXIT_CODE rather than hang.
  const P = 3;
  const port = (() => {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const p = (l.addr as Deno.NetAddr).port;
    l.close();
    return p;
  })();
  const t0 = performance.now();
  const children = Array.from({ length: P }, (_, r) =>
    new Deno.Command(workerCommand[0], {
      args: [...workerCommand.slice(1), "fail-exit", "3"],
      env: {
        RANK: String(r),
        WORLD_SIZE: String(P),
        LOCAL_RANK: String(r),
        LOCAL_WORLD_SIZE: String(P),
        MASTER_ADDR: "127.0.0.1",
        MASTER_PORT: String(port),
        DISTFLASH_JOB_SECRET: secret,
        DISTFLASH_COMM_TIMEOUT_S: "20",
      },
      stdout: "piped",
      stderr: "piped",
    }).spawn());
  const outputs = await Promise.all(children.map((c) => c.output()));
  const elapsed = performance.now() - t0;
  const err = outputs.map((o) => new TextDecoder().decode(o.stderr));
  assertEquals(outputs[1].code, 3, err[1]);
  for (const r of [0, 2]) {
    assertEquals(outputs[r].code, COMM_FAILURE_EXIT_CODE, err[r]);
    assert(/rank 1/.test(err[r]), `rank ${r} names rank 1: ${err[r]}`);
  }
  assert(elapsed < 15_000, `took ${elapsed} ms`);
});

/** P host communicators in this process (one store, one mesh). */
async function inProcess(P: number, timeoutMs = 5000): Promise<HostCommunicator[]> {
  const device = testDevice();
  const store0 = await TcpStore.open({
    host: "127.0.0.1",
    port: 0,
    rank: 0,
    size: P,
    timeoutMs,
    secret,
  });
  const port = store0.server!.port;
  const stores = [store0];
  for (let r = 1; r < P; r++) {
    stores.push(
      await TcpStore.open({ host: "127.0.0.1", port, rank: r, size: P, timeoutMs, secret }),
    );
  }
  return await Promise.all(
    stores.map((store, rank) =>
      createHostCommunicator({ store, rank, size: P, device, timeoutMs, lingerMs: 2000 })
    ),
  );
}

Deno.test("host transport: a silent peer times out with an error naming it", async () => {
  const comms = await inProcess(3, 400);
  const device = testDevice();
  const buf = device.alloc(64);
  try {
    const t0 = performance.now();
    // Rank 0 waits for rank 2, which never sends; rank 1 is not involved.
    const error = await assertRejects(
      () => comms[0].exchange([{ kind: "recv", peer: 2, ptr: buf.ptr, bytes: 64 }]),
      CommError,
    );
    assert(/rank 2/.test(error.message) && /timed out/.test(error.message), error.message);
    assertEquals(error.peer, 2);
    assert(performance.now() - t0 < 3000);
    // The failure spreads: rank 2's next operation fails at once instead of waiting.
    const other = await assertRejects(() => comms[2].barrier(), CommError);
    assert(/rank 0/.test(other.message), other.message);
  } finally {
    buf.free();
    for (const c of comms) c.abort();
  }
});

Deno.test("host transport: mismatched byte counts are reported as out of step", async () => {
  const comms = await inProcess(2);
  const device = testDevice();
  const a = device.alloc(16), b = device.alloc(16);
  try {
    const send = comms[0].exchange([{ kind: "send", peer: 1, ptr: a.ptr, bytes: 16 }]);
    const error = await assertRejects(
      () => comms[1].exchange([{ kind: "recv", peer: 0, ptr: b.ptr, bytes: 8 }]),
      CommError,
    );
    assert(/out of step/.test(error.message), error.message);
    await send.catch(() => {});
  } finally {
    a.free();
    b.free();
    for (const c of comms) c.abort();
  }
});

Deno.test("host transport: a peer that aborts fails pending work at once", async () => {
  const comms = await inProcess(3);
  const device = testDevice();
  const buf = device.alloc(4 * 1024);
  try {
    const t0 = performance.now();
    const pending = comms[0].allReduceSum(buf.ptr, 1024, "f32");
    const pending2 = comms[2].allReduceSum(buf.ptr, 1024, "f32");
    comms[1].abort();
    for (const p of [pending, pending2]) {
      const error = await assertRejects(() => p, CommError);
      assert(/rank 1/.test(error.message), error.message);
    }
    assert(performance.now() - t0 < 2000);
  } finally {
    buf.free();
    for (const c of comms) c.abort();
  }
});

Deno.test("host transport: orderly close leaves no sockets or timers behind", async () => {
  // Deno's resource and op sanitizers check this test.
  const comms = await inProcess(3);
  await Promise.all(comms.map((c) => c.barrier()));
  const t0 = performance.now();
  await Promise.all(comms.map((c) => c.close()));
  assert(performance.now() - t0 < 1000, "close does not wait for the linger timeout");
  await assertRejects(() => comms[0].barrier(), CommError);
});

Deno.test("sumHost: bf16 is summed in fp32 and rounded once; i32 wraps", () => {
  const a = f32ToBf16(new Float32Array([1, 256, -3.5]));
  const b = f32ToBf16(new Float32Array([5 / 1024, 1, 0.5]));
  const bytes = (x: Uint16Array | Int32Array) => new Uint8Array(x.buffer);
  const sum = sumHost([bytes(a), bytes(b), bytes(b)], "bf16");
  // 1 + 10/1024 rounds to 1.0078125 in bf16 (one rounding), whereas rounding after each addition
  // would give 1.015625. 256 + 2 = 258 is exact; -3.5 + 1 = -2.5.
  assertEquals([...bf16ToF32(new Uint16Array(sum.buffer))], [1.0078125, 258, -2.5]);
  const i = sumHost(
    [bytes(new Int32Array([2 ** 31 - 1, -5])), bytes(new Int32Array([1, 2]))],
    "i32",
  );
  assertEquals([...new Int32Array(i.buffer)], [-(2 ** 31), -3]);
});

// ---------------------------------------------------------------------------------------------
// NCCL communicator logic over a fake NCCL (collectives matched across in-process "ranks").

const NCCL_ELEM: Record<number, [number, CommDType | undefined]> = {
  1: [1, undefined],
  2: [4, "i32"],
  7: [4, "f32"],
  9: [2, "bf16"],
};

interface Call {
  kind: string;
  send: bigint;
  recv: bigint;
  count: number;
  dtype: number;
  root: number;
}

function fakeNccl(device: Device) {
  const log: string[] = [];
  const comms = new Map<bigint, { uid: string; rank: number; size: number }>();
  const pendingColl = new Map<string, Call[][]>();
  const p2p = new Map<string, { sends: Call[]; recvs: Call[] }>();
  const asyncErrors = new Map<bigint, number>();
  let next = 1n;
  let depth = 0;
  const read = (ptr: bigint, bytes: number) => {
    const out = new Uint8Array(bytes);
    if (bytes) device.download(out, ptr);
    return out;
  };
  const write = (ptr: bigint, data: Uint8Array) => data.length && device.upload(ptr, data);
  const run = (calls: Call[]) => {
    const { kind, count, dtype, root } = calls[0];
    const [e, dt] = NCCL_ELEM[dtype];
    const n = count * e;
    if (kind === "allreduce") {
      const sum = sumHost(calls.map((c) => read(c.send, n)), dt!);
      for (const c of calls) write(c.recv, sum);
    } else if (kind === "allgather") {
      const all = new Uint8Array(n * calls.length);
      calls.forEach((c, q) => all.set(read(c.send, n), q * n));
      for (const c of calls) write(c.recv, all);
    } else if (kind === "reducescatter") {
      calls.forEach((c, q) =>
        write(c.recv, sumHost(calls.map((o) => read(o.send + BigInt(q * n), n)), dt!))
      );
    } else if (kind === "broadcast") {
      const data = read(calls[root].send, n);
      for (const c of calls) write(c.recv, data);
    }
  };
  const collective = (comm: bigint, call: Call) => {
    const c = comms.get(comm)!;
    if (call.count === 999_999) return 4; // a call NCCL refuses
    const queue = pendingColl.get(c.uid) ?? Array.from({ length: c.size }, () => []);
    pendingColl.set(c.uid, queue);
    queue[c.rank].push(call);
    if (queue.every((q) => q.length > 0)) run(queue.map((q) => q.shift()!));
    return 0;
  };
  const pt = (comm: bigint, call: Call, peer: number) => {
    const c = comms.get(comm)!;
    const key = call.kind === "send" ? `${c.uid}:${c.rank}>${peer}` : `${c.uid}:${peer}>${c.rank}`;
    const ch = p2p.get(key) ?? { sends: [], recvs: [] };
    p2p.set(key, ch);
    (call.kind === "send" ? ch.sends : ch.recvs).push(call);
    while (ch.sends.length && ch.recvs.length) {
      const s = ch.sends.shift()!, r = ch.recvs.shift()!;
      if (s.count !== r.count) throw new Error("fake NCCL: size mismatch");
      write(r.recv, read(s.send, s.count));
    }
    return 0;
  };
  const call = (
    kind: string,
    send: bigint,
    recv: bigint,
    count: bigint,
    dtype: number,
    root = 0,
  ) => ({ kind, send, recv, count: Number(count), dtype, root });
  const symbols = {
    ncclGetVersion: () => 0,
    ncclGetErrorString: () => null,
    ncclGetLastError: () => null,
    ncclGetUniqueId: (buf: Uint8Array) => {
      crypto.getRandomValues(buf);
      log.push("getUniqueId");
      return 0;
    },
    ncclCommInitRank: (out: BigUint64Array, size: number, id: Uint8Array, rank: number) => {
      const uid = [...id.subarray(0, 16)].join(".");
      comms.set(next, { uid, rank, size });
      log.push(`init ${rank}/${size}`);
      out[0] = next++;
      return 0;
    },
    ncclCommDestroy: (comm: bigint) => (log.push(`destroy ${comm}`), 0),
    ncclCommAbort: (comm: bigint) => (log.push(`abort ${comm}`), 0),
    ncclCommGetAsyncError: (comm: bigint, out: Int32Array) => {
      out[0] = asyncErrors.get(comm) ?? 0;
      return 0;
    },
    ncclGroupStart: () => (depth++, 0),
    ncclGroupEnd: () => (depth--, 0),
    ncclSend: (p: bigint, n: bigint, dt: number, peer: number, comm: bigint) =>
      pt(comm, call("send", p, 0n, n, dt), peer),
    ncclRecv: (p: bigint, n: bigint, dt: number, peer: number, comm: bigint) =>
      pt(comm, call("recv", 0n, p, n, dt), peer),
    ncclAllReduce: (s: bigint, r: bigint, n: bigint, dt: number, _op: number, comm: bigint) =>
      collective(comm, call("allreduce", s, r, n, dt)),
    ncclReduceScatter: (s: bigint, r: bigint, n: bigint, dt: number, _op: number, comm: bigint) =>
      collective(comm, call("reducescatter", s, r, n, dt)),
    ncclAllGather: (s: bigint, r: bigint, n: bigint, dt: number, comm: bigint) =>
      collective(comm, call("allgather", s, r, n, dt)),
    ncclBroadcast: (s: bigint, r: bigint, n: bigint, dt: number, root: number, comm: bigint) =>
      collective(comm, call("broadcast", s, r, n, dt, root)),
  };
  return { symbols: symbols as unknown as NcclSymbols, log, asyncErrors, depth: () => depth };
}

Deno.test({
  name: "NCCL communicator: rendezvous, call mapping, subgroups and failure handling (fake NCCL)",
  fn: async () => {
    const P = 3;
    const device = testDevice();
    const fake = fakeNccl(device);
    const store0 = await TcpStore.open({
      host: "127.0.0.1",
      port: 0,
      rank: 0,
      size: P,
      timeoutMs: 5000,
      secret,
    });
    const stores = [store0];
    for (let r = 1; r < P; r++) {
      stores.push(
        await TcpStore.open({
          host: "127.0.0.1",
          port: store0.server!.port,
          rank: r,
          size: P,
          timeoutMs: 5000,
          secret,
        }),
      );
    }
    const comms = await Promise.all(
      stores.map((store, rank) =>
        NcclCommunicator.create({ device, store, rank, size: P, nccl: fake.symbols })
      ),
    );
    assertEquals(fake.log.filter((l) => l === "getUniqueId").length, 1);
    const bufs: { free(): void }[] = [];
    const up = (x: Float32Array) => {
      const b = device.alloc(Math.max(4, x.byteLength));
      bufs.push(b);
      device.upload(b.ptr, x);
      return b.ptr;
    };
    const down = (ptr: bigint, n: number) => [...device.download(new Float32Array(n), ptr)];
    try {
      // all-reduce in place
      const ar = comms.map((_, r) => up(new Float32Array([r, 10 * r, 1])));
      for (const [r, c] of comms.entries()) await c.allReduceSum(ar[r], 3, "f32");
      for (const p of ar) assertEquals(down(p, 3), [3, 30, 3]);
      // all-gather, reduce-scatter, broadcast
      const ag = comms.map((
        _,
        r,
      ) => [up(new Float32Array([r, r === 0 ? 0 : -r])), up(new Float32Array(2 * P))]);
      for (const [r, c] of comms.entries()) await c.allGather(ag[r][0], ag[r][1], 2, "f32");
      for (const [, recv] of ag) assertEquals(down(recv, 2 * P), [0, 0, 1, -1, 2, -2]);
      const rs = comms.map((
        _,
        r,
      ) => [up(Float32Array.from({ length: P }, (_, i) => r + i)), up(new Float32Array(1))]);
      for (const [r, c] of comms.entries()) await c.reduceScatterSum(rs[r][0], rs[r][1], 1, "f32");
      rs.forEach(([, recv], r) => assertEquals(down(recv, 1), [3 + 3 * r]));
      const bc = comms.map((_, r) => up(new Float32Array([r + 5, r + 6])));
      for (const [r, c] of comms.entries()) await c.broadcast(bc[r], 2, "f32", 2);
      for (const p of bc) assertEquals(down(p, 2), [7, 8]);
      // exchange: ring shift of 8 bytes, inside one NCCL group
      const ex = comms.map((_, r) => [up(new Float32Array([r, r])), up(new Float32Array(2))]);
      for (const [r, c] of comms.entries()) {
        await c.exchange([
          { kind: "send", peer: (r + 1) % P, ptr: ex[r][0], bytes: 8 },
          { kind: "recv", peer: (r + P - 1) % P, ptr: ex[r][1], bytes: 8 },
        ]);
      }
      ex.forEach(([, recv], r) => assertEquals(down(recv, 2), [(r + P - 1) % P, (r + P - 1) % P]));
      assertEquals(fake.depth(), 0, "every ncclGroupStart has its ncclGroupEnd");
      // NCCL's refusal becomes an NcclError naming the call.
      const error = await assertRejects(
        () => comms[0].allReduceSum(ar[0], 999_999, "f32"),
        NcclError,
      );
      assert(/ncclAllReduce failed \(ncclInvalidArgument\)/.test(error.message), error.message);
      // subgroup [0, 2]: its own unique id, ranks 0 and 1 within it
      const subs = await Promise.all([comms[0].subgroup([0, 2]), comms[2].subgroup([0, 2])]);
      assertEquals(subs.map((s) => [s.rank, s.size]), [[0, 2], [1, 2]]);
      const sb = [up(new Float32Array([1])), up(new Float32Array([2]))];
      for (const [i, s] of subs.entries()) await s.allReduceSum(sb[i], 1, "f32");
      assertEquals([down(sb[0], 1), down(sb[1], 1)], [[3], [3]]);
      await Promise.all(comms.map((c) => c.barrier()));
      await Promise.all(comms.map((c) => c.synchronize(0n)));
      // An asynchronous NCCL error: synchronize aborts and rejects.
      fake.asyncErrors.set(comms[1].handle, 6);
      const remote = await assertRejects(() => comms[1].synchronize(0n), NcclError);
      assert(/ncclRemoteError/.test(remote.message), remote.message);
      assert(fake.log.includes(`abort ${comms[1].handle}`));
      // Rank 1's store connection dropped with it: the others hear of it and refuse to go on.
      for (let i = 0; i < 50 && !stores[0].failure; i++) {
        await new Promise((r) => setTimeout(r, 20));
      }
      assertEquals(stores[0].failure?.rank, 1);
      const peer = await assertRejects(() => comms[0].synchronize(0n), CommError);
      assert(/rank 1 failed/.test(peer.message), peer.message);
      assert(fake.log.includes(`abort ${comms[0].handle}`));
      assert(
        fake.log.includes(
          `abort ${subs[0].rank === 0 ? (subs[0] as NcclCommunicator).handle : 0n}`,
        ),
      );
      await comms[2].close();
    } finally {
      for (const b of bufs) b.free();
      for (const c of comms) c.abort();
    }
  },
});

Deno.test("rendezvous: rank 0 names a MASTER_PORT that is taken (the store runs on its own thread)", async () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (taken.addr as Deno.NetAddr).port;
  try {
    const error = await assertRejects(() =>
      TcpStore.open({ host: "127.0.0.1", port, rank: 0, size: 1, timeoutMs: 2000, secret })
    );
    assert(String(error).includes(`is MASTER_PORT ${port} in use?`), String(error));
  } finally {
    taken.close();
  }
  // A free port: the threaded store serves rank 0 itself and closes cleanly.
  const store = await TcpStore.open({ host: "127.0.0.1", port: 0, rank: 0, size: 1, secret });
  await store.set("k", new TextEncoder().encode("v"));
  assertEquals(new TextDecoder().decode(await store.get("k")), "v");
  await store.close();
});
