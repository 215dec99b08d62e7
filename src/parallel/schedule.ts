/**
 * The DistAttn schedule: which rank computes which attention block, and which tensors travel
 * between ranks at which step — as pure data, with no device and no communicator involved, so
 * that it can be tested exhaustively and used to predict scaling before anything runs.
 *
 * ## Setting
 *
 * One sequence is cut into P contiguous chunks ("blocks"); rank r owns block r: its Q_r, K_r, V_r
 * (and in backward also dO_r, O_r and the log-sum-exp LSE_r saved by the forward). Causal
 * attention needs the block pair (q, kv) for every kv <= q: P(P+1)/2 pairs. The diagonal pair
 * (r, r) is causally masked inside; every other pair is full.
 *
 * ## Unbalanced schedule (P steps)
 *
 * Step 0: every rank computes its diagonal. Step t = 1..P-1: rank r >= t computes (r, r - t)
 * after receiving K/V of rank r - t. Ranks r < t sit idle, so rank 0 works one block and rank
 * P-1 works P blocks: the last rank sets the pace and the total is P block-times.
 *
 * ## Balanced schedule (ceil((P+1)/2) steps), the paper's idea for any P
 *
 * Group the off-diagonal pairs by distance d = q - kv: there are P - d pairs at distance d.
 * Distances t and P - t together have (P - t) + t = P pairs — exactly one per rank. So step t
 * (t = 1..floor((P-1)/2)) does both:
 *  - distance t on the owners: rank r >= t computes (r, r - t), receiving K/V of r - t, as in the
 *    unbalanced schedule;
 *  - distance P - t on the ranks that would idle: helper h < t computes (h + P - t, h). The helper
 *    owns the kv block h already, so it only receives Q of rank h + P - t (in backward: Q, dO and
 *    the softmax stats) and sends back a partial result (forward: partial O and LSE; backward:
 *    partial dQ — the dK/dV partial belongs to the helper itself).
 * For odd P these steps cover every distance 1..P-1, giving 1 + (P-1)/2 = (P+1)/2 steps in which
 * every rank works every step. For even P distance P/2 is left over: P/2 pairs, done by their
 * owners in one final step (owners only need K/V, while helpers would need Q in and a result
 * out — more traffic for the same work). That gives P/2 + 1 steps, with the first P/2 ranks idle
 * in the last one. Both counts equal ceil((P+1)/2) = ceil(P(P+1)/2 / P), the lower bound for
 * P(P+1)/2 equal blocks on P ranks doing one block per step, so the schedule is optimal at
 * block granularity; even P cannot do better without splitting blocks.
 *
 * ## Step model and memory (assumptions the executor must honour)
 *
 * - A step's `fetch` transfers are issued while the previous step computes (separate compute and
 *   communication streams) and must have arrived before the step's tasks start. Step 0 has no
 *   previous step, which is why it is the diagonal step: it needs nothing from anyone.
 * - A step's `results` are sent after its tasks finish and merged by the owner (forward: exact
 *   log-sum-exp merge of partial O; backward: summation of dQ or dK/dV partials).
 * - Double buffers: a worker keeps only the inputs it received for the current step, while the
 *   next step's inputs arrive into the other buffer. So a block a worker needs again in a later
 *   step would have to be fetched again. (The schedules built here never need the same foreign
 *   block twice on one worker — every transfer in them is distinct — so no traffic is wasted.)
 * - Each worker computes at most one block pair per step, so its step inputs are at most one
 *   "q" payload and one "kv" payload: two buffer sets of that size bound the extra memory.
 * - Only the owner of a block sends it (owners hold their data throughout).
 *
 * @module
 */

/** What a transfer carries. */
export type Payload =
  /** K and V of block `block` (forward and backward). */
  | "kv"
  /** Forward: Q of block `block`. Backward: Q, dO, O and LSE (the softmax stats) of block `block`. */
  | "q"
  /** Forward result of a helper: partial O and LSE for query block `block`, against kv block `kvBlock`. */
  | "out"
  /** Backward result: partial dQ for query block `block` (computed against kv block `kvBlock`). */
  | "dq"
  /** Backward result: partial dK, dV for kv block `block`. */
  | "dkv";

