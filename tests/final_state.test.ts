// trainer_state.json beside the final model (as HF's run_clm writes with trainer.save_state()):
// HF's TrainerState fields for the finished run, the same as the last checkpoint's.

import { assertEquals } from "./assert.ts";
import { join } from "node:path";
import { train } from "../src/train/trainer.ts";

const GQA = new URL("./fixtures/gqa", import.meta.url).pathname;

Deno.test("final state: trainer_state.json in the output folder describes the finished run", async () => {
  const out = await Deno.makeTempDir();
  try {
    await train({
      model: GQA,
      synthetic: true,
      modelMaxLength: 16,
      maxSteps: 3,
      loggingSteps: 2,
      saveSteps: 3,
      perDeviceTrainBatchSize: 2,
      device: "cpu",
      outputDir: out,
    }, { log: () => {} });
    const read = async (dir: string) =>
      JSON.parse(await Deno.readTextFile(join(dir, "trainer_state.json")));
    const state = await read(out);
    assertEquals(state.global_step, 3);
    assertEquals(state.max_steps, 3);
    assertEquals(state.train_batch_size, 2);
    assertEquals(state.logging_steps, 2);
    // Logged: the first step, every 2nd, and the last.
    assertEquals(state.log_history.map((e: { step: number }) => e.step), [1, 2, 3]);
    assertEquals(state.num_input_tokens_seen, 3 * 2 * 16);
    assertEquals(state, await read(join(out, "checkpoint-3")));
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});
