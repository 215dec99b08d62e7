#!/usr/bin/env python3
"""Builds the tokenizer fixtures in tests/fixtures/tokenizer/ with the Hugging Face `tokenizers`
library (Rust), and records the ids it produces for a set of test strings, so the TypeScript
tokenizer wrapper (src/data/tokenizer.ts) can be checked against the reference implementation.

Two tokenizers are trained on examples/corpus/tiny.jsonl:

* tests/fixtures/tokenizer/           Llama-2 style: SentencePiece-like BPE over "▁"-joined words,
                                      byte fallback (<0xNN> tokens), <unk>=0, <s>=1, </s>=2.
                                      256 tokens in all, so it fits a tiny debug model of vocab 256.
                                      Only a few byte tokens fit in that budget: the bytes of tab,
                                      newline, carriage return and of a handful of non-ASCII
                                      characters; any other non-ASCII character becomes <unk>.
* tests/fixtures/tokenizer/bytelevel/ Llama-3 style: GPT-2 byte-level BPE behind the Llama-3 split
                                      regex; 256 byte symbols + merges = 300 tokens, then the
                                      special tokens <|begin_of_text|>=300 and <|end_of_text|>=301.

Usage (from the repository root):
    python3 -m venv /tmp/tokvenv && /tmp/tokvenv/bin/pip install tokenizers
    /tmp/tokvenv/bin/python tests/reference/make_tokenizer_fixture.py
"""

import json
import os
import string

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "examples", "corpus", "tiny.jsonl")
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")

# Strings whose ids are recorded: plain corpus-like text, spacing edge cases, digits, byte
# fallback (é ü € — ’ 😀 have byte tokens; 中 and ß do not and become <unk>), and a special
# token written inside the text.
TEST_STRINGS = [
    "Hello world",
    "On Monday, the day was sunny. Anna went to the park with a red ball.",
    "The cat meows. The cat lives in a house.",
    " leading space",
    "two  spaces and trailing space ",
    "line one\nline two\n\nline four\ttabbed\r\n",
    "4 + 2 = 6. 8 - 5 = 3. 1234567890",
    "Café über 5€ — it’s 😀 fine",
    "中文 straße",
    "",
    " ",
    "a",
    "Zebra QUIZ xylophone jumps!? {braces} [brackets] <angle> ~`^|\\",
    "Anna said, \"I like your green bike.\" </s> then <s> more",
    "<|end_of_text|> after a special token",
    "The days of the week are Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday.",
    "don't won't I'm we'll they've she'd it's",
]


def corpus_texts():
    with open(CORPUS, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)["text"]


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def record(tok, path):
    cases = []
    for s in TEST_STRINGS:
        enc = tok.encode(s, add_special_tokens=False)
        with_special = tok.encode(s, add_special_tokens=True)
        cases.append({
            "text": s,
            "ids": enc.ids,
            "tokens": enc.tokens,
            "ids_with_special_tokens": with_special.ids,
            "decoded": tok.decode(enc.ids, skip_special_tokens=False),
        })
    write_json(path, {
        "generator": "tests/reference/make_tokenizer_fixture.py",
        "vocab_size_with_added_tokens": tok.get_vocab_size(with_added_tokens=True),
        "cases": cases,
    })


def llama2_style():
    # Llama-2's published byte tokens are <0x00>..<0xFF>; we keep the ones the test strings need.
    byte_chars = "\t\n\ré\u00fc€—’😀"
    byte_values = sorted({b for ch in byte_chars for b in ch.encode("utf-8")})
    byte_tokens = ["<0x%02X>" % b for b in byte_values]
    specials = ["<unk>", "<s>", "</s>"]
    alphabet = [c for c in string.printable if c not in string.whitespace] + ["▁"]

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Train with a Metaspace split so merges never cross a word boundary (as SentencePiece does),
    # then save the Llama-2 layout: no pre-tokenizer, a Prepend + Replace normalizer.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = BpeTrainer(
        vocab_size=256,
        special_tokens=specials + byte_tokens,
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_texts(), trainer=trainer)

    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] in specials]
    for t in spec["added_tokens"]:
        t["normalized"] = False
    spec["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ],
    }
    spec["pre_tokenizer"] = None
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    assert tok.token_to_id("<unk>") == 0 and tok.token_to_id("<s>") == 1
    assert tok.token_to_id("</s>") == 2
    assert tok.get_vocab_size(with_added_tokens=True) == 256

    os.makedirs(OUT, exist_ok=True)
    tok.save(os.path.join(OUT, "tokenizer.json"), pretty=True)
    write_json(os.path.join(OUT, "tokenizer_config.json"), {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False,
                      "normalized": False, "rstrip": False, "single_word": False},
        "eos_token": {"__type": "AddedToken", "content": "</s>", "lstrip": False,
                      "normalized": False, "rstrip": False, "single_word": False},
        "unk_token": {"__type": "AddedToken", "content": "<unk>", "lstrip": False,
                      "normalized": False, "rstrip": False, "single_word": False},
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": 4096,
        "tokenizer_class": "LlamaTokenizer",
    })
    write_json(os.path.join(OUT, "config.json"), {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 172,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    })
    record(tok, os.path.join(OUT, "expected.json"))


LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def llama3_style():
    out = os.path.join(OUT, "bytelevel")
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=_regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_texts(), trainer=trainer)
    assert tok.get_vocab_size() == 300
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    assert tok.token_to_id("<|begin_of_text|>") == 300
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", 300)],
    )
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"), pretty=True)
    write_json(os.path.join(out, "tokenizer_config.json"), {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "clean_up_tokenization_spaces": True,
        "model_max_length": 8192,
        "tokenizer_class": "PreTrainedTokenizerFast",
    })
    # Llama-3 instruct models list several end ids; the first is the document separator.
    write_json(os.path.join(out, "config.json"), {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 302,
        "bos_token_id": 300,
        "eos_token_id": [301, 300],
    })
    record(tok, os.path.join(out, "expected.json"))


def _regex(pattern):
    from tokenizers import Regex
    return Regex(pattern)


if __name__ == "__main__":
    llama2_style()
    llama3_style()
    print("wrote", OUT)
