/**
 * `distflash tokenize`: text data (JSONL/JSON/chat/Parquet, a file or a folder) to a .npy token
 * file, packed exactly as `train` packs it (BOS/EOS between documents), so large corpora are
 * tokenised once instead of at the start of every run. `train --attention-mask document` needs
 * nothing more: the BOS before every document in the .npy is where it finds the documents.
 */
import type { Command } from "npm:commander@^14.0.0";
import { existsSync } from "node:fs";
import { modelTokenizer, openDataset, TokenDataset, type Tokenizer } from "../src/data/mod.ts";
import { writeNpy } from "../src/io/npy.ts";
import { resolveModel } from "../src/model/hf.ts";
import { tokenizingProgress } from "../src/train/progress.ts";

export function registerTokenize(program: Command): void {
  program
    .command("tokenize")
    .description("tokenise text data into a .npy token file that `train --data-path` reads")
    .requiredOption("--model <name>", "preset or Hugging Face folder (its tokenizer.json is used)")
    .requiredOption("--data-path <path>", "JSONL/JSON/Parquet file or folder")
    .requiredOption("--output <file>", "the .npy file to write")
    .option("--text-field <name>", "text field of JSON/Parquet records", "text")
    .action(async (o: { model: string; dataPath: string; output: string; textField: string }) => {
      if (!o.output.endsWith(".npy")) {
        throw new Error(`--output ${o.output}: the file must end in .npy`);
      }
      if (!existsSync(o.dataPath)) {
        throw new Error(`--data-path ${o.dataPath}: no such file or folder`);
      }
      if (o.dataPath.endsWith(".npy")) {
        throw new Error(`--data-path ${o.dataPath} is already tokenised`);
      }
      const source = await resolveModel(o.model);
      const tokenizer: Tokenizer = await modelTokenizer(source.dir);
      const log = (line: string) => console.error(line);
      const dataset = await openDataset({
        dataPath: o.dataPath,
        tokenizer,
        seqLen: 1,
        textField: o.textField,
        onProgress: tokenizingProgress(log),
      });
      if (!(dataset instanceof TokenDataset)) {
        throw new Error(`--data-path ${o.dataPath}: not text data`);
      }
      if (dataset.trained) {
        throw new Error(
          `--data-path ${o.dataPath} holds chat conversations, which train on the assistant's ` +
            "turns only; a .npy token file cannot record which tokens those are, so give the " +
            "chat data to `train --data-path` directly",
        );
      }
      const tokens = dataset.tokens;
      // uint16 halves the file when every id fits (vocabularies up to 65,536 tokens).
      const data = dataset.stats.maxTokenId < 65536 ? Uint16Array.from(tokens) : tokens;
      await writeNpy(o.output, data);
      console.log(
        `${o.output}: ${tokens.length} tokens (${dataset.stats.documents} documents, tokenizer ` +
          `${tokenizer.name}, ${data instanceof Uint16Array ? "uint16" : "int32"})`,
      );
    });
}
