// Plans that do not mislead (issue 25, section 4): `--gpu KIND` plans for that card's usable
// memory, the plan says which GPU and host memory it assumed and how to set them, a plan for
// another machine does not check its offloads against this host, and the advice searches every
// combination of the memory-saving options for the cheapest that fits.

import { assert, assertEquals, assertThrows } from "./assert.ts";
import { runCli, TEST_BACKEND } from "./_util.ts";
import { gpuBudget } from "../cli/plan.ts";
import { GPU_KINDS, gpuKind } from "../src/train/gpu_kinds.ts";
import { memorySavings } from "../src/train/plan.ts";
import { presetConfig } from "../src/model/presets.ts";
import { resolveTrainOptions } from "../src/train/resolve_options.ts";

const GIB = 2 ** 30, MIB = 2 ** 20;

Deno.test("plan --gpu: each kind's usable memory is nvidia-smi's total less the CUDA context", () => {
  // 81559 MiB (H100 80 GB) - 0.9 GiB = 78.75 GiB: the 78.7 GiB free at a run's start.
  const h100 = gpuBudget("H100-80GB", undefined, "auto", () => null);
  assertEquals(h100.budget, 81559 * MIB - 0.9 * GIB);
  assertEquals((h100.budget / GIB).toFixed(2), "78.75");
  assert(h100.source.startsWith("--gpu H100-80GB: usable of its 79.6 GiB"), h100.source);
  assertEquals(h100.thisMachine, false);
  assertEquals(gpuBudget("a100-40gb", undefined, "auto").budget, 40960 * MIB - 0.9 * GIB);
  assertEquals(gpuKind("H200").usableBytes, 143771 * MIB - 0.9 * GIB);
  assertEquals(gpuKind("A100-80GB").totalBytes, 80 * GIB);
  assert(GPU_KINDS.every((k) => k.usableBytes < k.totalBytes));
  // No GPU here and none named: the default kind, said so with how to change it.
  const none = gpuBudget(undefined, undefined, "auto", () => null);
  assertEquals(none.budget, h100.budget);
  assert(/no GPU here, so --gpu H100-80GB.*--gpu or --gpu-memory sets it/.test(none.source));
  // A GPU here: its free memory, and this machine's host memory goes with it.
  const here = gpuBudget(undefined, undefined, "auto", () => 70 * GIB);
  assertEquals([here.budget, here.thisMachine], [70 * GIB, true]);
  assertEquals(gpuBudget(undefined, "40", "auto").budget, 40 * GIB);
  // A family name: the kind when it names one (l40s, rtx), the choices when it names several.
  const ambiguous = assertThrows(() => gpuBudget("H100", undefined, "auto"));
  assert(ambiguous.message.includes("which one? H100-80GB or H100-94GB"), ambiguous.message);
  assert(assertThrows(() => gpuKind("a100")).message.includes("A100-80GB or A100-40GB"));
  assertEquals(gpuKind("rtx").name, "RTX-4090");
  assertEquals(gpuKind("h200").name, "H200");
  const unknown = assertThrows(() => gpuBudget("B200", undefined, "auto"));
  assert(unknown.message.includes("known: H100-80GB, H100-94GB, H200"), unknown.message);
  // Not a prefix of a name: "H1" names no family.
  assert(assertThrows(() => gpuKind("H1")).message.includes("unknown GPU kind"));
  assertThrows(() => gpuBudget("H200", "80", "auto"));
});

Deno.test("plan: says what it assumed; a plan for another machine leaves the host unchecked", async () => {
  // 7B at 32K with the gradients offloaded: ~115 GiB of host state per rank, more than a laptop
  // has; planning for an H100 node must not measure it against this machine.
  const args = [
    "plan",
    "--model",
    "llama-2-7b",
    "--bf16",
    "--model-max-length",
    "32768",
    "--offload-gradients",
  ];
  const r = await runCli([...args, "--gpu", "H100-80GB"]);
  assertEquals(r.code, 0, r.stdout + r.stderr);
  const first = r.stdout.split("\n")[0];
  assert(first.startsWith("planned for: GPU memory 78.7 GiB (--gpu H100-80GB"), first);
  assert(first.includes("host memory of a node: not checked"), first);
  assert(first.includes("--host-memory GiB sets it"), first);
  assert(/per rank, .* not checked/.test(r.stdout), r.stdout);
  // With --host-memory it is checked: 100 GiB is too little.
  const small = await runCli([...args, "--gpu", "H100-80GB", "--host-memory", "100"]);
  assertEquals(small.code, 3, small.stdout);
  assert(small.stdout.includes("of 100.0 GiB (--host-memory): does NOT fit"), small.stdout);
  if (TEST_BACKEND === "cpu") {
    // No GPU on this machine (the CPU test runs): the default kind, said so.
    const d = await runCli(args);
    assertEquals(d.code, 0, d.stdout + d.stderr);
    assert(d.stdout.includes("(no GPU here, so --gpu H100-80GB"), d.stdout);
  }
});

