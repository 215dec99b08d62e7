/**
 * Finds and opens the native libraries with a fixed, reported search order.
 *
 * libdistflash_{cpu,cuda}.so:
 *   1. $DISTFLASH_LIB_DIR/libdistflash_<backend>.so, if the variable is set (and nothing else then);
 *   2. lib/ beside the sources (a checkout after `deno task build`), which is also where a
 *      `deno compile --include lib/` binary keeps them: there they live in the binary's embedded
 *      file system, which dlopen cannot read, so they are copied out to a cache folder first.
 * libnccl.so.2:
 *   1. $DISTFLASH_NCCL_PATH (a file), if set (and nothing else then);
 *   2. the dynamic loader's own search (LD_LIBRARY_PATH, ld.so.cache) for libnccl.so.2;
 *   3. the usual install folders of CUDA and NCCL;
 *   4. the nvidia-nccl Python wheel (nvidia/nccl/lib) of the active virtual environment or conda
 *      environment ($VIRTUAL_ENV, then $CONDA_PREFIX: lib/python3.x/site-packages), as the cuDNN
 *      loader (csrc/common/cudnn_loader.c) looks for cuDNN's wheel.
 * A library that cannot be opened is reported with every path tried and the loader's reason.
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { homedir, tmpdir } from "node:os";
import { DISTFLASH_SYMBOLS } from "./distflash.ts";
import { NCCL_SYMBOLS } from "./nccl.ts";

/** A native backend: libdistflash_cpu.so or libdistflash_cuda.so. */
export type BackendName = "cpu" | "cuda";

/** A native library that could not be opened, with every path tried and why. */
export class LibraryNotFoundError extends Error {
  /** Creates the error for `library`, listing each path tried and the loader's reason. */
  constructor(readonly library: string, readonly tried: { path: string; reason: string }[]) {
    super(
      `cannot load ${library}; tried:\n` +
        tried.map((t) => `  ${t.path}: ${t.reason}`).join("\n"),
    );
    this.name = "LibraryNotFoundError";
  }
}

export interface LoaderOptions {
  /** Environment to read DISTFLASH_LIB_DIR / DISTFLASH_NCCL_PATH from (default: Deno.env). */
  env?: Record<string, string | undefined>;
  /** Folder holding the built libraries (default: lib/ beside the sources). */
  libDir?: string;
  /** Paths that live in an embedded (virtual) file system and must be copied out to be opened. */
  embeddedRoot?: string;
  /** Where copied-out libraries go (default: $XDG_CACHE_HOME or ~/.cache, /distflash). */
  cacheDir?: string;
}

const sourceRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..");

function envOf(options: LoaderOptions): Record<string, string | undefined> {
  return options.env ?? Deno.env.toObject();
}

/** The root of a `deno compile` binary's embedded files, or undefined when run from source. */
export function compiledRoot(): string | undefined {
  // A compiled binary runs its modules from a virtual folder named deno-compile-<name>.
  const marker = sourceRoot.indexOf("deno-compile-");
  if (marker < 0) return undefined;
  const end = sourceRoot.indexOf("/", marker);
  return end < 0 ? sourceRoot : sourceRoot.slice(0, end);
}

/** The ordered candidate paths for libdistflash_<backend>.so. */
export function distflashCandidates(backend: BackendName, options: LoaderOptions = {}): string[] {
  const file = `libdistflash_${backend}.so`;
  const override = envOf(options).DISTFLASH_LIB_DIR;
  if (override) return [join(override, file)];
  return [join(options.libDir ?? join(sourceRoot, "lib"), file)];
}

/**
 * Copies a library out of an embedded file system into the cache, named by its content hash so
 * concurrent ranks and different versions never clash; returns the real path.
 */
export function materialize(path: string, options: LoaderOptions = {}): string {
  const root = options.embeddedRoot ?? compiledRoot();
  if (!root || !path.startsWith(root)) return path;
  const bytes = readFileSync(path);
  const digest = createHash("sha256").update(bytes).digest("hex").slice(0, 16);
  const env = envOf(options);
  const cache = options.cacheDir ??
    join(env.XDG_CACHE_HOME ?? join(homedir() || tmpdir(), ".cache"), "distflash");
  const target = join(cache, digest, path.split("/").at(-1)!);
  if (!existsSync(target) || statSync(target).size !== bytes.length) {
    mkdirSync(dirname(target), { recursive: true });
    const partial = `${target}.${Deno.pid}.partial`;
    writeFileSync(partial, bytes, { mode: 0o755 });
    renameSync(partial, target); // atomic: another rank never opens a half-written copy
  }
  return target;
}

function tryOpen<S extends Deno.ForeignLibraryInterface>(
  library: string,
  candidates: string[],
  symbols: S,
  options: LoaderOptions,
): { lib: Deno.DynamicLibrary<S>; path: string } {
  const tried: { path: string; reason: string }[] = [];
  for (const candidate of candidates) {
    const isBareName = !candidate.includes("/");
    if (!isBareName && !existsSync(candidate)) {
      tried.push({ path: candidate, reason: "no such file" });
      continue;
    }
    try {
      const path = isBareName ? candidate : materialize(candidate, options);
      return { lib: Deno.dlopen(path, symbols), path };
    } catch (error) {
      tried.push({ path: candidate, reason: (error as Error).message.split("\n")[0] });
    }
  }
  throw new LibraryNotFoundError(library, tried);
}

/** Opens libdistflash_<backend>.so; throws LibraryNotFoundError naming every path tried. */
export function openDistflash(backend: BackendName, options: LoaderOptions = {}) {
  const library = `libdistflash_${backend}.so`;
  try {
    return tryOpen(library, distflashCandidates(backend, options), DISTFLASH_SYMBOLS, options);
  } catch (error) {
    if (error instanceof LibraryNotFoundError && !envOf(options).DISTFLASH_LIB_DIR) {
      error.message += "\n(run `deno task build` to build it, or set DISTFLASH_LIB_DIR)";
    }
    throw error;
  }
}

/** The ordered candidate paths for NCCL. */
export function ncclCandidates(options: LoaderOptions = {}): string[] {
  const override = envOf(options).DISTFLASH_NCCL_PATH;
  if (override) return [override];
  return [
    "libnccl.so.2",
    "/usr/lib/x86_64-linux-gnu/libnccl.so.2",
    "/usr/local/cuda/lib64/libnccl.so.2",
    "/usr/local/nccl/lib/libnccl.so.2",
    "/opt/nccl/lib/libnccl.so.2",
    ...wheelCandidates(envOf(options)),
  ];
}

/** The nvidia-nccl wheel's library in each python3.* of $VIRTUAL_ENV, then $CONDA_PREFIX. */
function wheelCandidates(env: Record<string, string | undefined>): string[] {
  const found: string[] = [];
  for (const prefix of [env.VIRTUAL_ENV, env.CONDA_PREFIX]) {
    if (!prefix) continue;
    let pythons: string[] = [];
    try {
      pythons = [...Deno.readDirSync(join(prefix, "lib"))]
        .filter((e) => e.isDirectory && e.name.startsWith("python3"))
        .map((e) => e.name).sort();
    } catch {
      continue; // no lib/ folder: not an environment
    }
    for (const py of pythons) {
      found.push(join(prefix, "lib", py, "site-packages", "nvidia", "nccl", "lib", "libnccl.so.2"));
    }
  }
  return found;
}

/** Opens NCCL; throws LibraryNotFoundError naming every path tried. */
export function openNccl(options: LoaderOptions = {}) {
  return tryOpen("NCCL (libnccl.so.2)", ncclCandidates(options), NCCL_SYMBOLS, options);
}