/** `worker` computes attention of Q block `q` against K/V block `kv` (kv <= q). */
export interface Task {
  worker: number;
  q: number;
  kv: number;
}

/**
 * A point-to-point transfer. `kvBlock` is set on "out" and "dq" results: the kv block the partial
 * was computed against (it makes every transfer of a schedule unique and helps debugging).
 */
export interface Transfer {
  from: number;
  to: number;
  payload: Payload;
  block: number;
  kvBlock?: number;
}

/** One block-time of the schedule. See the module doc for the timing contract. */
export interface Step {
  /** Inputs this step's tasks need; issued while the previous step computes, must arrive before this step's tasks. */
  fetch: Transfer[];
  /** At most one task per worker. */
  tasks: Task[];
  /** Partial results of this step's tasks sent to their owners after the task, merged by the owner. */
  results: Transfer[];
}

/** Schedule options. `balanced` selects the paper's load-balanced schedule. */
export interface ScheduleOptions {
  balanced: boolean;
}

/** Which pass a schedule is for: the payloads of inputs and results differ. */
export type ScheduleKind = "forward" | "backward";

/** The ordered list of operations one rank performs, for the executor. */
export type RankOp =
  | { op: "send"; peer: number; payload: Payload; block: number; kvBlock?: number; step: number }
  | { op: "recv"; peer: number; payload: Payload; block: number; kvBlock?: number; step: number }
  | { op: "compute"; q: number; kv: number; step: number }
  | { op: "merge"; payload: "out" | "dq" | "dkv"; block: number; from: number; step: number };

/** Rank that owns (and is the only sender of) block `block`: rank r owns chunk r. */
export function blockOwner(block: number): number {
  return block;
}

/** Number of steps of a schedule for P ranks: P unbalanced, ceil((P+1)/2) balanced. */
export function stepCount(P: number, opts: ScheduleOptions): number {
  checkP(P);
  return opts.balanced ? Math.ceil((P + 1) / 2) : P;
}

function checkP(P: number): void {
  if (!Number.isInteger(P) || P < 1) {
    throw new RangeError(`DistAttn schedule: P must be an integer >= 1, got ${P}`);
  }
}

/**
 * Which worker computes which block pair at which step (the part shared by forward and backward).
 * Index = step; tasks sorted by worker.
 */
export function taskPlan(P: number, opts: ScheduleOptions): Task[][] {
  checkP(P);
  const plan: Task[][] = [];
  // Step 0: the diagonal, needing no communication, so nothing is exposed before the first
  // compute and step 1's fetches overlap it.
  plan.push(Array.from({ length: P }, (_, r) => ({ worker: r, q: r, kv: r })));
  const ownersAtDistance = (d: number): Task[] => {
    const tasks: Task[] = [];
    for (let r = d; r < P; r++) tasks.push({ worker: r, q: r, kv: r - d });
    return tasks;
  };
  if (!opts.balanced) {
    for (let t = 1; t < P; t++) plan.push(ownersAtDistance(t));
    return plan;
  }
  // Paired steps: distance t on the owners (ranks t..P-1), distance P - t on the helpers
  // (ranks 0..t-1, exactly the ones the owners' work leaves idle). P - t > t here, so the
  // two distances are distinct and each distance is used once.
  const paired = Math.floor((P - 1) / 2);
  for (let t = 1; t <= paired; t++) {
    const tasks: Task[] = [];
    for (let h = 0; h < t; h++) tasks.push({ worker: h, q: h + P - t, kv: h });
    tasks.push(...ownersAtDistance(t));
    plan.push(tasks);
  }
  // Even P: distance P/2 pairs with itself and has only P/2 pairs; owners do it (K/V in, no
  // result out), leaving one block of imbalance that P(P+1)/2 mod P = P/2 makes unavoidable.
  if (P % 2 === 0) plan.push(ownersAtDistance(P / 2));
  return plan;
}

