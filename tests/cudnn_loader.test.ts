/**
 * The cuDNN loader and the --attention-kernel choice without a GPU: where libcudnn is looked for,
 * what is said when it is missing, not cuDNN, or too old, and that the CPU backend never runs
 * attention through it. The loader is C shared by both backends (csrc/common/cudnn_loader.c), so
 * the CPU library exercises the same code the CUDA library runs. Each environment runs in its own
 * process (the loader answers once per process). Stand-in libraries are built here with cc: tiny
 * .so files exporting cudnnGetVersion (the version under test) and cudnnBackendCreateDescriptor.
 */
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { testDevice } from "./_util.ts";
import { resolveTrainOptions } from "../src/train/resolve_options.ts";
import { selectAttentionKernel } from "../src/runtime/attention_kernel.ts";
import { gpuDriverPresent } from "../src/runtime/gpu_driver.ts";

function assertMatch(text: string, pattern: RegExp): void {
  assert(pattern.test(text), `${JSON.stringify(text)} does not match ${pattern}`);
}

const root = fileURLToPath(new URL("..", import.meta.url));
const worker = join(root, "tests/workers/cudnn_probe.ts");
const cpuLibrary = join(root, "lib/libdistflash_cpu.so");

interface ProbeReport {
  libraryDefault: string;
  probe: { available: boolean; version?: string; path?: string; error?: string };
  choices: Record<string, { line?: string; error?: string; set?: string }>;
}

/** Runs the probe worker on the CPU backend with `env` (DISTFLASH_CUDNN_PATH unset unless given). */
async function probeWith(env: Record<string, string>): Promise<ProbeReport> {
  const base = Deno.env.toObject();
  delete base.DISTFLASH_CUDNN_PATH;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", worker, "cpu"],
    env: { ...base, ...env },
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) throw new Error(`probe worker failed: ${new TextDecoder().decode(out.stderr)}`);
  return JSON.parse(text) as ProbeReport;
}

/** A stand-in libcudnn reporting `version` from cudnnGetVersion, at `path`. */
function fakeCudnn(path: string, version: number): void {
  const src = `${path}.c`;
  writeFileSync(
    src,
    `#include <stddef.h>\nsize_t cudnnGetVersion(void) { return ${version}; }\n` +
      `int cudnnBackendCreateDescriptor(int type, void **desc) { (void)type; *desc = 0; return 3000; }\n`,
  );
  const cc = Deno.env.get("CC") ?? "cc";
  const res = new Deno.Command(cc, { args: ["-shared", "-fPIC", "-o", path, src] }).outputSync();
  if (!res.success) throw new Error(new TextDecoder().decode(res.stderr));
}

Deno.test("cudnn loader: DISTFLASH_CUDNN_PATH at a missing file says so; auto runs native, cudnn is an error", async () => {
  const missing = join(tmpdir(), "distflash-no-such-dir", "libcudnn.so.9");
  const r = await probeWith({ DISTFLASH_CUDNN_PATH: missing });
  assertEquals(r.probe.available, false);
  // The C library's own default, seen from a fresh process: auto (cuDNN where it takes the call).
  assertEquals(r.libraryDefault, "auto");
  assertMatch(r.probe.error!, /DISTFLASH_CUDNN_PATH=.*does not give cuDNN 9/);
  assert(r.probe.error!.includes(missing), r.probe.error);
  assertMatch(r.probe.error!, /No such file/);
  assertEquals(r.choices.auto.set, "native");
  assertMatch(r.choices.auto.line!, /native kernels/);
  assertMatch(r.choices.cudnn.error!, /--attention-kernel cudnn: .*only on the CUDA backend/);
});

