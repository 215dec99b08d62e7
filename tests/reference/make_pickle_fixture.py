#!/usr/bin/env python3
"""Writes the .pkl files in tests/fixtures/pickle/ that tests/pickle.test.ts parses with the
TypeScript pickle reader (src/data/pickle.ts), and expected.json: for each file, the value that
Python itself reads back (pickle.loads), in a JSON form both sides can build:
bytes -> {"bytes": "<hex>"}, an int beyond 2^53 -> {"int": "<decimal>"}, a set -> its sorted
list, a tuple -> a list, dict keys -> strings.

* texts.p2.pkl     protocol 2: a list of texts (ASCII, non-ASCII, empty, > 255 bytes)
* chat.p4.pkl      protocol 4 (framed): FastChat conversations; the role strings are shared
                   objects, so the pickle refers back to them through the memo
* tokens.p3.pkl    protocol 3: a list of token-id lists (1-, 2- and 4-byte ints)
* mixed.p5.pkl     protocol 5: every plain type (tuples of 0-4 items, bytes, bytearray, floats,
                   None, bools, big and negative ints, a set, a frozenset, int dict keys, a list
                   that contains itself is avoided but one list is referenced twice)
* train_chat.pkl   protocol 4: 48 FastChat conversations for the paper's-command test
* evil.pkl         a class whose __reduce__ would call os.system: must be refused, never run
* numpy.pkl        a numpy array (GLOBAL + REDUCE): must be refused with advice

Usage (from the repository root): /work/main/.venv/bin/python tests/reference/make_pickle_fixture.py
(any Python 3.8+ with numpy). The output is deterministic.
"""

import json
import os
import pickle
import random

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "pickle")


def to_json(v):
    if isinstance(v, (bytes, bytearray)):
        return {"bytes": bytes(v).hex()}
    if isinstance(v, bool) or v is None or isinstance(v, (str, float)):
        return v
    if isinstance(v, int):
        return v if abs(v) <= 2**53 - 1 else {"int": str(v)}
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    if isinstance(v, (set, frozenset)):
        return sorted(to_json(x) for x in v)
    if isinstance(v, dict):
        return {str(k): to_json(x) for k, x in v.items()}
    raise TypeError(type(v))


class Evil:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def conversation(rng, human, gpt, turns):
    words = "the a cat dog runs sees red blue ball park tree sun moon".split()
    conv = []
    for t in range(turns):
        q = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) + "?"
        a = " ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) + "."
        conv += [{"from": human, "value": q}, {"from": gpt, "value": a}]
    return conv


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = random.Random(16)
    human, gpt = "human", "gpt"  # one object each: the pickler memoises and refers back
    shared = [7, 8, 9]
    values = {
        "texts.p2.pkl": (2, ["The cat meows.", "Café über 5€ 🐈", "", "x" * 300,
                             "long " * 60]),
        "chat.p4.pkl": (4, [{"id": f"c{i}", "conversations": conversation(rng, human, gpt, 2)}
                            for i in range(3)]),
        "tokens.p3.pkl": (3, [[1, 2, 255], [256, 65535, 65536, 2**31 - 1], list(range(1200))]),
        "mixed.p5.pkl": (5, [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), b"\x00\xffab",
                             bytearray(b"xy"), 1.5, -0.0, 1e300, None, True, False,
                             -1, -256, -(2**31), 2**31, 2**63, -(2**70), {3, 1, 2},
                             frozenset({"b", "a"}), {1: "one", "k": [shared, shared]},
                             "é" * 100]),
        "train_chat.pkl": (4, [{"id": f"t{i}",
                                "conversations": conversation(rng, human, gpt, 3)}
                               for i in range(48)]),
    }
    expected = {}
    for name, (protocol, value) in values.items():
        with open(os.path.join(OUT, name), "wb") as f:
            pickle.dump(value, f, protocol=protocol)
        with open(os.path.join(OUT, name), "rb") as f:
            expected[name] = to_json(pickle.load(f))
    with open(os.path.join(OUT, "evil.pkl"), "wb") as f:
        pickle.dump([Evil()], f, protocol=4)
    with open(os.path.join(OUT, "numpy.pkl"), "wb") as f:
        pickle.dump(np.arange(3, dtype=np.int64), f, protocol=2)
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, ensure_ascii=False, indent=None)
        f.write("\n")


if __name__ == "__main__":
    main()
