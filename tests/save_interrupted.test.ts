/**
 * Every kind of interrupted save, built by hand in an output folder (no training): a temporary
 * folder without complete.json, one whose files do not match their record, a complete temporary
 * folder, the old copy of a replaced checkpoint, a pruned checkpoint's `.deleting-` folder, and
 * other runs' leftovers under the same names. For every combination (a fast-check property over
 * 1 to 4 steps) the test works out on its own what recovery must leave and which checkpoint
 * `--resume-from-checkpoint last` must take, and checks `lastCheckpoint` (chosen before rank 0
 * recovers), `recoverInterruptedSaves` and a scan after it against that.
 *
 * The rules, from the module documentation of src/train/checkpoint.ts: recovery renames a
 * complete `.tmp-` folder of this run into a free final name, else an `.old-` folder into a free
 * final name; it deletes this run's other `.tmp-` and `.deleting-` folders and an `.old-` folder
 * whose final name holds a complete checkpoint; it never touches another run's folders. `last`
 * is the newest complete checkpoint of this run as recovery will leave the folder.
 */
import fc from "fast-check";
import { assert, assertEquals, assertThrows } from "./assert.ts";
import {
  CheckpointError,
  lastCheckpoint,
  pruneCheckpoints,
  recoverInterruptedSaves,
  scanCheckpoints,
} from "../src/train/checkpoint.ts";
import { join } from "node:path";

const RUN = "run-ours";
const OTHER = "run-other";

/** How a folder of one kind is built. */
type Fill = "complete" | "no-record" | "short-file" | "other-run";

/**
 * A checkpoint-like folder at `path` for `step`, its origin written into origin.txt (listed in
 * complete.json like every file, so a complete folder's origin can be read back after renames).
 */
function makeFolder(path: string, step: number, fill: Fill, origin: string): void {
  Deno.mkdirSync(path);
  const files: Record<string, string> = {
    "origin.txt": origin,
    "model.safetensors": "weights of " + origin,
    "trainer_state.json": JSON.stringify({
      global_step: step,
      epoch: 1,
      seed: 0,
      model: "m",
      log_history: [],
    }),
  };
  const sizes: Record<string, number> = {};
  for (const [name, text] of Object.entries(files)) {
    Deno.writeTextFileSync(join(path, name), text);
    sizes[name] = new TextEncoder().encode(text).length;
  }
  if (fill === "no-record") return;
  if (fill === "short-file") sizes["model.safetensors"] += 1; // a file cut short after its record
  const record = {
    format: 1,
    run_id: fill === "other-run" ? OTHER : RUN,
    step,
    world_size: 1,
    files: sizes,
  };
  Deno.writeTextFileSync(join(path, "complete.json"), JSON.stringify(record));
}

/** What one step's names hold before recovery. */
interface StepCase {
  final: "none" | "complete" | "no-record" | "short-file" | "other-run";
  tmp: "none" | "complete" | "no-record" | "short-file";
  old: "none" | "complete" | "short-file";
  deleting: boolean;
  /** Another run's `.tmp-`, `.old-` and `.deleting-` folders of the same step. */
  foreign: boolean;
}

const stepCase: fc.Arbitrary<StepCase> = fc.record({
  final: fc.constantFrom("none", "complete", "no-record", "short-file", "other-run"),
  tmp: fc.constantFrom("none", "complete", "no-record", "short-file"),
  old: fc.constantFrom("none", "complete", "short-file"),
  deleting: fc.boolean(),
  foreign: fc.boolean(),
});

function build(out: string, cases: StepCase[]): void {
  cases.forEach((c, i) => {
    const step = i + 1, final = join(out, `checkpoint-${step}`);
    if (c.final !== "none") makeFolder(final, step, c.final, `final-${step}`);
    if (c.tmp !== "none") makeFolder(`${final}.tmp-${RUN}`, step, c.tmp, `tmp-${step}`);
    if (c.old !== "none") makeFolder(`${final}.old-${RUN}`, step, c.old, `old-${step}`);
    if (c.deleting) makeFolder(`${final}.deleting-${RUN}`, step, "complete", `deleting-${step}`);
    if (c.foreign) {
      for (const tag of ["tmp", "old", "deleting"]) {
        makeFolder(`${final}.${tag}-${OTHER}`, step, "other-run", `foreign-${tag}-${step}`);
      }
    }
  });
}