function transferKey(x: Transfer): string {
  return `${x.from}->${x.to}:${x.payload}:${x.block}:${x.kvBlock ?? ""}`;
}

function compareTransfers(a: Transfer, b: Transfer): number {
  return a.from - b.from || a.to - b.to || a.payload.localeCompare(b.payload) ||
    a.block - b.block || (a.kvBlock ?? -1) - (b.kvBlock ?? -1);
}

/** Inputs `task` needs from other ranks (payloads "q" and "kv"). Same rule forward and backward. */
export function taskInputs(task: Task): Transfer[] {
  const inputs: Transfer[] = [];
  const qOwner = blockOwner(task.q);
  const kvOwner = blockOwner(task.kv);
  if (task.worker !== qOwner) {
    inputs.push({ from: qOwner, to: task.worker, payload: "q", block: task.q });
  }
  if (task.worker !== kvOwner) {
    inputs.push({ from: kvOwner, to: task.worker, payload: "kv", block: task.kv });
  }
  return inputs;
}

/**
 * Partial results `task` must send to owners. Forward: the owner of q gets "out" unless it did
 * the work. Backward: the owner of q gets "dq" and the owner of kv gets "dkv", each unless it is
 * the worker.
 */
export function taskResults(task: Task, kind: ScheduleKind): Transfer[] {
  const results: Transfer[] = [];
  const qOwner = blockOwner(task.q);
  const kvOwner = blockOwner(task.kv);
  if (kind === "forward") {
    if (task.worker !== qOwner) {
      results.push({
        from: task.worker,
        to: qOwner,
        payload: "out",
        block: task.q,
        kvBlock: task.kv,
      });
    }
    return results;
  }
  if (task.worker !== qOwner) {
    results.push({ from: task.worker, to: qOwner, payload: "dq", block: task.q, kvBlock: task.kv });
  }
  if (task.worker !== kvOwner) {
    results.push({ from: task.worker, to: kvOwner, payload: "dkv", block: task.kv });
  }
  return results;
}

/** Turns a task plan into steps: fetches and results follow from ownership and the pass. */
function buildSteps(plan: Task[][], kind: ScheduleKind): Step[] {
  return plan.map((tasks) => {
    // Under the keep-only-this-step's-inputs rule every foreign input is fetched in the step that
    // uses it; dedupe in case two tasks of one step ever needed the same input at one worker.
    const fetch = new Map<string, Transfer>();
    const results: Transfer[] = [];
    for (const task of tasks) {
      for (const x of taskInputs(task)) fetch.set(transferKey(x), x);
      results.push(...taskResults(task, kind));
    }
    return {
      fetch: [...fetch.values()].sort(compareTransfers),
      tasks: tasks.map((t) => ({ ...t })).sort((a, b) => a.worker - b.worker),
      results: results.sort(compareTransfers),
    };
  });
}

/**
 * Forward schedule for P ranks. Balanced: ceil((P+1)/2) steps; unbalanced: P steps.
 * @throws RangeError when P is not an integer >= 1.
 */
export function forwardSchedule(P: number, opts: ScheduleOptions): Step[] {
  return buildSteps(taskPlan(P, opts), "forward");
}

/**
 * Backward schedule for P ranks: the same block pairs at the same steps as the forward (the
 * balance argument is identical), with backward payloads: "q" carries Q, dO and the softmax stats,
 * results are dQ partials to the q owner and dK/dV partials to the kv owner.
 * @throws RangeError when P is not an integer >= 1.
 */
export function backwardSchedule(P: number, opts: ScheduleOptions): Step[] {
  return buildSteps(taskPlan(P, opts), "backward");
}

