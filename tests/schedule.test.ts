// Tests of the DistAttn schedule (src/parallel/schedule.ts). The checks here are written
// independently of validateSchedule() — they recompute what each task needs from first principles
// — and then validateSchedule() itself is checked to accept every built schedule and to reject
// broken ones.

import assert from "node:assert/strict";
import {
  backwardSchedule,
  forwardSchedule,
  type RankOp,
  rankProgram,
  type ScheduleKind,
  simulate,
  type Step,
  stepCount,
  type Transfer,
  validateSchedule,
} from "../src/parallel/schedule.ts";

const MAX_P = 16;
const KINDS: ScheduleKind[] = ["forward", "backward"];
const MODES = [{ balanced: false }, { balanced: true }];

function build(P: number, kind: ScheduleKind, balanced: boolean): Step[] {
  return kind === "forward" ? forwardSchedule(P, { balanced }) : backwardSchedule(P, { balanced });
}

/** Calls fn for every P in 1..16, both modes, both passes. */
function eachSchedule(
  fn: (steps: Step[], P: number, kind: ScheduleKind, balanced: boolean, label: string) => void,
): void {
  for (let P = 1; P <= MAX_P; P++) {
    for (const kind of KINDS) {
      for (const { balanced } of MODES) {
        const label = `${kind} ${balanced ? "balanced" : "unbalanced"} P=${P}`;
        fn(build(P, kind, balanced), P, kind, balanced, label);
      }
    }
  }
}

const key = (x: Transfer) => `${x.from}->${x.to}:${x.payload}:${x.block}:${x.kvBlock ?? ""}`;

Deno.test("each causal pair is computed exactly once, no non-causal pair", () => {
  eachSchedule((steps, P, _kind, _balanced, label) => {
    const count = new Map<string, number>();
    for (const step of steps) {
      for (const t of step.tasks) {
        assert.ok(t.kv <= t.q, `${label}: non-causal task ${JSON.stringify(t)}`);
        assert.ok(t.q < P && t.kv >= 0 && t.worker >= 0 && t.worker < P, `${label}: range`);
        const k = `${t.q},${t.kv}`;
        count.set(k, (count.get(k) ?? 0) + 1);
      }
    }
    assert.equal(count.size, (P * (P + 1)) / 2, `${label}: number of distinct pairs`);
    for (let q = 0; q < P; q++) {
      for (let kv = 0; kv <= q; kv++) {
        assert.equal(count.get(`${q},${kv}`), 1, `${label}: pair (${q}, ${kv})`);
      }
    }
  });
});

Deno.test("at most one task per worker per step", () => {
  eachSchedule((steps, _P, _kind, _balanced, label) => {
    steps.forEach((step, s) => {
      const workers = step.tasks.map((t) => t.worker);
      assert.equal(new Set(workers).size, workers.length, `${label} step ${s}`);
    });
  });
});

Deno.test("every task's inputs are owned or fetched in its step, and every fetch is used", () => {
  eachSchedule((steps, _P, _kind, _balanced, label) => {
    steps.forEach((step, s) => {
      const at = `${label} step ${s}`;
      const has = (rank: number, payload: "q" | "kv", block: number) =>
        rank === block || // rank r owns block r
        step.fetch.some((x) =>
          x.to === rank && x.payload === payload && x.block === block && x.from === block
        );
      for (const t of step.tasks) {
        assert.ok(has(t.worker, "q", t.q), `${at}: worker ${t.worker} lacks Q of ${t.q}`);
        assert.ok(has(t.worker, "kv", t.kv), `${at}: worker ${t.worker} lacks KV of ${t.kv}`);
      }
      for (const x of step.fetch) {
        assert.notEqual(x.from, x.to, `${at}: self transfer`);
        assert.ok(x.payload === "q" || x.payload === "kv", `${at}: fetch payload ${x.payload}`);
        const used = step.tasks.some((t) =>
          t.worker === x.to && (x.payload === "q" ? t.q : t.kv) === x.block
        );
        assert.ok(used, `${at}: fetch ${key(x)} is not used`);
      }
      // Double buffers: per receiver at most one "q" and one "kv" per step.
      const perBuffer = new Map<string, number>();
      for (const x of step.fetch) {
        const b = `${x.to}:${x.payload}`;
        perBuffer.set(b, (perBuffer.get(b) ?? 0) + 1);
      }
      for (const [b, n] of perBuffer) assert.ok(n <= 1, `${at}: buffer ${b} gets ${n} payloads`);
    });
  });
});

Deno.test("no worker ever receives the same input twice (no repeated traffic)", () => {
  eachSchedule((steps, _P, _kind, _balanced, label) => {
    const seen = new Set<string>();
    for (const step of steps) {
      for (const x of step.fetch) {
        const k = `${x.to}:${x.payload}:${x.block}`;
        assert.ok(!seen.has(k), `${label}: ${k} received twice`);
        seen.add(k);
      }
    }
  });
});

