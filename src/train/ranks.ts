/**
 * Sums of one number over all ranks (token counts, losses, the stop decision), shared by the
 * training loop and evaluation. How a batch is sliced for a rank is the ParallelLayout's
 * (src/parallel/layout.ts).
 */
import type { Communicator } from "../comm/comm.ts";
import type { Device, DeviceBuffer } from "../runtime/device.ts";

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
