/**
 * Every model family distflash trains, registered under its Hugging Face model_type (llama
 * first). Adding a family that only combines the shared options is one folder and one line here.
 *
 * @module
 */
import { registerFamily } from "./registry.ts";
import { LLAMA } from "./llama/family.ts";
import { QWEN2 } from "./qwen2/family.ts";
import { QWEN3 } from "./qwen3/family.ts";
import { MISTRAL } from "./mistral/family.ts";

registerFamily(LLAMA);
registerFamily(QWEN2);
registerFamily(QWEN3);
registerFamily(MISTRAL);

export {
  families,
  familyForJson,
  familyOf,
  type HfJson,
  type ModelFamily,
  supportedFamilies,
} from "./registry.ts";