Deno.test("results go to the owners, and every non-owner task sends what it must", () => {
  eachSchedule((steps, _P, kind, _balanced, label) => {
    steps.forEach((step, s) => {
      const at = `${label} step ${s}`;
      const expected = new Set<string>();
      for (const t of step.tasks) {
        if (kind === "forward") {
          if (t.worker !== t.q) {
            expected.add(
              key({ from: t.worker, to: t.q, payload: "out", block: t.q, kvBlock: t.kv }),
            );
          }
        } else {
          if (t.worker !== t.q) {
            expected.add(
              key({ from: t.worker, to: t.q, payload: "dq", block: t.q, kvBlock: t.kv }),
            );
          }
          if (t.worker !== t.kv) {
            expected.add(key({ from: t.worker, to: t.kv, payload: "dkv", block: t.kv }));
          }
        }
      }
      const actual = step.results.map(key);
      assert.equal(new Set(actual).size, actual.length, `${at}: duplicate results`);
      assert.deepEqual(new Set(actual), expected, `${at}: results`);
      for (const x of step.results) {
        assert.equal(x.to, x.block, `${at}: result ${key(x)} not sent to the owner`);
      }
    });
  });
});

Deno.test("step counts and per-rank balance", () => {
  eachSchedule((steps, P, _kind, balanced, label) => {
    const perRank = new Array<number>(P).fill(0);
    for (const step of steps) for (const t of step.tasks) perRank[t.worker]++;
    if (balanced) {
      assert.equal(steps.length, Math.ceil((P + 1) / 2), `${label}: steps`);
      assert.ok(Math.max(...perRank) - Math.min(...perRank) <= 1, `${label}: ${perRank}`);
      // Optimal at block granularity: the busiest rank does ceil(P(P+1)/2 / P) blocks.
      assert.equal(Math.max(...perRank), Math.ceil((P + 1) / 2), `${label}: busiest rank`);
    } else {
      assert.equal(steps.length, P, `${label}: steps`);
      assert.deepEqual(perRank, Array.from({ length: P }, (_, r) => r + 1), `${label}: per rank`);
    }
    assert.equal(steps.length, stepCount(P, { balanced }), `${label}: stepCount`);
  });
});

Deno.test("balanced helpers own the kv block; unbalanced tasks run on the q owner", () => {
  eachSchedule((steps, _P, _kind, balanced, label) => {
    for (const step of steps) {
      for (const t of step.tasks) {
        if (balanced) {
          assert.ok(t.worker === t.q || t.worker === t.kv, `${label}: ${JSON.stringify(t)}`);
        } else assert.equal(t.worker, t.q, `${label}: ${JSON.stringify(t)}`);
      }
    }
    assert.deepEqual(
      steps[0].tasks.map((t) => [t.worker, t.q, t.kv]),
      steps[0].tasks.map((_, r) => [r, r, r]),
      `${label}: step 0 is the diagonal`,
    );
    assert.equal(steps[0].fetch.length, 0, `${label}: step 0 needs no fetch`);
  });
});

Deno.test("validateSchedule accepts every built schedule", () => {
  eachSchedule((steps, P, kind) => validateSchedule(P, steps, kind));
});

Deno.test("validateSchedule rejects broken schedules with a descriptive message", () => {
  const P = 5;
  const fresh = () => structuredClone(forwardSchedule(P, { balanced: true }));
  const cases: [string, (s: Step[]) => void, RegExp][] = [
    ["dropped fetch", (s) => s[1].fetch.pop(), /lacks input/],
    ["non-causal task", (s) => (s[1].tasks[1].kv = 3), /not causal/],
    ["missing pair", (s) => {
      s[2].tasks.pop();
      s[2].results = s[2].results.filter((x) => x.from !== P - 1);
      s[2].fetch = s[2].fetch.filter((x) => x.to !== P - 1);
    }, /never computed/],
    [
      "duplicate pair",
      (s) => s[1].tasks.push({ ...s[0].tasks[0], worker: 9 % P }),
      /more than one task|repeats/,
    ],
    ["result to wrong rank", (s) => (s[1].results[0].to = 3), /owner/],
    ["missing result", (s) => s[1].results.pop(), /never sends/],
    ["fetch by non-owner", (s) => (s[1].fetch[0].from = (s[1].fetch[0].from + 1) % P), /owner/],
    ["wrong result payload", (s) => (s[1].results[0].payload = "dq"), /not a forward result/],
    ["duplicate fetch", (s) => s[1].fetch.push({ ...s[1].fetch[0] }), /duplicated/],
  ];
  for (const [name, breakIt, pattern] of cases) {
    const steps = fresh();
    breakIt(steps);
    assert.throws(() => validateSchedule(P, steps, "forward"), pattern, name);
  }
  assert.throws(() => forwardSchedule(0, { balanced: true }), RangeError);
  assert.throws(() => backwardSchedule(2.5, { balanced: false }), RangeError);
});

