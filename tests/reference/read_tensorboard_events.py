#!/usr/bin/env python3
"""Reads tests/fixtures/tensorboard/events.out.tfevents.fixture (written by distflash's
src/train/tensorboard.ts through tests/reference/tensorboard_events.ts) with TensorBoard's own
EventAccumulator and writes what it decoded to tests/fixtures/tensorboard/expected.json:
{tag: [[wall_time, step, value], ...]}. tests/tensorboard.test.ts checks it against the scalars
that were written.

Usage: python3 -m venv /tmp/tbvenv && /tmp/tbvenv/bin/pip install tensorboard
       /tmp/tbvenv/bin/python tests/reference/read_tensorboard_events.py   (tensorboard 2.21.0)
"""
import json
import os

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIR = os.path.join(ROOT, "tests", "fixtures", "tensorboard")

acc = EventAccumulator(os.path.join(DIR, "events.out.tfevents.fixture"))
acc.Reload()
out = {tag: [[e.wall_time, e.step, e.value] for e in acc.Scalars(tag)]
       for tag in sorted(acc.Tags()["scalars"])}
with open(os.path.join(DIR, "expected.json"), "w") as f:
    json.dump(out, f, indent=1, sort_keys=True)
    f.write("\n")
