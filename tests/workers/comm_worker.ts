/**
 * A rank process for the distributed tests, started by the launcher (or by hand with RANK,
 * WORLD_SIZE, MASTER_ADDR, MASTER_PORT set). The first argument picks what it does:
 *
 * - `check`: every communicator operation on the CPU backend, checked against values computed
 *   here; exits 1 on a mismatch.
 * - `fail-exit <code>`: rank 1 exits with <code> while the others wait in an all-reduce (they
 *   must notice and exit with COMM_FAILURE_EXIT_CODE).
 * - `fail-kill`: the same, but rank 1 kills itself with SIGKILL.
 * - `fail-stuck`: rank 1 exits 3; the others sit in a long timer outside any communication (the
 *   launcher must stop them); with `--ignore-term` they also ignore SIGTERM.
 * - `sleep`: prints its pid and sleeps (for Ctrl-C tests).
 * - `launcher <outdir> <nproc>`: runs the launcher itself over `sleep` ranks.
 */
import { Device } from "../../src/runtime/device.ts";
import { initDistributed } from "../../src/comm/env.ts";
import {
  COMM_FAILURE_EXIT_CODE,
  type CommDType,
  CommError,
  type Communicator,
} from "../../src/comm/comm.ts";
import { launch } from "../../src/launch/launcher.ts";
import { bf16ToF32, f32ToBf16 } from "../../src/io/dtype.ts";

const mode = Deno.args[0] ?? "check";
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

if (mode === "sleep") {
  console.log(`pid ${Deno.pid} rank ${Deno.env.get("RANK")}`);
  await sleep(60_000);
  Deno.exit(0);
}

if (mode === "launcher") {
  const [outputDir, nproc] = Deno.args.slice(1);
  const result = await launch({
    nprocPerNode: Number(nproc),
    args: ["sleep"],
    command: [Deno.execPath(), "run", "-A", new URL(import.meta.url).pathname],
    outputDir,
    graceMs: 2000,
  });
  Deno.exit(result.code);
}

// `check` follows the test suite's backend (DISTFLASH_TEST_BACKEND=cuda: NCCL, one GPU per rank);
// the failure modes always run on CPU ranks.
const backend = mode === "check" && Deno.env.get("DISTFLASH_TEST_BACKEND") === "cuda"
  ? "cuda"
  : "cpu";
const device = Device.open(backend);
const buffers: { free(): void }[] = [];
function alloc(bytes: number): bigint {
  const b = device.alloc(Math.max(bytes, 1));
  buffers.push(b);
  return b.ptr;
}

class Mismatch extends Error {}
/**
 * Reductions: exact on the host transport (rank-order sums); NCCL may add in another order, so
 * there f32 and bf16 results are compared within a few roundings.
 */
function expectSum(
  what: string,
  dtype: CommDType,
  got: Typed,
  want: Typed,
): void {
  if (backend === "cpu" || dtype === "i32") return expectEqual(what, got, want);
  const g = dtype === "bf16" ? bf16ToF32(got as Uint16Array) : got as Float32Array;
  const w = dtype === "bf16" ? bf16ToF32(want as Uint16Array) : want as Float32Array;
  const tol = dtype === "bf16" ? 2 ** -6 : 1e-5;
  for (let i = 0; i < w.length; i++) {
    if (!(Math.abs(g[i] - w[i]) <= tol * Math.max(1, Math.abs(w[i])))) {
      throw new Mismatch(`${what}: element ${i} is ${g[i]}, expected ${w[i]}`);
    }
  }
}

function expectEqual(what: string, got: ArrayLike<number>, want: ArrayLike<number>): void {
  if (got.length !== want.length) {
    throw new Mismatch(`${what}: length ${got.length} != ${want.length}`);
  }
  for (let i = 0; i < want.length; i++) {
    if (!Object.is(got[i], want[i])) {
      throw new Mismatch(`${what}: element ${i} is ${got[i]}, expected ${want[i]}`);
    }
  }
}

type Typed = Float32Array | Uint16Array | Int32Array;
function typed(dtype: CommDType, n: number): Typed {
  return dtype === "f32"
    ? new Float32Array(n)
    : dtype === "bf16"
    ? new Uint16Array(n)
    : new Int32Array(n);
}

/** Rank r's i-th contribution, exactly representable in `dtype`. */
function value(dtype: CommDType, r: number, i: number): number {
  if (dtype === "i32") return ((r + 1) * 1_000_003 * (i + 7) * (i % 2 ? -1 : 1)) | 0;
  if (dtype === "bf16") return ((i % 13) - 6) * 0.375 + r * 0.0078125 * (i % 5);
  return Math.fround(Math.sin(i * 0.37 + r) * 100) / 3;
}

function fill(dtype: CommDType, r: number, n: number, offset = 0): Typed {
  const out = typed(dtype, n);
  if (dtype === "bf16") {
    const f = Float32Array.from({ length: n }, (_, i) => value(dtype, r, i + offset));
    (out as Uint16Array).set(f32ToBf16(f));
  } else {
    for (let i = 0; i < n; i++) out[i] = value(dtype, r, i + offset);
  }
  return out;
}

