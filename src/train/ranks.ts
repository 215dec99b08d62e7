/**
 * What each rank of a (dp x sp) run computes on: its slice of a batch's sequences, and sums of
 * one number over all ranks. Shared by the training loop and evaluation.
 */
import type { Communicator } from "../dist/comm.ts";
import type { Device, DeviceBuffer } from "../runtime/device.ts";
import { zigzagChunks } from "../dist/zigzag.ts";

/** This rank's slice of every row: tokens [spIdx*S, (spIdx+1)*S) and their global positions. */
export function sliceForRank(
  batch: { inputs: Int32Array; labels: Int32Array },
  B: number,
  L: number,
  sp: number,
  spIdx: number,
  layout: "contiguous" | "zigzag",
): { inputs: Int32Array; labels: Int32Array; positions: Int32Array } {
  const S = L / sp;
  // contiguous: tokens [spIdx*S, (spIdx+1)*S); zigzag: chunks spIdx and 2sp-1-spIdx of S/2.
  const pieces: [number, number][] = layout === "zigzag"
    ? zigzagChunks(spIdx, sp).map((c) => [c * (S / 2), S / 2])
    : [[spIdx * S, S]];
  const inputs = new Int32Array(B * S), labels = new Int32Array(B * S);
  const positions = new Int32Array(B * S);
  for (let b = 0; b < B; b++) {
    let at = b * S;
    for (const [start, n] of pieces) {
      inputs.set(batch.inputs.subarray(b * L + start, b * L + start + n), at);
      labels.set(batch.labels.subarray(b * L + start, b * L + start + n), at);
      for (let t = 0; t < n; t++) positions[at + t] = start + t;
      at += n;
    }
  }
  return { inputs, labels, positions };
}

/**
 * Sum of one number over all ranks, through a device scalar (the transports move device memory).
 * fp32 keeps token counts exact up to 2^24 per step, far above any step's size.
 */
export async function allReduceNumber(
  world: Communicator,
  scratch: DeviceBuffer,
  device: Device,
  value: number,
): Promise<number> {
  device.upload(scratch.ptr, new Float32Array([value]));
  await world.allReduceSum(scratch.ptr, 1, "f32");
  return device.download(new Float32Array(1), scratch.ptr)[0];
}
