/**
 * Prints, as JSON, what this process's cuDNN loader finds and what each --attention-kernel choice
 * gives on the backend named by argv[0] (the loader answers once per process, so each environment
 * under test runs its own copy: tests/cudnn_loader.test.ts), and the library's own default setting
 * as a fresh process sees it.
 */
import { Device } from "../../src/runtime/device.ts";
import {
  ATTENTION_KERNELS,
  currentAttentionKernel,
  probeCudnn,
  selectAttentionKernel,
} from "../../src/runtime/attention_kernel.ts";

const device = Device.open(Deno.args[0] === "cuda" ? "cuda" : "cpu");
// What the C library holds before anyone sets it (a caller of the C ABI that sets nothing).
const libraryDefault = currentAttentionKernel(device);
const probe = probeCudnn(device);
const choices: Record<string, { line?: string; error?: string; set?: string }> = {};
for (const choice of ATTENTION_KERNELS) {
  try {
    choices[choice] = { line: selectAttentionKernel(device, choice) };
    choices[choice].set = currentAttentionKernel(device);
  } catch (error) {
    choices[choice] = { error: (error as Error).message };
  }
}
console.log(JSON.stringify({ libraryDefault, probe, choices }));
device.close();
