// mod.ts imports from any Deno project: a script in a folder outside this repository (no
// deno.json there, so no import map) type-checks against mod.ts by absolute path and runs.

import { assertEquals } from "./assert.ts";
import { join } from "node:path";

const MOD = new URL("../mod.ts", import.meta.url).pathname;

Deno.test("mod.ts: a script outside the repository type-checks and loads it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "distflash-user-" });
  try {
    const script = join(dir, "use.ts");
    await Deno.writeTextFile(
      script,
      `import { presetConfig, train, TRAIN_DEFAULTS } from ${JSON.stringify(MOD)};\n` +
        `const n: number = presetConfig("debug-tiny").vocabSize;\n` +
        `const report: string = TRAIN_DEFAULTS.reportTo;\n` +
        `console.log(JSON.stringify({ n, train: typeof train, report }));\n`,
    );
    const run = (args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args,
        cwd: dir,
        env: { NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
    const dec = new TextDecoder();
    const check = await run(["check", script]);
    assertEquals(check.code, 0, dec.decode(check.stderr));
    const out = await run(["run", "-A", script]);
    assertEquals(out.code, 0, dec.decode(out.stderr));
    assertEquals(JSON.parse(dec.decode(out.stdout)), { n: 259, train: "function", report: "none" });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
