/**
 * Where NCCL is looked for (ffi/loader.ts, DEVELOPERS.md "Native libraries"), without a GPU: stand-in
 * libnccl.so.2 files built here with cc (every symbol distflash binds; ncclGetVersion reports a
 * number that tells the stand-ins apart). $DISTFLASH_NCCL_PATH is taken alone when set, a missing
 * file there is an error that names it (nothing else is tried); else the dynamic loader's search
 * (LD_LIBRARY_PATH: read at process start, so those cases run in a fresh process) comes before the
 * fixed install folders, and a library found nowhere is reported with every path tried, in order.
 */
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { LibraryNotFoundError, ncclCandidates, openNccl } from "../ffi/loader.ts";
import { NCCL_SYMBOLS } from "../ffi/nccl.ts";

const loader = fileURLToPath(new URL("../ffi/loader.ts", import.meta.url));
const FOLDERS = [
  "/usr/lib/x86_64-linux-gnu/libnccl.so.2",
  "/usr/local/cuda/lib64/libnccl.so.2",
  "/usr/local/nccl/lib/libnccl.so.2",
  "/opt/nccl/lib/libnccl.so.2",
];

/** A stand-in libnccl.so.2 in `dir` whose ncclGetVersion reports `version`. */
function fakeNccl(dir: string, version: number): string {
  const path = join(dir, "libnccl.so.2"), src = `${path}.c`;
  const others = Object.keys(NCCL_SYMBOLS).filter((n) => n !== "ncclGetVersion");
  writeFileSync(
    src,
    `int ncclGetVersion(int *v) { *v = ${version}; return 0; }\n` +
      others.map((n) => `int ${n}(void) { return 0; }\n`).join(""),
  );
  const cc = Deno.env.get("CC") ?? "cc";
  const res = new Deno.Command(cc, { args: ["-shared", "-fPIC", "-o", path, src] }).outputSync();
  if (!res.success) throw new Error(new TextDecoder().decode(res.stderr));
  return path;
}