/** Identifies a send/recv pair: same transfer, seen from either end. */
function opKey(rank: number, op: RankOp): string {
  if (op.op !== "send" && op.op !== "recv") throw new Error("not a comm op");
  const [from, to] = op.op === "send" ? [rank, op.peer] : [op.peer, rank];
  return `${from}->${to}:${op.payload}:${op.block}:${op.kvBlock ?? ""}@${op.step}`;
}

Deno.test("rankProgram: every send has exactly one matching recv at the peer", () => {
  eachSchedule((steps, P, _kind, _balanced, label) => {
    const sends = new Map<string, number>();
    const recvs = new Map<string, number>();
    let transfers = 0;
    for (const step of steps) transfers += step.fetch.length + step.results.length;
    for (let r = 0; r < P; r++) {
      for (const op of rankProgram(steps, r)) {
        if (op.op === "send") sends.set(opKey(r, op), (sends.get(opKey(r, op)) ?? 0) + 1);
        if (op.op === "recv") recvs.set(opKey(r, op), (recvs.get(opKey(r, op)) ?? 0) + 1);
      }
    }
    assert.equal(sends.size, transfers, `${label}: one send per transfer`);
    for (const [k, n] of sends) {
      assert.equal(n, 1, `${label}: send ${k} issued ${n} times`);
      assert.equal(recvs.get(k), 1, `${label}: send ${k} has no single matching recv`);
    }
    for (const k of recvs.keys()) assert.ok(sends.has(k), `${label}: recv ${k} has no send`);
  });
});

Deno.test("rankProgram: inputs arrive before compute, results leave after it, merges follow recvs", () => {
  eachSchedule((steps, P, _kind, _balanced, label) => {
    for (let r = 0; r < P; r++) {
      const prog = rankProgram(steps, r);
      const index = (pred: (op: RankOp) => boolean) => prog.findIndex(pred);
      prog.forEach((op, i) => {
        if (op.op === "compute") {
          for (const x of steps[op.step].fetch.filter((x) => x.to === r)) {
            const j = index((o) =>
              o.op === "recv" && o.step === op.step && o.payload === x.payload
            );
            assert.ok(j >= 0 && j < i, `${label} rank ${r}: input ${key(x)} after compute`);
          }
          for (const x of steps[op.step].results.filter((x) => x.from === r)) {
            const j = index((o) =>
              o.op === "send" && o.step === op.step && o.payload === x.payload && o.peer === x.to
            );
            assert.ok(j > i, `${label} rank ${r}: result ${key(x)} before compute`);
          }
        }
        if (op.op === "merge") {
          const j = index((o) =>
            o.op === "recv" && o.step === op.step && o.payload === op.payload &&
            o.block === op.block && o.peer === op.from
          );
          assert.ok(j >= 0 && j < i, `${label} rank ${r}: merge without earlier recv`);
        }
      });
      const computes = prog.filter((o) => o.op === "compute").length;
      assert.equal(computes, steps.flatMap((s) => s.tasks).filter((t) => t.worker === r).length);
    }
  });
});

/**
 * Executes all rank programs with rendezvous semantics: a send completes only when the peer has
 * posted the matching recv (and vice versa). A maximal run of consecutive send/recv ops with the
 * same step is a group posted at once (ncclGroupStart/End): the rank passes it when every op of
 * the group is matched. Compute and merge are local. Returns the ranks left unfinished.
 */