Deno.test("cudnn loader: a library that is not cuDNN, and a cuDNN older than 9.0, are refused by name", async () => {
  const notCudnn = await probeWith({ DISTFLASH_CUDNN_PATH: cpuLibrary });
  assertEquals(notCudnn.probe.available, false);
  assertMatch(notCudnn.probe.error!, /not a cuDNN library \(it lacks cudnnGetVersion\)/);
  const dir = mkdtempSync(join(tmpdir(), "distflash-cudnn-"));
  try {
    const old = join(dir, "libcudnn.so.9");
    fakeCudnn(old, 80907);
    const r = await probeWith({ DISTFLASH_CUDNN_PATH: old });
    assertEquals(r.probe.available, false);
    assertMatch(r.probe.error!, /cuDNN 8\.9\.7 is older than 9\.0/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

Deno.test("cudnn loader: found in a folder, and in a Python environment's nvidia/cudnn/lib", async () => {
  const dir = mkdtempSync(join(tmpdir(), "distflash-cudnn-"));
  try {
    // DISTFLASH_CUDNN_PATH may name the folder holding libcudnn.so.9.
    const folder = join(dir, "plain");
    mkdirSync(folder);
    fakeCudnn(join(folder, "libcudnn.so.9"), 90503);
    const byFolder = await probeWith({ DISTFLASH_CUDNN_PATH: folder });
    assertEquals(byFolder.probe.available, true, byFolder.probe.error);
    assertEquals(byFolder.probe.version, "9.5.3");
    assertEquals(byFolder.probe.path, join(folder, "libcudnn.so.9"));
    // Loaded, but the CPU backend still runs attention natively, and says so.
    assertEquals(byFolder.choices.auto.set, "native");
    assertMatch(byFolder.choices.cudnn.error!, /only on the CUDA backend/);

    // A virtual environment, as pip lays out nvidia-cudnn-cu12/13 (the GPU host's PyTorch).
    const lib = join(dir, "venv/lib/python3.11/site-packages/nvidia/cudnn/lib");
    mkdirSync(lib, { recursive: true });
    fakeCudnn(join(lib, "libcudnn.so.9"), 91002);
    const byVenv = await probeWith({ VIRTUAL_ENV: join(dir, "venv"), PYTHONPATH: "" });
    assertEquals(byVenv.probe.available, true, byVenv.probe.error);
    // The dynamic loader's own libcudnn.so.9 comes first where one is installed.
    if (byVenv.probe.path !== join(lib, "libcudnn.so.9")) {
      assert(!byVenv.probe.path!.startsWith(dir), `unexpected ${byVenv.probe.path}`);
    } else {
      assertEquals(byVenv.probe.version, "9.10.2");
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

Deno.test("attention kernel: the C setter validates, and the CPU backend refuses cudnn", () => {
  const d = testDevice();
  if (d.backend !== "cpu") return; // the CUDA side is tests/cudnn_gpu.test.ts
  assertEquals(d.sym.df_attention_kernel_set(7), 1 /* DF_ERR_INVALID */);
  assertMatch(d.lastError(), /'kernel' must be 0 \(auto\), 1 \(native\) or 2 \(cudnn\), got 7/);
  assertEquals(d.sym.df_attention_kernel_set(2), 4 /* DF_ERR_UNSUPPORTED */);
  assertMatch(d.lastError(), /only on the CUDA backend/);
  assertMatch(
    assertThrows(() => selectAttentionKernel(d, "fast" as "auto")).message,
    /--attention-kernel: fast is not one of auto, native, cudnn/,
  );
  assertEquals(
    selectAttentionKernel(d, "native"),
    "attention: native kernels (--attention-kernel native)",
  );
  assertEquals(d.sym.df_attention_kernel_get(), 1);
  selectAttentionKernel(d, "auto");
  assertEquals(d.sym.df_attention_kernel_get(), 1, "auto on the CPU backend is native");
});

Deno.test("attention kernel: --attention-kernel parses auto, native, cudnn and nothing else", () => {
  // auto by default: cuDNN where it loads and takes the block pair (the native kernels elsewhere)
  assertEquals(
    resolveTrainOptions({ model: "debug", synthetic: true }).options.attentionKernel,
    "auto",
  );
  assertEquals(
    resolveTrainOptions({ model: "debug", synthetic: true, attentionKernel: "auto" }).options
      .attentionKernel,
    "auto",
  );
  assertEquals(
    resolveTrainOptions({ model: "debug", synthetic: true, attentionKernel: "cudnn" }).options
      .attentionKernel,
    "cudnn",
  );
  assertMatch(
    assertThrows(() =>
      resolveTrainOptions({ model: "debug", synthetic: true, attentionKernel: "flash" })
    ).message,
    /attention-kernel/,
  );
});

Deno.test("distflash info says why cuDNN is not used (on a machine without a GPU: CPU only, once)", async () => {
  const missing = join(tmpdir(), "distflash-no-such-dir", "libcudnn.so.9");
  const base = Deno.env.toObject();
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(root, "cli/main.ts"), "info"],
    env: { ...base, DISTFLASH_CUDNN_PATH: missing },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert(out.success, text);
  if (!gpuDriverPresent()) {
    // Without a GPU, cuDNN cannot matter: info says so once instead of listing search paths.
    assertEquals(text.match(/CPU only/g)?.length, 1, text);
    assert(!text.includes("cuDNN"), text);
    return;
  }
  assertMatch(
    text,
    /cuDNN: not used \(DISTFLASH_CUDNN_PATH=.*libcudnn\.so\.9 does not give cuDNN 9/,
  );
});