Deno.test("plan: the advice is the cheapest combination of memory options that fits", async () => {
  // Llama-2-7B, one 80 GB H100, 512K tokens, a 250 GiB host (README, Offloading the optimizer):
  // it fits with both offloads and the layer boundary, and the native attention kernels (cuDNN's
  // scratch of one block pair of 512K queries is 20 GiB). By the cost table that set costs
  // 2 + 3 + 3.5 + 5 = 13.5; every cheaper set leaves out one of the four or offloads only the
  // optimizer, so it is a subset of one of the five runs below, each of which does not fit
  // (memory only grows as options are removed).
  const base = ["plan", "--model", "llama-2-7b", "--bf16", "--model-max-length", "524288"];
  const where = ["--gpu", "H100-80GB", "--host-memory", "250"];
  const r = await runCli([...base, ...where]);
  assertEquals(r.code, 3, r.stdout);
  const hint = r.stdout.split("\n").find((l) => l.startsWith("to make it fit:")) ?? "";
  const best = [
    "--checkpoint-boundary layer",
    "--offload-checkpoints",
    "--attention-kernel native",
    "--offload-gradients",
  ];
  assert(hint.includes(best.join(" ")), r.stdout);
  const flags = (set: string[]) => set.flatMap((f) => f.split(" "));
  assertEquals((await runCli([...base, ...where, ...flags(best)])).code, 0);
  const cheaper = [
    ...best.map((_, i) => best.filter((_, j) => j !== i)),
    [...best.slice(0, 3), "--offload-optimizer"],
  ];
  for (const set of cheaper) {
    const c = await runCli([...base, ...where, ...flags(set)]);
    assertEquals(c.code, 3, `${set.join(" ")} fits:\n${c.stdout}`);
  }
});

Deno.test("plan: the combinations searched and their order, by hand", () => {
  // One CPU rank (no cuDNN, no head groups, no sharding): boundary 2, checkpoints 3, optimizer
  // 4, gradients 5; sets cost the sum, ties go to fewer options.
  const cfg = presetConfig("debug-small");
  const o = resolveTrainOptions({ model: "debug-small", synthetic: true, device: "cpu" }).options;
  const sets = memorySavings(cfg, o, 1);
  assertEquals(sets.map((s) => [s.cost, s.flags.join(" ")]), [
    [2, "--checkpoint-boundary layer"],
    [3, "--offload-checkpoints"],
    [4, "--offload-optimizer"],
    [5, "--offload-gradients"],
    [5, "--checkpoint-boundary layer --offload-checkpoints"],
    [6, "--checkpoint-boundary layer --offload-optimizer"],
    [7, "--checkpoint-boundary layer --offload-gradients"],
    [7, "--offload-checkpoints --offload-optimizer"],
    [8, "--offload-checkpoints --offload-gradients"],
    [9, "--checkpoint-boundary layer --offload-checkpoints --offload-optimizer"],
    [10, "--checkpoint-boundary layer --offload-checkpoints --offload-gradients"],
  ]);
  // 2 bf16 GPU ranks of Llama-2-7B (8 key/value-head divisors 2..32 of 32): sharding, 5 group
  // counts, boundary, checkpoints, native kernels and 2 offload levels: 2 x 2 x 6 x 2 x 2 x 3 - 1.
  const gpu = resolveTrainOptions({
    model: "llama-2-7b",
    synthetic: true,
    bf16: true,
    nprocPerNode: 2,
  }).options;
  const all = memorySavings(presetConfig("llama-2-7b"), gpu, 2);
  assertEquals(all.length, 2 * 2 * 6 * 2 * 2 * 3 - 1);
  assertEquals(all[0].flags, ["--fsdp full_shard"]);
  // Options already on are not offered again.
  const on = { ...gpu, fsdp: "full_shard", offloadOptimizer: true, checkpointBoundary: "layer" };
  const fewer = memorySavings(presetConfig("llama-2-7b"), on as typeof gpu, 2);
  assert(fewer.every((s) => !s.flags.some((f) => /fsdp|boundary|optimizer/.test(f))));
  assertEquals(fewer.length, 6 * 2 * 2 * 2 - 1);
});
