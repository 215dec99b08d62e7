/**
 * Interrupted saves, made on disk deterministically from a finished run's checkpoints, then
 * `--resume-from-checkpoint last`: the checkpoint `last` chooses (before rank 0 recovers the
 * folder) is the one recovery leaves in place, and the resumed loss curve continues the
 * uninterrupted run's exactly.
 * - A save that wrote complete.json but was killed before its rename (`checkpoint-3.tmp-<run>`).
 * - A kill between the two renames that replace a same-named checkpoint (`checkpoint-3.old-<run>`
 *   and `checkpoint-3.tmp-<run>`, no `checkpoint-3`), the old one's weights zeroed so that
 *   resuming it would show; and a kill after them, before the old one was deleted.
 */
import { runIdOf, SAVING_RUN } from "./_util.ts";
import { assert, assertEquals, assertLess } from "./assert.ts";
import { train } from "../src/train/trainer.ts";
import { lastCheckpoint } from "../src/train/checkpoint.ts";
import { join } from "node:path";

const base = SAVING_RUN;
const losses = (dir: string) =>
  Deno.readTextFileSync(join(dir, "metrics.jsonl")).trim().split("\n").map((l) => JSON.parse(l));

/** Overwrites the tensor bytes of a safetensors file with zeros (same size: still "complete"). */
function zeroTensors(path: string): void {
  const bytes = Deno.readFileSync(path);
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  bytes.fill(0, 8 + n);
  Deno.writeFileSync(path, bytes);
}

Deno.test("save recovery: last agrees with the recovery of interrupted saves", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    // The uninterrupted run: 5 steps, a checkpoint after each.
    const ref = join(tmp, "ref");
    await train({ ...base, maxSteps: 5, outputDir: ref }, { log: () => {} });
    const reference = losses(ref);
    const runId = runIdOf(ref);
    const scenarios: Record<string, (out: string) => Promise<void>> = {
      "finished, not renamed": async (out) => {
        await Deno.rename(join(out, "checkpoint-3"), join(out, `checkpoint-3.tmp-${runId}`));
      },
      "killed between the renames": async (out) => {
        const old = join(out, `checkpoint-3.old-${runId}`);
        await Deno.rename(join(out, "checkpoint-3"), join(out, `checkpoint-3.tmp-${runId}`));
        await new Deno.Command("cp", { args: ["-r", join(ref, "checkpoint-3"), old] }).output();
        zeroTensors(join(old, "model.safetensors"));
      },
      "killed before the old one was deleted": async (out) => {
        const old = join(out, `checkpoint-3.old-${runId}`);
        await new Deno.Command("cp", { args: ["-r", join(ref, "checkpoint-3"), old] }).output();
        zeroTensors(join(old, "model.safetensors"));
      },
    };
    for (const [what, damage] of Object.entries(scenarios)) {
      const out = join(tmp, what.replaceAll(" ", "_").replaceAll(",", ""));
      const cp = await new Deno.Command("cp", { args: ["-r", ref, out] }).output();
      assert(cp.success, what);
      for (const n of ["checkpoint-4", "checkpoint-5"]) {
        await Deno.remove(join(out, n), { recursive: true });
      }
      await damage(out);
      const chosen = lastCheckpoint(out, runId);
      assertEquals(chosen.path, join(out, "checkpoint-3"), what);
      assertEquals(chosen.skipped, [], what);
      const lines: string[] = [];
      await train({ ...base, maxSteps: 5, outputDir: out, resumeFromCheckpoint: "last" }, {
        log: (l) => lines.push(l),
      });
      const log = lines.join("\n");
      assert(
        log.includes(`resumed from ${join(out, "checkpoint-3")} at step 3`),
        `${what}\n${log}`,
      );
      assert(!log.includes("skipped"), `${what}\n${log}`);
      const leftovers = [...Deno.readDirSync(out)].map((e) => e.name).filter((n) =>
        n.includes(".")
      );
      assertEquals(leftovers.filter((n) => n.startsWith("checkpoint-")), [], what);
      const after = losses(out);
      assertEquals(after.map((m) => m.step), [1, 2, 3, 4, 5], what);
      for (let s = 0; s < 5; s++) {
        assertLess(Math.abs(after[s].loss - reference[s].loss), 1e-6, `${what} step ${s + 1}`);
      }
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