/** Whether a folder built with `fill` is a complete checkpoint (any run's). */
const completeFill = (fill: string) => fill === "complete" || fill === "other-run";

/**
 * The folder as recovery must leave it (name -> origin) and the origin of the checkpoint `last`
 * must take (null: none), worked out from the rules alone.
 */
function expected(cases: StepCase[]): { names: Map<string, string>; last: number | null } {
  const names = new Map<string, string>();
  let last: number | null = null;
  cases.forEach((c, i) => {
    const step = i + 1, final = `checkpoint-${step}`;
    let finalFill: string = c.final, origin = `final-${step}`;
    if (c.final === "none" && c.tmp === "complete") {
      finalFill = "complete";
      origin = `tmp-${step}`;
    } else if (c.final === "none" && c.old !== "none") {
      finalFill = c.old;
      origin = `old-${step}`;
    }
    if (finalFill !== "none") names.set(final, origin);
    // An old copy stays only when it was not moved and its final name holds no complete folder.
    const oldMoved = origin === `old-${step}`;
    if (c.old !== "none" && !oldMoved && !completeFill(finalFill)) {
      names.set(`${final}.old-${RUN}`, `old-${step}`);
    }
    if (c.foreign) {
      for (const tag of ["tmp", "old", "deleting"]) {
        names.set(`${final}.${tag}-${OTHER}`, `foreign-${tag}-${step}`);
      }
    }
    if (finalFill === "complete") last = step;
  });
  return { names, last };
}

function listing(out: string): Map<string, string> {
  const names = new Map<string, string>();
  for (const e of Deno.readDirSync(out)) {
    names.set(e.name, Deno.readTextFileSync(join(out, e.name, "origin.txt")));
  }
  return names;
}

const sorted = (m: Map<string, string>) => [...m.entries()].sort();

