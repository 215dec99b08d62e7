/**
 * Builds the native libraries for this machine:
 *   lib/libdistflash_cpu.so   with cc, always;
 *   lib/libdistflash_cuda.so  with nvcc, when nvcc is found and this machine has an NVIDIA GPU
 *                             driver (sm_80 and sm_90a code), or when asked.
 *
 * Each source compiles to its own object under lib/obj/, rebuilt only when the source, any header,
 * or the flags changed; the libraries are relinked only when an object changed.
 *
 * Environment: CC (default cc), NVCC (default nvcc on PATH or /usr/local/cuda/bin/nvcc),
 * DISTFLASH_BUILD_CUDA=0 to skip the CUDA library, =1 to build it without a GPU here (default:
 * build it when there is a GPU driver), DISTFLASH_CUDA_ARCHS (default "80,90a").
 *
 * Usage: deno run -A scripts/build.ts [--quiet] [--force]
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { gpuDriverPresent } from "../src/runtime/gpu_driver.ts";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const libDir = join(root, "lib");
const quiet = Deno.args.includes("--quiet");
const force = Deno.args.includes("--force");

function log(message: string): void {
  if (!quiet) console.error(`[build] ${message}`);
}

function listFiles(dir: string, suffixes: string[]): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((name) => suffixes.some((s) => name.endsWith(s)))
    .map((name) => join(dir, name))
    .sort();
}

function mtime(path: string): number {
  return existsSync(path) ? statSync(path).mtimeMs : -1;
}

async function run(cmd: string, args: string[]): Promise<void> {
  const output = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(output.stdout) + new TextDecoder().decode(output.stderr);
  if (!output.success) {
    throw new Error(`${cmd} ${args.join(" ")}\nfailed with exit code ${output.code}:\n${text}`);
  }
  // Warnings are errors in spirit: show them, and fail the build so they get fixed.
  if (/warning/i.test(text)) throw new Error(`${cmd} printed warnings:\n${text}`);
}

function which(name: string): string | null {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    const candidate = join(dir, name);
    if (dir && existsSync(candidate)) return candidate;
  }
  return null;
}

async function capture(cmd: string, args: string[]): Promise<string> {
  try {
    const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "null" }).output();
    return new TextDecoder().decode(out.stdout).trim();
  } catch {
    return "";
  }
}

/** Runs `jobs` with at most `limit` in flight. */
async function pool(jobs: (() => Promise<void>)[], limit: number): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, jobs.length) }, async () => {
    while (next < jobs.length) await jobs[next++]();
  });
  await Promise.all(workers);
}

interface Target {
  name: string;
  output: string;
  sources: { path: string; compiler: string; flags: string[] }[];
  link: { compiler: string; flags: string[] };
}

/** Compiles what changed and links; returns true if the library was (re)built. */
async function buildTarget(target: Target, headers: string[]): Promise<boolean> {
  const objDir = join(libDir, "obj", target.name);
  mkdirSync(objDir, { recursive: true });
  const newestHeader = Math.max(...headers.map(mtime));
  const flagsFile = join(objDir, "flags.txt");
  const flagsNow = JSON.stringify([target.sources.map((s) => [s.compiler, s.flags]), target.link]);
  const flagsChanged = !existsSync(flagsFile) || readFileSync(flagsFile, "utf8") !== flagsNow;
  const objects: string[] = [];
  const jobs: (() => Promise<void>)[] = [];
  for (const source of target.sources) {
    const object = join(
      objDir,
      relative(join(root, "csrc"), source.path).replaceAll("/", "_") + ".o",
    );
    objects.push(object);
    const stale = force || flagsChanged ||
      mtime(object) < Math.max(mtime(source.path), newestHeader);
    if (!stale) continue;
    jobs.push(async () => {
      log(`compile ${relative(root, source.path)} (${target.name})`);
      await run(source.compiler, [...source.flags, "-c", source.path, "-o", object]);
    });
  }
  await pool(jobs, Math.max(1, navigator.hardwareConcurrency));
  const newestObject = Math.max(...objects.map(mtime));
  if (!force && jobs.length === 0 && !flagsChanged && mtime(target.output) >= newestObject) {
    log(`${relative(root, target.output)} is up to date`);
    return false;
  }
  log(`link ${relative(root, target.output)}`);
  await run(target.link.compiler, [...target.link.flags, "-o", target.output, ...objects]);
  writeFileSync(flagsFile, flagsNow);
  return true;
}

async function gitCommit(): Promise<string> {
  return (await capture("git", ["-C", root, "rev-parse", "--short=12", "HEAD"])) || "unknown";
}

