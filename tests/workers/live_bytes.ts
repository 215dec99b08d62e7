/**
 * Prints the bytes the CPU device holds once a debug-small model (batch 1, 128 tokens, fp32) is
 * allocated: the library's own count of live allocations, in a process of its own (test files run
 * in parallel threads of one process share the library, and its count).
 */
import { presetConfig } from "../../src/model/presets.ts";
import { DecoderModel } from "../../src/model/decoder.ts";
import { Device } from "../../src/runtime/device.ts";
import { DType } from "../../src/runtime/ops.ts";

const device = Device.open("cpu");
const before = device.liveAllocations().bytes;
const model = new DecoderModel(device, presetConfig("debug-small"), {
  dtype: DType.f32,
  batch: 1,
  seqLen: 128,
});
model.allocate();
console.log(JSON.stringify({ bytes: device.liveAllocations().bytes - before }));
model.free();
device.close();