function rendezvous(programs: RankOp[][]): number[] {
  const P = programs.length;
  const pc = new Array<number>(P).fill(0);
  const posted = new Set<string>(); // "send|key" or "recv|key", currently posted and unmatched
  const groupEnd = (r: number, i: number) => {
    const step = programs[r][i].step;
    let j = i;
    while (
      j < programs[r].length && (programs[r][j].op === "send" || programs[r][j].op === "recv") &&
      programs[r][j].step === step
    ) j++;
    return j;
  };
  const matched = new Set<string>(); // "send|key" / "recv|key" whose partner was posted
  let progress = true;
  while (progress) {
    progress = false;
    for (let r = 0; r < P; r++) {
      const prog = programs[r];
      while (pc[r] < prog.length) {
        const op = prog[pc[r]];
        if (op.op === "compute" || op.op === "merge") {
          pc[r]++;
          progress = true;
          continue;
        }
        const end = groupEnd(r, pc[r]);
        const group = prog.slice(pc[r], end);
        for (const o of group) {
          const k = opKey(r, o);
          const mine = `${o.op}|${k}`;
          const theirs = `${o.op === "send" ? "recv" : "send"}|${k}`;
          if (matched.has(mine)) continue;
          if (posted.has(theirs)) {
            posted.delete(theirs);
            matched.add(mine);
            matched.add(theirs);
          } else {
            posted.add(mine);
          }
        }
        if (group.every((o) => matched.has(`${o.op}|${opKey(r, o)}`))) {
          pc[r] = end;
          progress = true;
        } else {
          break;
        }
      }
    }
  }
  const stuck = pc.flatMap((i, r) => (i < programs[r].length ? [r] : []));
  // When everyone finished, nothing may be left posted without a partner.
  if (stuck.length === 0) assert.equal(posted.size, 0, `unmatched: ${[...posted].slice(0, 4)}`);
  return stuck;
}

Deno.test("rankProgram: rendezvous execution finishes for every P (no deadlock)", () => {
  eachSchedule((steps, P, _kind, _balanced, label) => {
    const programs = Array.from({ length: P }, (_, r) => rankProgram(steps, r));
    const stuck = rendezvous(programs);
    assert.deepEqual(stuck, [], `${label}: ranks ${stuck} deadlocked`);
  });
});

Deno.test("rendezvous checker detects a real deadlock", () => {
  // Two ranks that each send first, in separate groups: both block forever.
  const programs: RankOp[][] = [
    [
      { op: "send", peer: 1, payload: "kv", block: 0, step: 0 },
      { op: "recv", peer: 1, payload: "kv", block: 1, step: 1 },
    ],
    [
      { op: "send", peer: 0, payload: "kv", block: 1, step: 1 },
      { op: "recv", peer: 0, payload: "kv", block: 0, step: 0 },
    ],
  ];
  assert.deepEqual(rendezvous(programs), [0, 1]);
});

function makespan(steps: Step[], P: number, transferTime: number, overlap: boolean): number {
  return Math.max(...simulate(steps, P, { blockTime: 1, transferTime, overlap }));
}

Deno.test("simulate: free transfers give exactly the step count in block times", () => {
  eachSchedule((steps, P, _kind, balanced, label) => {
    for (const overlap of [true, false]) {
      const t = makespan(steps, P, 0, overlap);
      assert.equal(t, balanced ? Math.ceil((P + 1) / 2) : P, `${label} overlap=${overlap}`);
      if (balanced) assert.ok(Math.abs(t - (P + 1) / 2) <= 0.5, `${label}: about (P+1)/2`);
    }
  });
});

Deno.test("simulate: balanced beats unbalanced for P >= 3", () => {
  for (let P = 3; P <= MAX_P; P++) {
    for (const kind of KINDS) {
      for (const [tt, overlap] of [[0, true], [0.1, true], [0.5, true], [0.1, false]] as const) {
        const bal = makespan(build(P, kind, true), P, tt, overlap);
        const unb = makespan(build(P, kind, false), P, tt, overlap);
        assert.ok(bal < unb, `${kind} P=${P} tt=${tt} overlap=${overlap}: ${bal} vs ${unb}`);
      }
    }
  }
  // P = 2: the two schedules are the same (nobody can help with a single off-diagonal block).
  assert.deepEqual(forwardSchedule(2, { balanced: true }), forwardSchedule(2, { balanced: false }));
});

Deno.test("simulate: overlap hides fetches; only the last results stay exposed", () => {
  for (let P = 1; P <= MAX_P; P++) {
    for (const kind of KINDS) {
      const steps = build(P, kind, true);
      const S = steps.length;
      const tt = 0.2;
      const overlapped = makespan(steps, P, tt, true);
      const lastHasResults = steps[S - 1].results.length > 0;
      // Fetches overlap compute; results of the last step (if any) add one transfer time.
      assert.ok(
        Math.abs(overlapped - (S + (lastHasResults ? tt : 0))) < 1e-9,
        `${kind} P=${P}: ${overlapped}`,
      );
      assert.ok(makespan(steps, P, tt, false) >= overlapped, `${kind} P=${P}: no-overlap faster`);
    }
  }
});

Deno.test("simulate: per-transfer costs are honoured", () => {
  const steps = forwardSchedule(3, { balanced: true });
  // Step 1: ranks 1, 2 get KV (cost 0.5) while rank 0 gets Q_2 (0.25) and returns O (0.25).
  const times = simulate(steps, 3, {
    blockTime: 1,
    transferTime: (x) => (x.payload === "kv" ? 0.5 : 0.25),
    overlap: true,
  });
  assert.deepEqual(times, [2.25, 2, 2.25]);
});
