/**
 * distflash: long-context Llama training with DistFlashAttention, as a Deno library.
 *
 * @example Train a debug-size Llama on a text file, as `distflash train` does
 * ```ts
 * import { train } from "./mod.ts";
 * const result = await train({
 *   model: "debug-small",
 *   dataPath: "examples/corpus/tiny.jsonl",
 *   outputDir: "outputs/example",
 *   maxSteps: 20,
 *   perDeviceTrainBatchSize: 4,
 *   modelMaxLength: 128,
 *   learningRate: 2e-3,
 * });
 * console.log(result.finalLoss);
 * ```
 *
 * @example Inspect the installation
 * ```ts
 * import { formatInfo, gatherInfo } from "./mod.ts";
 * console.log(formatInfo(gatherInfo()));
 * ```
 *
 * @example Run an op on the CPU backend
 * ```ts
 * import { axpyF32, Device } from "./mod.ts";
 * const device = Device.open("cpu");
 * const x = device.alloc(16), y = device.alloc(16);
 * device.upload(x.ptr, new Float32Array([1, 2, 3, 4]));
 * device.upload(y.ptr, new Float32Array([1, 1, 1, 1]));
 * axpyF32(device, y.ptr, x.ptr, 2, 4); // y = 2x + y
 * console.log(device.download(new Float32Array(4), y.ptr)); // [3, 5, 7, 9]
 * x.free();
 * y.free();
 * ```
 * @module
 */
export {
  type StepMetrics,
  train,
  type TrainHooks,
  TrainingInterrupted,
  type TrainResult,
} from "./src/train/trainer.ts";
export { type EvalMetrics } from "./src/train/eval.ts";
export {
  type DeviceChoice,
  type EvalStrategy,
  type LrSchedulerType,
  type SaveDtype,
  type SaveStrategy,
  TRAIN_DEFAULTS,
  type TrainOptions,
} from "./src/train/options.ts";
export { OptionError } from "./src/train/resolve_options.ts";
export { type ModelConfig, paramCount, type RopeScaling } from "./src/model/config.ts";
import type { ModelConfig } from "./src/model/config.ts";
/**
 * The model config under its name before other families joined (Qwen2, Qwen3, Mistral).
 * @deprecated Use {@link ModelConfig}.
 */
export type LlamaConfig = ModelConfig;
export {
  type HfConfigOptions,
  parseHfConfig,
  readHfConfig,
  toHfConfig,
} from "./src/model/hf_config.ts";
export { presetConfig, PRESETS } from "./src/model/presets.ts";
export {
  type BackendName,
  Device,
  DeviceBuffer,
  type DeviceProps,
  type DevicePtr,
  type Event,
  type Stream,
} from "./src/runtime/device.ts";
export { axpyF32, castBf16ToF32, castF32ToBf16 } from "./src/runtime/ops_basic.ts";
export {
  type BackendInfo,
  formatInfo,
  gatherInfo,
  type Info,
  openBackend,
  VERSION,
} from "./src/runtime/info.ts";
export {
  ATTENTION_KERNELS,
  type AttentionKernel,
  type CudnnProbe,
  probeCudnn,
  selectAttentionKernel,
} from "./src/runtime/attention_kernel.ts";
export { DistflashError } from "./ffi/unwrap.ts";
export { LibraryNotFoundError } from "./ffi/loader.ts";
