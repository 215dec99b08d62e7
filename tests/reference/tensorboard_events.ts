/**
 * The scalars of the TensorBoard fixture, and (run directly) a writer of the fixture's event file
 * with src/train/tensorboard.ts. read_tensorboard_events.py then decodes that file with
 * TensorBoard's own reader into expected.json; tests/tensorboard.test.ts checks both.
 *
 *   deno run -A tests/reference/tensorboard_events.ts
 *   <python with tensorboard> tests/reference/read_tensorboard_events.py
 */
import { fileVersionEvent, scalarEvent, tfRecord } from "../../src/train/tensorboard.ts";

/** Wall time of the first event (seconds); each later step is one second later. */
export const WALL_TIME = 1_700_000_000.25;

/** Scalars by step, with values that float32 holds exactly or not (TensorBoard stores float32). */
export const STEPS: Record<string, number>[] = [
  { "train/loss": 5.5, "train/learning_rate": 0, "train/grad_norm": 1.25 },
  { "train/loss": 4.125, "train/learning_rate": 2e-5, "train/grad_norm": 0.1 },
  {
    "train/loss": 3.0,
    "train/learning_rate": 1e-5,
    "eval/loss": 3.25,
    "train/tokens_per_s": 123456,
  },
];

/** The event file's bytes: the version event, then one event per step (steps 1, 2, 3). */
export function fixtureBytes(): Uint8Array {
  const records = [tfRecord(fileVersionEvent(WALL_TIME))];
  STEPS.forEach((s, i) => records.push(tfRecord(scalarEvent(WALL_TIME + i + 1, i + 1, s))));
  const out = new Uint8Array(records.reduce((a, r) => a + r.length, 0));
  let at = 0;
  for (const r of records) (out.set(r, at), at += r.length);
  return out;
}

if (import.meta.main) {
  const path = new URL("../fixtures/tensorboard/events.out.tfevents.fixture", import.meta.url);
  await Deno.writeFile(path, fixtureBytes());
}
