/** The command line, run as a subprocess exactly as users run it. */
import { assert, assertEquals } from "./assert.ts";
import { runCli } from "./_util.ts";

Deno.test("cli: --help lists the commands", async () => {
  const r = await runCli(["--help"]);
  assertEquals(r.code, 0);
  for (const word of ["Usage: distflash", "info", "demo"]) assert(r.stdout.includes(word), word);
});

Deno.test("cli: --version prints the version of deno.json", async () => {
  const r = await runCli(["--version"]);
  assertEquals(r.code, 0);
  const denoJson = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  assertEquals(r.stdout.trim(), denoJson.version);
});

Deno.test("cli: info on a CPU-only machine says so and exits 0", async () => {
  const r = await runCli(["info"], { CUDA_VISIBLE_DEVICES: "" });
  assertEquals(r.code, 0, r.stderr);
  assert(r.stdout.includes("backend in use: cpu"), r.stdout);
  // Once, and without the search paths of NCCL, cuDNN and the CUDA library (issue 25).
  assertEquals(r.stdout.split("CPU only").length, 2, r.stdout);
  assert(!/NCCL|cuDNN|libnccl|cuda library/.test(r.stdout), r.stdout);
  assert(r.stdout.includes("cpu library:"), r.stdout);
});

Deno.test("cli: info --json is one JSON object with the same facts", async () => {
  const r = await runCli(["info", "--json"], { CUDA_VISIBLE_DEVICES: "" });
  assertEquals(r.code, 0, r.stderr);
  const info = JSON.parse(r.stdout);
  assertEquals(info.backend, "cpu");
  assertEquals(info.gpus, []);
  assertEquals(info.backends.cpu.available, true);
  assert(typeof info.nccl.available === "boolean");
});

Deno.test("cli: an unknown flag is an error naming it", async () => {
  const r = await runCli(["info", "--no-such-flag"]);
  assert(r.code !== 0);
  assert(r.stderr.includes("--no-such-flag"), r.stderr);
  const top = await runCli(["--frobnicate"]);
  assert(top.code !== 0 && top.stderr.includes("--frobnicate"), top.stderr);
});

Deno.test("cli: a missing native library is reported with the paths tried", async () => {
  const r = await runCli(["info", "--json"], { DISTFLASH_LIB_DIR: "/nonexistent/lib" });
  assertEquals(r.code, 0, r.stderr);
  const info = JSON.parse(r.stdout);
  assertEquals(info.backends.cpu.available, false);
  assert(info.backends.cpu.error.includes("/nonexistent/lib/libdistflash_cpu.so"));
});

Deno.test("cli: the launcher refuses a bad multi-rank run before any rank starts", async () => {
  const out = await Deno.makeTempDir();
  const base = ["train", "--model", "debug-tiny", "--synthetic", "--device", "cpu"];
  try {
    // More CPU ranks than 4 per core: refused by the launcher, and no rank log exists.
    const cores = navigator.hardwareConcurrency;
    const many = await runCli([
      ...base,
      "--nproc-per-node",
      `${4 * cores + 1}`,
      "--output-dir",
      out,
    ]);
    assert(many.code !== 0);
    assert(
      many.stderr.includes(`--nproc-per-node ${4 * cores + 1}: CPU ranks are limited`),
      many.stderr,
    );
    // A length the zigzag layout cannot cut on 2 ranks: named once, by the launcher.
    const odd = await runCli([
      ...base,
      "--nproc-per-node",
      "2",
      "--model-max-length",
      "30",
      "--output-dir",
      out,
    ]);
    assert(odd.code !== 0);
    const message = "--model-max-length 30 must be a multiple of 4";
    assertEquals(odd.stderr.split(message).length - 1, 1, odd.stderr);
    let entries = 0;
    for await (const _ of Deno.readDir(out)) entries++;
    assertEquals(entries, 0, "no rank started: nothing written to the output folder");
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("demo runs again in its own folder, and never writes into a folder it did not make", async () => {
  const out = await Deno.makeTempDir();
  const args = ["demo", "--max-steps", "2", "--device", "cpu"];
  try {
    for (const attempt of [1, 2]) {
      const r = await runCli([...args, "--output-dir", `${out}/demo`]);
      assertEquals(r.code, 0, `attempt ${attempt}: ${r.stderr}`);
      assert(r.stdout.includes("model and metrics.jsonl in"), r.stdout);
    }
    // A folder with a training run's files is left alone.
    const foreign = `${out}/run`;
    await Deno.mkdir(foreign);
    await Deno.writeTextFile(`${foreign}/metrics.jsonl`, '{"step":1}\n');
    const r = await runCli([...args, "--output-dir", foreign]);
    assert(r.code !== 0 && r.stderr.includes("that demo did not write"), r.stderr);
    assertEquals(await Deno.readTextFile(`${foreign}/metrics.jsonl`), '{"step":1}\n');
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});