/** Opens NCCL in a fresh process with `env` (LD_LIBRARY_PATH and DISTFLASH_NCCL_PATH as given). */
async function openIn(
  env: Record<string, string>,
): Promise<{ path?: string; version?: number; error?: string }> {
  const base = Deno.env.toObject();
  delete base.DISTFLASH_NCCL_PATH;
  delete base.LD_LIBRARY_PATH;
  delete base.VIRTUAL_ENV;
  delete base.CONDA_PREFIX;
  const code = `
    import { openNccl } from ${JSON.stringify(loader)};
    try {
      const { lib, path } = openNccl();
      const v = new Int32Array(1);
      lib.symbols.ncclGetVersion(v);
      console.log(JSON.stringify({ path, version: v[0] }));
    } catch (e) {
      console.log(JSON.stringify({ error: e.message }));
    }`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--ext=ts", code],
    env: { ...base, ...env },
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

Deno.test("nccl loader: the documented order, and DISTFLASH_NCCL_PATH alone when set", () => {
  assertEquals(ncclCandidates({ env: {} }), ["libnccl.so.2", ...FOLDERS]);
  assertEquals(ncclCandidates({ env: { DISTFLASH_NCCL_PATH: "/x/libnccl.so.2" } }), [
    "/x/libnccl.so.2",
  ]);
  const missing = join(tmpdir(), "distflash-no-such-dir", "libnccl.so.2");
  const e = assertThrows(
    () => openNccl({ env: { DISTFLASH_NCCL_PATH: missing } }),
    LibraryNotFoundError,
  );
  assertEquals(e.tried.map((t) => t.path), [missing]);
  assert(e.message.includes(missing) && e.message.includes("no such file"), e.message);
});

Deno.test("nccl loader: found through DISTFLASH_NCCL_PATH, through LD_LIBRARY_PATH, and the variable first", async () => {
  const a = mkdtempSync(join(tmpdir(), "distflash-nccl-a-"));
  const b = mkdtempSync(join(tmpdir(), "distflash-nccl-b-"));
  try {
    const byEnv = fakeNccl(a, 22101), byLoader = fakeNccl(b, 22102);
    // The variable, in this process too (nothing is cached by openNccl itself).
    const lib = openNccl({ env: { DISTFLASH_NCCL_PATH: byEnv } });
    const v = new Int32Array(1);
    lib.lib.symbols.ncclGetVersion(v);
    assertEquals([lib.path, v[0]], [byEnv, 22101]);
    lib.lib.close();
    assertEquals(await openIn({ DISTFLASH_NCCL_PATH: byEnv }), { path: byEnv, version: 22101 });
    // The dynamic loader's search: the bare name, resolved through LD_LIBRARY_PATH.
    assertEquals(await openIn({ LD_LIBRARY_PATH: b }), { path: "libnccl.so.2", version: 22102 });
    // Both: the variable wins.
    assertEquals(await openIn({ LD_LIBRARY_PATH: b, DISTFLASH_NCCL_PATH: byEnv }), {
      path: byEnv,
      version: 22101,
    });
    // The variable set to a missing file: an error, even with a library on LD_LIBRARY_PATH.
    const missing = join(a, "nope", "libnccl.so.2");
    const r = await openIn({ LD_LIBRARY_PATH: b, DISTFLASH_NCCL_PATH: missing });
    assert(r.error !== undefined && r.error.includes(missing), JSON.stringify(r));
    assert(!r.error.includes(byLoader) && !r.error.includes("/usr/local/cuda"), r.error);
  } finally {
    rmSync(a, { recursive: true });
    rmSync(b, { recursive: true });
  }
});

Deno.test("nccl loader: the nvidia-nccl wheel of $VIRTUAL_ENV, then of $CONDA_PREFIX, after the folders", async () => {
  const venv = mkdtempSync(join(tmpdir(), "distflash-venv-"));
  const conda = mkdtempSync(join(tmpdir(), "distflash-conda-"));
  try {
    const wheel = (prefix: string, py: string) =>
      join(prefix, "lib", py, "site-packages", "nvidia", "nccl", "lib");
    for (const dir of [wheel(venv, "python3.12"), wheel(conda, "python3.11")]) {
      Deno.mkdirSync(dir, { recursive: true });
    }
    Deno.mkdirSync(join(venv, "lib", "not-python"));
    const inVenv = join(wheel(venv, "python3.12"), "libnccl.so.2");
    const inConda = join(wheel(conda, "python3.11"), "libnccl.so.2");
    assertEquals(ncclCandidates({ env: { VIRTUAL_ENV: venv, CONDA_PREFIX: conda } }), [
      "libnccl.so.2",
      ...FOLDERS,
      inVenv,
      inConda,
    ]);
    // A prefix without lib/ adds nothing.
    assertEquals(ncclCandidates({ env: { VIRTUAL_ENV: join(venv, "nope") } }), [
      "libnccl.so.2",
      ...FOLDERS,
    ]);
    fakeNccl(wheel(conda, "python3.11"), 22103);
    const r = await openIn({ VIRTUAL_ENV: venv, CONDA_PREFIX: conda });
    if (r.path === inConda) assertEquals(r.version, 22103);
    else console.log(`nccl loader: this machine's own NCCL came first (${JSON.stringify(r)})`);
    const e = await openIn({ VIRTUAL_ENV: venv });
    if (e.error !== undefined) assert(e.error.includes(`${inVenv}: no such file`), e.error);
  } finally {
    rmSync(venv, { recursive: true });
    rmSync(conda, { recursive: true });
  }
});

Deno.test("nccl loader: found nowhere, every path tried is reported in order", async () => {
  const real = FOLDERS.some((f) => {
    try {
      return Deno.statSync(f).isFile;
    } catch {
      return false;
    }
  });
  const r = await openIn({});
  if (real || r.error === undefined) {
    console.log("nccl loader: this machine has a libnccl.so.2; the not-found report is not tested");
    return;
  }
  const at = ["libnccl.so.2:", ...FOLDERS.map((f) => `${f}: no such file`)].map((p) =>
    r.error!.indexOf(p)
  );
  assert(at.every((i) => i >= 0), r.error);
  assertEquals([...at].sort((x, y) => x - y), at, r.error);
  assert(r.error.startsWith("cannot load NCCL (libnccl.so.2)"), r.error);
});
