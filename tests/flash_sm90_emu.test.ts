/**
 * The Hopper attention kernels (csrc/cuda/flash_fwd_sm90.cu, flash_bwd_sm90.cu) run from their own
 * source on the host emulation of wgmma, cp.async and the CUDA thread model (csrc/emu/sm90_emu.h),
 * against float64 attention (csrc/emu/flash_sm90_emu.cpp: the cases, the schedules and the
 * tolerances, 1e-2 of max |ref| for out, dq, dk, dv and 1e-3 absolute for lse, are argued there).
 * This is how CI runs code that needs an H100, not a substitute for the GPU tests
 * (tests/attention_gpu.test.ts with DISTFLASH_FLASH_FWD=4 or 5, DISTFLASH_FLASH_BWD=4): the
 * emulator models what the PTX ISA specifies, so a misreading of the ISA shared by kernel and
 * emulator would pass here and fail there.
 */
import { assert } from "./assert.ts";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const dec = new TextDecoder();

let built: Promise<string> | undefined;
/** Compiles the emulation once per test process; a compiler warning fails like an error. */
function build(): Promise<string> {
  built ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "distflash-emu-" });
    const exe = `${dir}/flash_sm90_emu`;
    const cxx = Deno.env.get("CXX") ?? "c++";
    const args = [
      "-std=c++20",
      "-O2",
      "-Wall",
      "-Wextra",
      "-Wno-unknown-pragmas",
      "-o",
      exe,
      `${root}csrc/emu/flash_sm90_emu.cpp`,
    ];
    const out = await new Deno.Command(cxx, { args, stdout: "piped", stderr: "piped" }).output();
    const text = dec.decode(out.stdout) + dec.decode(out.stderr);
    if (!out.success || /warning/i.test(text)) {
      throw new Error(`${cxx} ${args.join(" ")} (exit ${out.code}):\n${text}`);
    }
    return exe;
  })();
  return built;
}

async function runEmulation(which: "fwd" | "bwd"): Promise<string> {
  const out = await new Deno.Command(await build(), {
    args: [which],
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const text = dec.decode(out.stdout) + dec.decode(out.stderr);
  const lines = text.trim().split("\n");
  const problems = lines.filter((l) => !l.startsWith("ok ")).slice(0, 20).join("\n");
  assert(
    out.code === 0,
    `exit ${out.code} (1: numbers off, 2: a hazard the emulator found):\n${problems}`,
  );
  assert(lines.at(-1) === "passed: 0 failure(s)", text.slice(-2000));
  return text;
}

Deno.test("Hopper forward (wgmma, v4 and v5) on the emulator matches float64 attention", async () => {
  const text = await runEmulation("fwd");
  // 14 cases (6 with a sliding window) x 2 head dims x 2 variants x 4 schedules x (out, lse).
  assert((text.match(/^ok /gm) ?? []).length === 448, text.slice(-2000));
});

Deno.test("Hopper backward (wgmma, v6) on the emulator matches float64 attention", async () => {
  const text = await runEmulation("bwd");
  // 14 cases (6 with a sliding window) x 2 head dims x 4 schedules x (dq, dk, dv).
  assert((text.match(/^ok /gm) ?? []).length === 336, text.slice(-2000));
});
