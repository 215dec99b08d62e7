/**
 * The training-data pipeline: tokenizers, document readers, sequence packing and datasets.
 *
 * @module
 */

export {
  BYTE_TOKENIZER_VOCAB,
  ByteTokenizer,
  checkModelTokenizer,
  HfTokenizer,
  loadTokenizer,
  modelTokenizer,
  type Tokenizer,
} from "./tokenizer.ts";
export {
  ASSISTANT_ROLE,
  type ChatTurn,
  conversationEndTrained,
  conversationText,
  conversationTokens,
} from "./chat.ts";
export {
  CHAT_FIELDS,
  type DataDocument,
  DataError,
  DEFAULT_TEXT_FIELD,
  parseConversation,
  type ProgressCallback,
  readJson,
  readJsonl,
  readLines,
  type ReadOptions,
  readParquet,
  recordDocument,
  recordText,
  renderConversation,
  TEXT_READERS,
} from "./readers.ts";
export {
  checkSeqLen,
  packDocuments,
  type PackedTokens,
  type PackingTokens,
  SequencePacker,
  TokenBuffer,
  windowCount,
} from "./packing.ts";
export {
  Dataset,
  type DatasetStats,
  IGNORED_LABEL,
  type IndexOptions,
  listDataFiles,
  openDataset,
  type OpenDatasetOptions,
  shardIndices,
  SUPPORTED_EXTENSIONS,
  SyntheticDataset,
  TokenDataset,
  type TrainingBatch,
  type TrainingWindow,
} from "./dataset.ts";
export { hashInts, mix32, permutation, Rng } from "./random.ts";
