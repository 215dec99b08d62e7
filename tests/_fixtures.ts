/** The transformers fixtures (tests/fixtures/<variant>/, tests/reference/make_*fixtures.py). */
import { fileURLToPath } from "node:url";
import { openSafetensors } from "../src/io/safetensors.ts";

/** The fixtures folder, with a trailing slash. */
export const fixtures = fileURLToPath(new URL("./fixtures/", import.meta.url));

/**
 * A fixture's reference.safetensors: its batch (ids, labels aligned, -100 ignored), transformers'
 * logits and loss, and every parameter's gradient by HF name.
 */
export async function reference(variant: string) {
  const ref = await openSafetensors(`${fixtures}${variant}/reference.safetensors`);
  const ids = Int32Array.from(await ref.readFloat32("input_ids"));
  const labels = Int32Array.from(await ref.readFloat32("labels"));
  const logits = await ref.readFloat32("logits");
  const loss = (await ref.readFloat32("loss"))[0];
  const grads = new Map<string, Float32Array>();
  for (const name of ref.names()) {
    if (name.startsWith("grad.")) grads.set(name.slice(5), await ref.readFloat32(name));
  }
  ref.close();
  return { ids, labels, logits, loss, grads };
}