/**
 * Checks every invariant the executor relies on, and throws an Error naming the first one broken:
 * ranks in range; causal pairs only, each computed exactly once, all of them covered; at most one
 * task per worker per step; each fetch sent by the block's owner to a non-owner that uses it in
 * that step, with no duplicates and at most one "q" and one "kv" per receiver (double buffers);
 * every task's inputs owned or fetched in its own step; results exactly those the tasks produce
 * for this pass, addressed to the owners.
 */
export function validateSchedule(P: number, steps: Step[], kind: ScheduleKind): void {
  checkP(P);
  const fail = (msg: string): never => {
    throw new Error(`invalid ${kind} DistAttn schedule for P=${P}: ${msg}`);
  };
  if (!Array.isArray(steps)) fail("steps is not an array");
  const isRank = (x: unknown): x is number =>
    Number.isInteger(x) && (x as number) >= 0 && (x as number) < P;
  const fetchPayloads: ReadonlySet<Payload> = new Set<Payload>(["q", "kv"]);
  const resultPayloads: ReadonlySet<Payload> = new Set<Payload>(
    kind === "forward" ? ["out"] : ["dq", "dkv"],
  );
  const computedAt = new Map<string, number>();
  steps.forEach((step, s) => {
    const at = `step ${s}`;
    if (
      !step || !Array.isArray(step.fetch) || !Array.isArray(step.tasks) ||
      !Array.isArray(step.results)
    ) {
      fail(`${at}: a step needs fetch, tasks and results arrays`);
    }
    const busy = new Set<number>();
    const expectedFetch = new Map<string, Task>();
    const expectedResults = new Map<string, Task>();
    for (const task of step.tasks) {
      const name = `task (worker ${task.worker}, q ${task.q}, kv ${task.kv})`;
      if (!isRank(task.worker) || !isRank(task.q) || !isRank(task.kv)) {
        fail(`${at}: ${name} is out of range`);
      }
      if (task.kv > task.q) fail(`${at}: ${name} is not causal (kv > q)`);
      if (busy.has(task.worker)) fail(`${at}: worker ${task.worker} has more than one task`);
      busy.add(task.worker);
      const pair = `${task.q},${task.kv}`;
      const earlier = computedAt.get(pair);
      if (earlier !== undefined) {
        fail(`${at}: ${name} repeats the pair already computed at step ${earlier}`);
      }
      computedAt.set(pair, s);
      for (const x of taskInputs(task)) expectedFetch.set(transferKey(x), task);
      for (const x of taskResults(task, kind)) expectedResults.set(transferKey(x), task);
    }

    const fetched = new Set<string>();
    const buffers = new Map<string, number>();
    for (const x of step.fetch) {
      const name = `fetch ${transferKey(x)}`;
      if (!isRank(x.from) || !isRank(x.to) || !isRank(x.block)) {
        fail(`${at}: ${name} is out of range`);
      }
      if (!fetchPayloads.has(x.payload)) {
        fail(`${at}: ${name} has payload "${x.payload}", not an input`);
      }
      if (x.kvBlock !== undefined) fail(`${at}: ${name} carries kvBlock, which inputs do not have`);
      if (x.from !== blockOwner(x.block)) fail(`${at}: ${name} is not sent by the block's owner`);
      if (x.to === blockOwner(x.block)) fail(`${at}: ${name} sends a block to its own owner`);
      const key = transferKey(x);
      if (fetched.has(key)) fail(`${at}: ${name} is duplicated`);
      fetched.add(key);
      if (!expectedFetch.has(key)) {
        fail(`${at}: ${name} is not used by any task of rank ${x.to} in this step`);
      }
      const buf = `${x.to}:${x.payload}`;
      const n = (buffers.get(buf) ?? 0) + 1;
      if (n > 1) {
        fail(
          `${at}: rank ${x.to} receives ${n} "${x.payload}" payloads, more than one buffer holds`,
        );
      }
      buffers.set(buf, n);
    }
    for (const [key, task] of expectedFetch) {
      if (!fetched.has(key)) {
        fail(
          `${at}: task (worker ${task.worker}, q ${task.q}, kv ${task.kv}) lacks input ${key}: ` +
            `neither owned nor fetched in this step`,
        );
      }
    }

    const sent = new Set<string>();
    for (const x of step.results) {
      const name = `result ${transferKey(x)}`;
      if (!isRank(x.from) || !isRank(x.to) || !isRank(x.block)) {
        fail(`${at}: ${name} is out of range`);
      }
      if (!resultPayloads.has(x.payload)) {
        fail(`${at}: ${name} has payload "${x.payload}", not a ${kind} result`);
      }
      if (x.to !== blockOwner(x.block)) {
        fail(`${at}: ${name} does not go to the owner of block ${x.block}`);
      }
      const key = transferKey(x);
      if (sent.has(key)) fail(`${at}: ${name} is duplicated`);
      sent.add(key);
      if (!expectedResults.has(key)) {
        fail(`${at}: ${name} is not produced by any task of this step`);
      }
    }
    for (const [key, task] of expectedResults) {
      if (!sent.has(key)) {
        fail(
          `${at}: task (worker ${task.worker}, q ${task.q}, kv ${task.kv}) never sends result ${key}`,
        );
      }
    }
  });
  for (let q = 0; q < P; q++) {
    for (let kv = 0; kv <= q; kv++) {
      if (!computedAt.has(`${q},${kv}`)) fail(`block pair (q ${q}, kv ${kv}) is never computed`);
    }
  }
}

