#!/usr/bin/env python3
"""Writes the small Parquet files in tests/fixtures/data/ that tests/data.test.ts reads through
hyparquet, laid out as Hugging Face `datasets` writes them (a `text` column, or a chat
`conversations` column of [{from, value}] structs), with the codecs those files use.

* text_snappy.parquet   columns id:int64, text:string; snappy; row groups of 4 rows (10 rows)
* text_zstd.parquet     the same rows, zstd, one row group, plus a null text in row 10
* chat.parquet          column conversations: list<struct<from:string, value:string>>; 3 rows

Usage (from the repository root):
    python3 -m venv /tmp/tokvenv && /tmp/tokvenv/bin/pip install pyarrow
    /tmp/tokvenv/bin/python tests/reference/make_parquet_fixture.py
"""

import os

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "data")

TEXTS = [
    "The cat meows.",
    "The dog barks at the red ball.",
    "Anna went to the park.",
    "Café über 5€",
    "Line one\nline two",
    "",
    "Let us count: one, two, three.",
    "Today is Monday. Tomorrow is Tuesday.",
    "The owl hoots in the tree.",
    "Zoe felt happy at the end of the day.",
]

CHATS = [
    [{"from": "human", "value": "What does the cat say?"},
     {"from": "gpt", "value": "The cat meows."}],
    [{"from": "system", "value": "Be brief."},
     {"from": "human", "value": "Count to three."},
     {"from": "gpt", "value": "One, two, three."}],
    [{"from": "human", "value": "Hi"}],
]


def main():
    os.makedirs(OUT, exist_ok=True)
    table = pa.table({"id": pa.array(range(len(TEXTS)), pa.int64()), "text": TEXTS})
    pq.write_table(table, os.path.join(OUT, "text_snappy.parquet"), compression="snappy",
                   row_group_size=4)
    with_null = pa.table({
        "id": pa.array(range(len(TEXTS) + 1), pa.int64()),
        "text": pa.array(TEXTS + [None], pa.string()),
    })
    pq.write_table(with_null, os.path.join(OUT, "text_zstd.parquet"), compression="zstd")
    turn = pa.struct([("from", pa.string()), ("value", pa.string())])
    chat = pa.table({"conversations": pa.array(CHATS, pa.list_(turn))})
    pq.write_table(chat, os.path.join(OUT, "chat.parquet"), compression="snappy")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