Deno.test("interrupted saves: recovery and last agree with the rules for every combination of leftovers", async () => {
  const root = await Deno.makeTempDir();
  let n = 0;
  try {
    await fc.assert(
      fc.asyncProperty(fc.array(stepCase, { minLength: 1, maxLength: 4 }), async (cases) => {
        const out = join(root, `case-${n++}`);
        Deno.mkdirSync(out);
        build(out, cases);
        const want = expected(cases);
        // `last`, chosen before recovery, on the folder as recovery will leave it.
        if (want.last === null) {
          assertThrows(() => lastCheckpoint(out, RUN), CheckpointError);
        } else {
          const chosen = lastCheckpoint(out, RUN);
          assertEquals(chosen.path, join(out, `checkpoint-${want.last}`));
          const origin = Deno.readTextFileSync(join(chosen.source, "origin.txt"));
          assertEquals(origin, want.names.get(`checkpoint-${want.last}`));
        }
        await recoverInterruptedSaves(out, RUN);
        assertEquals(sorted(listing(out)), sorted(want.names), JSON.stringify(cases));
        // After recovery, the newest usable checkpoint is the one `last` took, at its place.
        const usable = scanCheckpoints(out, RUN).filter((e) => e.usable);
        assertEquals(usable[0]?.step ?? null, want.last, JSON.stringify(cases));
        if (want.last !== null) {
          assertEquals(lastCheckpoint(out, RUN).source, join(out, `checkpoint-${want.last}`));
        }
        // A second recovery finds nothing left to do.
        assertEquals(await recoverInterruptedSaves(out, RUN), []);
        await Deno.remove(out, { recursive: true });
      }),
      { numRuns: 150, seed: 26 },
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("interrupted saves: each kind alone, what recovery says and does", async () => {
  const root = await Deno.makeTempDir();
  const kinds: [string, StepCase, string[], string[]][] = [
    // [what, the step's case, what recovery says (one pattern a line), names left]
    [
      "incomplete temporary (no complete.json)",
      {
        final: "none",
        tmp: "no-record",
        old: "none",
        deleting: false,
        foreign: false,
      },
      ["an unfinished save, deleted"],
      [],
    ],
    [
      "incomplete temporary (a file shorter than its record)",
      {
        final: "none",
        tmp: "short-file",
        old: "none",
        deleting: false,
        foreign: false,
      },
      ["an unfinished save, deleted"],
      [],
    ],
    [
      "complete temporary",
      {
        final: "none",
        tmp: "complete",
        old: "none",
        deleting: false,
        foreign: false,
      },
      ["a finished save, renamed to checkpoint-1"],
      ["checkpoint-1"],
    ],
    [
      "complete temporary beside the old copy",
      {
        final: "none",
        tmp: "complete",
        old: "complete",
        deleting: false,
        foreign: false,
      },
      ["a finished save, renamed to checkpoint-1", "replaced by a complete checkpoint-1, deleted"],
      [
        "checkpoint-1",
      ],
    ],
    [
      "old copy alone",
      {
        final: "none",
        tmp: "none",
        old: "complete",
        deleting: false,
        foreign: false,
      },
      ["its replacement never arrived, renamed back to checkpoint-1"],
      ["checkpoint-1"],
    ],
    [
      "old copy beside an incomplete temporary",
      {
        final: "none",
        tmp: "no-record",
        old: "complete",
        deleting: false,
        foreign: false,
      },
      ["its replacement never arrived, renamed back", "an unfinished save, deleted"],
      [
        "checkpoint-1",
      ],
    ],
    [
      "old copy beside its complete replacement",
      {
        final: "complete",
        tmp: "none",
        old: "complete",
        deleting: false,
        foreign: false,
      },
      ["replaced by a complete checkpoint-1, deleted"],
      ["checkpoint-1"],
    ],
    [
      "deleting",
      {
        final: "none",
        tmp: "none",
        old: "none",
        deleting: true,
        foreign: false,
      },
      ["a pruned checkpoint whose deletion was cut short, deleted"],
      [],
    ],
    [
      "another run's leftovers",
      {
        final: "none",
        tmp: "none",
        old: "none",
        deleting: false,
        foreign: true,
      },
      [],
      [
        `checkpoint-1.deleting-${OTHER}`,
        `checkpoint-1.old-${OTHER}`,
        `checkpoint-1.tmp-${OTHER}`,
      ],
    ],
  ];
  try {
    for (const [what, c, says, left] of kinds) {
      const out = join(root, what.replaceAll(/[^a-z]+/g, "_"));
      Deno.mkdirSync(out);
      build(out, [c]);
      const done = await recoverInterruptedSaves(out, RUN);
      assertEquals(done.length, says.length, `${what}: ${done.join("; ")}`);
      for (const s of says) assert(done.some((d) => d.includes(s)), `${what}: ${done.join("; ")}`);
      assertEquals([...Deno.readDirSync(out)].map((e) => e.name).sort(), left, what);
      if (left.includes("checkpoint-1")) {
        assertEquals(lastCheckpoint(out, RUN).path, join(out, "checkpoint-1"), what);
      } else {
        assertThrows(() => lastCheckpoint(out, RUN), CheckpointError);
      }
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("interrupted saves: pruning keeps exactly the newest `keep` complete checkpoints of this run", async () => {
  const root = await Deno.makeTempDir();
  try {
    for (const keep of [1, 2, 3, 5]) {
      const out = join(root, `keep-${keep}`);
      Deno.mkdirSync(out);
      for (const step of [1, 2, 3, 4]) {
        makeFolder(join(out, `checkpoint-${step}`), step, "complete", `final-${step}`);
      }
      makeFolder(join(out, "checkpoint-5"), 5, "other-run", "foreign"); // never this run's to prune
      makeFolder(join(out, "checkpoint-6"), 6, "no-record", "unfinished"); // not a checkpoint
      const deleted = await pruneCheckpoints(out, RUN, keep);
      const doomed = [1, 2, 3, 4].slice(0, Math.max(0, 4 - keep)).map((s) => `checkpoint-${s}`);
      assertEquals([...deleted].sort(), doomed, `keep ${keep}`);
      const left = [...Deno.readDirSync(out)].map((e) => e.name).sort();
      const kept = [1, 2, 3, 4, 5, 6].map((s) => `checkpoint-${s}`).filter((n) =>
        !doomed.includes(n)
      );
      assertEquals(left, kept, `keep ${keep}`);
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