/** A C string literal for -DDF_BUILD_INFO, safe for both cc and nvcc command lines. */
function buildInfoDefine(info: string): string {
  return `-DDF_BUILD_INFO="${info.replaceAll('"', "'")}"`;
}

export async function build(): Promise<{ cpu: string; cuda: string | null }> {
  mkdirSync(libDir, { recursive: true });
  const headers = [
    ...listFiles(join(root, "csrc/include"), [".h"]),
    ...listFiles(join(root, "csrc/common"), [".h"]),
    ...listFiles(join(root, "csrc/cpu"), [".h"]),
    ...listFiles(join(root, "csrc/cuda"), [".cuh", ".h"]),
  ];
  const commonSources = listFiles(join(root, "csrc/common"), [".c"]);
  const cc = Deno.env.get("CC") ?? "cc";
  const commit = await gitCommit();
  const ccVersion = (await capture(cc, ["--version"])).split("\n")[0];
  const cFlags = ["-O3", "-fPIC", "-std=gnu11", "-fopenmp", "-Wall", "-Wextra", "-Werror=implicit"];

  const cpuInfo = `distflash cpu backend; commit ${commit}; ${ccVersion}; ${cFlags.join(" ")}`;
  const cpuOutput = join(libDir, "libdistflash_cpu.so");
  await buildTarget({
    name: "cpu",
    output: cpuOutput,
    sources: [...commonSources, ...listFiles(join(root, "csrc/cpu"), [".c"])].map((path) => ({
      path,
      compiler: cc,
      flags: [...cFlags, buildInfoDefine(cpuInfo)],
    })),
    link: { compiler: cc, flags: ["-shared", "-fopenmp", "-lpthread", "-lm", "-ldl"] },
  }, headers);

  const nvcc = Deno.env.get("NVCC") ?? which("nvcc") ??
    (existsSync("/usr/local/cuda/bin/nvcc") ? "/usr/local/cuda/bin/nvcc" : null);
  const asked = Deno.env.get("DISTFLASH_BUILD_CUDA");
  const skip = asked === "0"
    ? "CUDA build skipped (DISTFLASH_BUILD_CUDA=0)"
    : !nvcc
    ? "nvcc not found: CUDA build skipped"
    : asked !== "1" && !gpuDriverPresent()
    ? "no NVIDIA GPU driver here: CUDA build skipped (DISTFLASH_BUILD_CUDA=1 builds it anyway)"
    : null;
  if (skip !== null || !nvcc) {
    log(skip ?? "");
    return { cpu: cpuOutput, cuda: null };
  }
  const archs = (Deno.env.get("DISTFLASH_CUDA_ARCHS") ?? "80,90a").split(",").map((a) => a.trim());
  const gencode = archs.flatMap((a) => ["-gencode", `arch=compute_${a},code=sm_${a}`]);
  const nvccVersion = (await capture(nvcc, ["--version"])).split("\n").at(-1) ?? "";
  const cudaFlags = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC,-Wall,-Wextra", ...gencode];
  const cudaInfo = `distflash cuda backend; commit ${commit}; ${nvccVersion}; sm_${
    archs.join(",sm_")
  }; -O3`;
  const cudaOutput = join(libDir, "libdistflash_cuda.so");
  await buildTarget({
    name: "cuda",
    output: cudaOutput,
    sources: [
      ...commonSources.map((path) => ({
        path,
        compiler: cc,
        flags: [...cFlags, buildInfoDefine(cudaInfo)],
      })),
      ...listFiles(join(root, "csrc/cuda"), [".cu"]).map((path) => ({
        path,
        compiler: nvcc,
        flags: [...cudaFlags, buildInfoDefine(cudaInfo)],
      })),
    ],
    // The CUDA runtime is linked statically so the library needs only the driver on a GPU host;
    // cuBLASLt is opened at run time (csrc/cuda/cublaslt.cu) and NCCL by the TypeScript side.
    link: {
      compiler: nvcc,
      flags: ["-shared", "-cudart", "static", ...gencode, "-Xcompiler", "-fopenmp", "-ldl"],
    },
  }, headers);
  return { cpu: cpuOutput, cuda: cudaOutput };
}

if (import.meta.main) {
  try {
    const out = await build();
    log(`ok: ${relative(root, out.cpu)}${out.cuda ? ", " + relative(root, out.cuda) : ""}`);
  } catch (error) {
    console.error(`[build] failed: ${(error as Error).message}`);
    Deno.exit(1);
  }
}