/**
 * The operations of one rank, in issue order:
 *
 *   [fetch of step 0] then for each step s: [fetch of step s+1] compute(s) [results of s] merges(s)
 *
 * A bracketed group is a run of sends/recvs with one `step` value, meant to be posted together
 * (ncclGroupStart/End). Step s+1's fetch group comes before compute(s) so that it proceeds on the
 * communication stream while step s computes. Every rank walks the same global sequence of groups
 * and both ends of every transfer sit in the same group, so even fully blocking (rendezvous)
 * point-to-point calls cannot deadlock: all ranks finish group k before any waits on group k+1.
 * The group matters: executed one blocking op at a time, the balanced schedules deadlock for every
 * P >= 3 (step t has rank r sending to r + t while receiving from r - t, a cycle), so an executor
 * must post a group's ops together (NCCL groups, or non-blocking isend/irecv then wait-all).
 * Within a group, sends come before recvs, each sorted by peer, for a deterministic order.
 * A "merge" follows its result's recv: the owner folds the partial into its accumulator.
 */
export function rankProgram(steps: Step[], rank: number): RankOp[] {
  const ops: RankOp[] = [];
  const group = (list: Transfer[], step: number): Transfer[] => {
    const mine = list.filter((x) => x.from === rank || x.to === rank);
    const sends = mine.filter((x) => x.from === rank).sort((a, b) =>
      a.to - b.to || compareTransfers(a, b)
    );
    const recvs = mine.filter((x) => x.to === rank && x.from !== rank)
      .sort((a, b) => a.from - b.from || compareTransfers(a, b));
    for (const x of sends) ops.push(commOp("send", x.to, x, step));
    for (const x of recvs) ops.push(commOp("recv", x.from, x, step));
    return recvs;
  };
  if (steps.length > 0) group(steps[0].fetch, 0);
  steps.forEach((step, s) => {
    if (s + 1 < steps.length) group(steps[s + 1].fetch, s + 1);
    for (const task of step.tasks) {
      if (task.worker === rank) ops.push({ op: "compute", q: task.q, kv: task.kv, step: s });
    }
    for (const x of group(step.results, s)) {
      if (x.payload === "out" || x.payload === "dq" || x.payload === "dkv") {
        ops.push({ op: "merge", payload: x.payload, block: x.block, from: x.from, step: s });
      }
    }
  });
  return ops;
}