/** The sum over `ranks` in that order, as the host transport defines it. */
function expectedSum(dtype: CommDType, ranks: number[], n: number, offset = 0): Typed {
  if (dtype === "i32") {
    const acc = new Int32Array(n);
    for (const r of ranks) {
      for (let i = 0; i < n; i++) acc[i] = (acc[i] + value(dtype, r, i + offset)) | 0;
    }
    return acc;
  }
  const acc = new Float32Array(n);
  for (const r of ranks) {
    const x = dtype === "bf16"
      ? bf16ToF32(fill(dtype, r, n, offset) as Uint16Array)
      : fill(dtype, r, n, offset) as Float32Array;
    for (let i = 0; i < n; i++) acc[i] = Math.fround(acc[i] + x[i]);
  }
  return dtype === "bf16" ? f32ToBf16(acc) : acc;
}

function upload(data: Typed): bigint {
  const ptr = alloc(data.byteLength);
  if (data.byteLength > 0) device.upload(ptr, data);
  return ptr;
}

function download(dtype: CommDType, ptr: bigint, n: number): Typed {
  const out = typed(dtype, n);
  if (n > 0) device.download(out, ptr);
  return out;
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

async function checkAll(world: Communicator, label: string, globalOf: (r: number) => number) {
  const P = world.size, r = world.rank;
  const g = globalOf; // subgroup rank -> value seed (the global rank), so groups differ

  // Ring shift.
  {
    const n = 257;
    const src = upload(Float32Array.from(range(n), (i) => g(r) * 1000 + i));
    const dst = alloc(n * 4);
    await world.exchange([
      { kind: "send", peer: (r + 1) % P, ptr: src, bytes: n * 4 },
      { kind: "recv", peer: (r - 1 + P) % P, ptr: dst, bytes: n * 4 },
    ]);
    const from = (r - 1 + P) % P;
    expectEqual(
      `${label} ring shift`,
      download("f32", dst, n),
      Float32Array.from(range(n), (i) => g(from) * 1000 + i),
    );
  }

  // The balanced schedule's cyclic pattern in one group: for every t, send to r+t and receive
  // from r-t (sizes differ per t, t=0 is a send to self), two messages per pair in order, and a
  // zero-byte message.
  {
    const ops = [];
    const checks: { ptr: bigint; n: number; want: Float32Array; what: string }[] = [];
    for (let t = 0; t < P; t++) {
      const to = (r + t) % P, from = (r - t + P) % P;
      const n = 3 + 5 * t;
      for (const part of [0, 1]) {
        const mk = (who: number) =>
          Float32Array.from(range(n + part), (i) => g(who) * 10000 + t * 100 + part * 50 + i);
        ops.push({ kind: "send" as const, peer: to, ptr: upload(mk(r)), bytes: (n + part) * 4 });
        const dst = alloc((n + part) * 4);
        ops.push({ kind: "recv" as const, peer: from, ptr: dst, bytes: (n + part) * 4 });
        checks.push({ ptr: dst, n: n + part, want: mk(from), what: `t=${t} part ${part}` });
      }
      ops.push({ kind: "send" as const, peer: to, ptr: 0n, bytes: 0 });
      ops.push({ kind: "recv" as const, peer: from, ptr: 0n, bytes: 0 });
    }
    // Receives first on half of the ranks: only the order of ops per peer and kind matters.
    await world.exchange(
      r % 2
        ? [...ops.filter((o) => o.kind === "recv"), ...ops.filter((o) => o.kind === "send")]
        : ops,
    );
    for (const c of checks) {
      expectEqual(`${label} cyclic ${c.what}`, download("f32", c.ptr, c.n), c.want);
    }
  }

  // A large message both ways at once (exercises partial reads and writes).
  {
    const n = (1 << 20) + 3;
    const peer = P - 1 - r;
    const src = upload(Float32Array.from({ length: n }, (_, i) => (g(r) + 1) * (i % 1000)));
    const dst = alloc(n * 4);
    await world.exchange([
      { kind: "recv", peer, ptr: dst, bytes: n * 4 },
      { kind: "send", peer, ptr: src, bytes: n * 4 },
    ]);
    expectEqual(
      `${label} large`,
      download("f32", dst, n),
      Float32Array.from({ length: n }, (_, i) => (g(peer) + 1) * (i % 1000)),
    );
  }

  const members = range(P).map(g);
  for (const dtype of ["f32", "bf16", "i32"] as CommDType[]) {
    // All-reduce, with a count that does not divide by P.
    for (const n of [1001, 1, 0]) {
      const ptr = upload(fill(dtype, g(r), n));
      await world.allReduceSum(ptr, n, dtype);
      expectSum(
        `${label} allReduceSum ${dtype} n=${n}`,
        dtype,
        download(dtype, ptr, n),
        expectedSum(dtype, members, n),
      );
    }
    // All-gather.
    {
      const n = 37;
      const send = upload(fill(dtype, g(r), n));
      const recv = alloc(n * P * 4);
      await world.allGather(send, recv, n, dtype);
      const want = typed(dtype, n * P);
      for (let q = 0; q < P; q++) want.set(fill(dtype, g(q), n), q * n);
      expectEqual(`${label} allGather ${dtype}`, download(dtype, recv, n * P), want);
    }
    // Reduce-scatter.
    {
      const n = 29;
      const send = upload(fill(dtype, g(r), n * P));
      const recv = alloc(n * 4);
      await world.reduceScatterSum(send, recv, n, dtype);
      expectSum(
        `${label} reduceScatterSum ${dtype}`,
        dtype,
        download(dtype, recv, n),
        expectedSum(dtype, members, n, r * n),
      );
    }
    // Broadcast from the last and the first rank.
    for (const root of [P - 1, 0]) {
      const n = 55;
      const ptr = upload(r === root ? fill(dtype, g(root), n) : typed(dtype, n));
      await world.broadcast(ptr, n, dtype, root);
      expectEqual(
        `${label} broadcast ${dtype} root ${root}`,
        download(dtype, ptr, n),
        fill(dtype, g(root), n),
      );
    }
  }
  await world.barrier();
}

let worldRef: Communicator | undefined;
const rankText = Deno.env.get("RANK") ?? "?";
try {
  for (
    const name of ["NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS"]
  ) {
    const want = name === "NCCL_NVLS_ENABLE" ? "0" : "1";
    if (Deno.env.get("DISTFLASH_LAUNCHED") === "1" && Deno.env.get(name) !== want) {
      throw new Mismatch(`${name} is ${Deno.env.get(name)}, expected ${want}`);
    }
  }
  const t0 = performance.now();
  const { world, rank, size } = await initDistributed({ backend, device });
  worldRef = world;
  const tInit = performance.now() - t0;

  if (mode === "check") {
    if (world.rank !== rank || world.size !== size) throw new Mismatch("world rank/size");
    await checkAll(world, "world", (q) => q);
    // Subgroups: [0, 2], the whole world reversed, and a dp x sp split into pairs.
    if (size >= 3 && (rank === 0 || rank === 2)) {
      const sub = await world.subgroup([0, 2]);
      if (sub.rank !== rank / 2 || sub.size !== 2) throw new Mismatch("subgroup [0,2] rank");
      await checkAll(sub, "[0,2]", (q) => [0, 2][q]);
      await sub.close();
    }
    const reversed = range(size).reverse();
    const rev = await world.subgroup(reversed);
    if (rev.rank !== size - 1 - rank) throw new Mismatch("reversed subgroup rank");
    await checkAll(rev, "reversed", (q) => reversed[q]);
    if (size % 2 === 0) {
      const pair = range(size).filter((q) => Math.floor(q / 2) === Math.floor(rank / 2));
      const sp = await world.subgroup(pair);
      // Traffic on the world and on a subgroup in flight at the same time.
      const n = 513;
      const a = upload(fill("f32", rank, n)), b = upload(fill("f32", rank, n));
      await Promise.all([world.allReduceSum(a, n, "f32"), sp.allReduceSum(b, n, "f32")]);
      const world2 = download("f32", a, n), pair2 = download("f32", b, n);
      expectSum("concurrent world", "f32", world2, expectedSum("f32", range(size), n));
      expectSum("concurrent pair", "f32", pair2, expectedSum("f32", pair, n));
    }
    await world.barrier();
    console.log(
      `rank ${rank}/${size}: all checks passed on ${backend} (init ${tInit.toFixed(0)} ms, total ` +
        `${(performance.now() - t0).toFixed(0)} ms)`,
    );
  } else if (mode === "fail-exit" || mode === "fail-kill") {
    await world.barrier();
    const ptr = upload(new Float32Array(16));
    if (rank === 1) {
      await sleep(200);
      console.error(`rank 1: failing on purpose (${mode})`);
      if (mode === "fail-kill") Deno.kill(Deno.pid, "SIGKILL");
      Deno.exit(Number(Deno.args[1] ?? 3));
    }
    await world.allReduceSum(ptr, 16, "f32");
    throw new Mismatch("the all-reduce completed although rank 1 left");
  } else if (mode === "fail-stuck") {
    // Ignore SIGTERM before anyone can fail: after the barrier rank 1 exits at once, and the
    // launcher's SIGTERM must not find a rank that has not installed its listener yet.
    if (Deno.args.includes("--ignore-term") && rank !== 1) {
      Deno.addSignalListener("SIGTERM", () => {});
    }
    await world.barrier();
    if (rank === 1) {
      console.error("rank 1: failing on purpose (fail-stuck)");
      Deno.exit(3);
    }
    console.log(`rank ${rank}: busy elsewhere`);
    await sleep(60_000);
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
  await world.close();
  for (const b of buffers) b.free();
  Deno.exit(0);
} catch (error) {
  console.error(`rank ${rankText}: ${(error as Error).stack ?? error}`);
  worldRef?.abort();
  Deno.exit(error instanceof CommError ? COMM_FAILURE_EXIT_CODE : 1);
}
