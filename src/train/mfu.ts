/**
 * Model-FLOPs utilisation: the FLOPs a training step needs by the project's convention (DESIGN:
 * 6 N per token for the dense parts, plus causal attention: forward 2*B*H*S^2*D per layer,
 * backward 2.5x the forward) over what the devices could do at their dense bf16 peak. The one
 * owner of that count and of the peak table, for `train` (metrics.jsonl `mfu`) and `bench train`.
 */
import { type ModelConfig, paramCount } from "../model/config.ts";

/**
 * Dense (not 2:4 sparse) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's data sheets, matched
 * against the CUDA device name in order (first match wins, so the specific names come first).
 */
const BF16_PEAK_TFLOPS: readonly [RegExp, number][] = [
  [/\bGH200\b/i, 989],
  [/\bH200\b/i, 989],
  [/\bH100\b.*\bPCIe\b/i, 756],
  [/\bH100\b.*\bNVL\b/i, 835],
  [/\bH100\b/i, 989], // SXM ("NVIDIA H100 80GB HBM3")
  [/\bH800\b.*\bPCIe\b/i, 756],
  [/\bH800\b/i, 989],
  [/\bB200\b/i, 2250],
  [/\bA100\b/i, 312],
  [/\bA800\b/i, 312],
  [/\bL40S\b/i, 362],
];

/** The dense bf16 peak of a GPU by its CUDA name, TFLOP/s; null when the name is not known. */
export function bf16PeakTflops(deviceName: string): number | null {
  for (const [pattern, peak] of BF16_PEAK_TFLOPS) if (pattern.test(deviceName)) return peak;
  return null;
}

/**
 * The peak a run's MFU is measured against: `given` (--peak-tflops), else the CUDA device's by its
 * name; null (no MFU) on the CPU backend or an unknown GPU.
 */
export function runPeakTflops(
  given: number | undefined,
  backend: string,
  deviceName: string,
): number | null {
  if (given !== undefined) return given;
  return backend === "cuda" ? bf16PeakTflops(deviceName) : null;
}

/**
 * Training FLOPs per token of sequences of `seqLen` tokens: 6 N (forward 2 N, backward 4 N) plus
 * causal attention, whose forward is 2*H*S^2*D per layer and sequence, i.e. 2*H*S*D per token,
 * and forward+backward 3.5 times that. Counted for the causal mask whatever the attention mask
 * (the model's FLOPs, as MFU defines them).
 */
export function trainingFlopsPerToken(cfg: ModelConfig, seqLen: number): number {
  const attention = 3.5 * 2 * cfg.numHeads * seqLen * cfg.headDim * cfg.numLayers;
  return 6 * paramCount(cfg) + attention;
}

/**
 * The share of `devices` devices' peak that `tokensPerS` training tokens a second (all devices
 * together) amount to.
 */
export function modelFlopsUtilisation(
  flopsPerToken: number,
  tokensPerS: number,
  devices: number,
  peakTflops: number,
): number {
  return (flopsPerToken * tokensPerS) / (devices * peakTflops * 1e12);
}