function commOp(op: "send" | "recv", peer: number, x: Transfer, step: number): RankOp {
  const base = { op, peer, payload: x.payload, block: x.block, step };
  return x.kvBlock === undefined ? base : { ...base, kvBlock: x.kvBlock };
}

/** Cost model for {@link simulate}. Times are in any one unit (say, milliseconds). */
export interface SimulateOptions {
  /** Time to compute one block pair: a constant, or per task (a diagonal block costs half). */
  blockTime: number | ((task: Task) => number);
  /** Time of one transfer: a constant, or per transfer (payloads differ in size: kv is K and V). */
  transferTime: number | ((x: Transfer) => number);
  /**
   * true: step s+1's fetches are issued when step s starts computing (separate streams);
   * results are sent as each task ends. false: a rank computes, then sends/receives results,
   * then fetches the next step's inputs, strictly in turn.
   */
  overlap: boolean;
}

/**
 * Models the time each rank needs to finish all its work in a schedule: computing, and sending
 * or receiving every transfer it is part of. The answer's maximum is the schedule's duration.
 *
 * The model: a transfer starts when both ends have posted it (rendezvous), and no earlier than
 * the sender's outgoing link and the receiver's incoming link are free (full-duplex links, one
 * transfer at a time in each direction, in schedule order); it takes `transferTime`. A task
 * starts when its rank's previous task ended and the step's fetches to that rank have arrived.
 * Merging a result is taken as free (an elementwise update).
 */
export function simulate(steps: Step[], P: number, opts: SimulateOptions): number[] {
  checkP(P);
  const { blockTime, overlap } = opts;
  const { transferTime } = opts;
  const duration = (x: Transfer): number =>
    typeof transferTime === "number" ? transferTime : transferTime(x);
  const sendFree = new Array<number>(P).fill(0);
  const recvFree = new Array<number>(P).fill(0);
  const finish = new Array<number>(P).fill(0);
  // Runs a group of transfers posted by each rank at `posted[rank]`; returns, per rank, when
  // its incoming transfers of the group arrived and when all its transfers were done.
  const run = (list: Transfer[], posted: number[]) => {
    const arrived = [...posted];
    const done = [...posted];
    for (const x of list) {
      const start = Math.max(posted[x.from], posted[x.to], sendFree[x.from], recvFree[x.to]);
      const end = start + duration(x);
      sendFree[x.from] = end;
      recvFree[x.to] = end;
      arrived[x.to] = Math.max(arrived[x.to], end);
      done[x.to] = Math.max(done[x.to], end);
      done[x.from] = Math.max(done[x.from], end);
    }
    for (let r = 0; r < P; r++) finish[r] = Math.max(finish[r], done[r]);
    return { arrived, done };
  };
  let prevEnd = new Array<number>(P).fill(0);
  let inputs = steps.length > 0 ? run(steps[0].fetch, prevEnd).arrived : prevEnd;
  steps.forEach((step, s) => {
    const taskOf = new Map(step.tasks.map((t) => [t.worker, t]));
    const busy = new Set(taskOf.keys());
    const cost = (r: number) =>
      typeof blockTime === "number" ? blockTime : blockTime(taskOf.get(r)!);
    const start = prevEnd.map((t, r) => busy.has(r) ? Math.max(t, inputs[r]) : t);
    const end = start.map((t, r) => busy.has(r) ? t + cost(r) : t);
    for (let r = 0; r < P; r++) finish[r] = Math.max(finish[r], end[r]);
    // Overlap: the next fetch goes out as this step starts computing.
    const next = s + 1 < steps.length ? steps[s + 1].fetch : [];
    if (overlap) inputs = run(next, start).arrived;
    const results = run(step.results, end).done;
    if (!overlap) {
      // In turn: the next fetch is posted after this step's results are through, and the next
      // compute waits for that fetch (run() reports at least the posting time for every rank).
      inputs = run(next, results).arrived;
    }
    prevEnd = end;
  });
  return finish;
}
