// TensorBoard after a resume: a run dies after a checkpoint, having logged steps past it; the
// resumed run repeats those steps. Every event file in <output-dir>/runs, decoded by a reader
// written here (TFRecord framing and protobuf fields, independent of src/train/tensorboard.ts),
// must hold each step 1..final exactly once per tag, with the values of a straight run.

import { assert, assertEquals } from "./assert.ts";
import { join } from "node:path";
import { train } from "../src/train/trainer.ts";

const quiet = { log: () => {} };

/** Reads a protobuf varint at `at`. */
function varint(b: Uint8Array, at: number): [bigint, number] {
  let v = 0n, shift = 0n;
  for (;;) {
    const x = b[at++];
    v |= BigInt(x & 0x7f) << shift;
    if (x < 0x80) return [v, at];
    shift += 7n;
  }
}

/** The fields of a message: [field number, wire type, bytes (length-delimited) or number]. */
function fields(b: Uint8Array): [number, number, Uint8Array | number][] {
  const out: [number, number, Uint8Array | number][] = [];
  for (let at = 0; at < b.length;) {
    const [key, next] = varint(b, at);
    at = next;
    const field = Number(key >> 3n), wire = Number(key & 7n);
    if (wire === 0) {
      const [v, n] = varint(b, at);
      out.push([field, wire, Number(v)]);
      at = n;
    } else if (wire === 1) {
      out.push([field, wire, new DataView(b.buffer, b.byteOffset + at, 8).getFloat64(0, true)]);
      at += 8;
    } else if (wire === 5) {
      out.push([field, wire, new DataView(b.buffer, b.byteOffset + at, 4).getFloat32(0, true)]);
      at += 4;
    } else if (wire === 2) {
      const [n, start] = varint(b, at);
      out.push([field, wire, b.subarray(start, start + Number(n))]);
      at = start + Number(n);
    } else throw new Error(`wire type ${wire}`);
  }
  return out;
}

/** Every (tag, step, value) of the scalar events in every event file of `dir`. */
async function scalars(dir: string): Promise<[string, number, number][]> {
  const out: [string, number, number][] = [];
  const names = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.includes("tfevents"))
    .sort();
  for (const name of names) {
    const bytes = await Deno.readFile(join(dir, name));
    const view = new DataView(bytes.buffer);
    let at = 0;
    // A record cut short ends the file, as for TensorBoard's reader.
    while (at + 12 <= bytes.length) {
      const n = Number(view.getBigUint64(at, true));
      if (at + 16 + n > bytes.length) break;
      const event = fields(bytes.subarray(at + 12, at + 12 + n));
      at += 16 + n;
      const step = (event.find(([f]) => f === 2)?.[2] as number | undefined) ?? 0;
      const summary = event.find(([f]) => f === 5)?.[2] as Uint8Array | undefined;
      if (!summary) continue;
      for (const [, , value] of fields(summary)) {
        const v = fields(value as Uint8Array);
        const tag = new TextDecoder().decode(v.find(([f]) => f === 1)![2] as Uint8Array);
        out.push([tag, step, v.find(([f]) => f === 2)![2] as number]);
      }
    }
  }
  return out;
}

Deno.test("resume: TensorBoard shows each step once, the resumed run's, after a run died past its checkpoint", async () => {
  const base = {
    model: "debug-tiny",
    synthetic: true,
    modelMaxLength: 16,
    perDeviceTrainBatchSize: 2,
    maxSteps: 8,
    learningRate: 1e-2,
    lrSchedulerType: "cosine",
    warmupSteps: 1,
    loggingSteps: 1,
    saveSteps: 3,
    device: "cpu",
    reportTo: "tensorboard",
  };
  const straight = await Deno.makeTempDir(), out = await Deno.makeTempDir();
  try {
    await train({ ...base, outputDir: straight }, quiet);
    // The dead run: saves checkpoint-3, logs steps 4 and 5, and dies at step 5.
    const crash = new Error("killed");
    let error: unknown;
    try {
      await train({ ...base, outputDir: out }, {
        ...quiet,
        onLog: (m) => {
          if (m.step === 5) throw crash;
        },
      });
    } catch (e) {
      error = e;
    }
    assertEquals(error, crash);
    const dead = await scalars(join(out, "runs"));
    assertEquals(dead.filter(([t]) => t === "train/loss").map(([, s]) => s), [1, 2, 3, 4, 5]);
    // A kill can also leave half a record at the end of the file.
    const [file] = [...Deno.readDirSync(join(out, "runs"))].map((e) => join(out, "runs", e.name));
    await Deno.writeFile(file, new Uint8Array([40, 0, 0, 0, 0, 0, 0, 0, 1, 2]), { append: true });

    const lines: string[] = [];
    await train({ ...base, outputDir: out, resumeFromCheckpoint: "last" }, {
      log: (l) => lines.push(l),
    });

    const got = await scalars(join(out, "runs"));
    const want = await scalars(join(straight, "runs"));
    for (const tag of ["train/loss", "train/learning_rate", "train/grad_norm", "train/epoch"]) {
      const steps = got.filter(([t]) => t === tag).map(([, s]) => s).sort((a, b) => a - b);
      assertEquals(steps, [1, 2, 3, 4, 5, 6, 7, 8], `${tag}: each step once`);
      for (const [, step, value] of want.filter(([t]) => t === tag)) {
        const mine = got.find(([t, s]) => t === tag && s === step)![2];
        // In-process runs are deterministic: the resumed values are the straight run's.
        assertEquals(mine, value, `${tag} at step ${step}`);
      }
    }
    assert(lines.some((l) => l.includes("events after step 3 removed")), lines.join("\n"));
  } finally {
    await Deno.remove(straight, { recursive: true });
    await Deno.remove(out, { recursive: true });
  }
});
