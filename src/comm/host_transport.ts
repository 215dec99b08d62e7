/**
 * The host transport: communicators for CPU ranks (or any device, slowly) over TCP sockets.
 *
 * ## Mesh
 * At start-up every rank listens on an ephemeral port of the address through which it reaches the
 * rendezvous store (127.0.0.1 on one machine), publishes "host port" in the store, connects to
 * every lower rank and accepts a connection from every higher rank: one socket per pair. The
 * listener closes once the mesh is complete. Subgroups share the world's sockets: each message
 * names its communicator, so no new connections are needed.
 *
 * ## Messages
 * A 32-byte header (magic, type, communicator id, sequence number, byte length) then the payload.
 * Every (communicator, sender, receiver) triple is a channel whose messages are numbered; the k-th
 * message on a channel fills the k-th receive posted on it. A receive posted before its message
 * arrives is filled straight from the socket; a message that arrives first waits in memory. Every
 * socket is read all the time, whatever is posted, so sends never wait on receives and no cycle of
 * sends can deadlock.
 *
 * ## Failures
 * A socket that closes without a goodbye, a write that fails, a byte count that does not match, or
 * a peer that makes no progress for the timeout (DISTFLASH_COMM_TIMEOUT_S, default 300 s) breaks
 * the whole mesh: every pending and later operation rejects with a CommError naming the peer, and
 * all sockets are closed at once, so the other ranks learn of it within milliseconds too.
 *
 * ## Collectives
 * Built from the same all-to-all exchange, with every sum computed in rank order by one rank per
 * chunk (reduce-scatter, then all-gather for all-reduce), so all ranks get bitwise-identical
 * results. bf16 is summed in fp32 and rounded once.
 *
 * @module
 */
import type { Device, DevicePtr, Stream } from "../runtime/device.ts";
import {
  checkCount,
  checkP2P,
  checkRank,
  checkSubgroup,
  type CommDType,
  commDTypeBytes,
  CommError,
  commTimeoutMs,
  type Communicator,
  hash32,
  type P2P,
  sumHost,
} from "./comm.ts";
import { connectWithRetry, ConnReader, isLoopback, type TcpStore, writeAll } from "./rendezvous.ts";

const MAGIC = 0x54484644; // "DFHT"
const HEADER_BYTES = 32;
const T_HELLO = 1;
const T_DATA = 2;
const T_BYE = 3;

function header(type: number, comm: number, aux: number, seq: number, length: number): Uint8Array {
  const bytes = new Uint8Array(HEADER_BYTES);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, MAGIC, true);
  view.setUint32(4, type, true);
  view.setUint32(8, comm, true);
  view.setUint32(12, aux, true);
  view.setFloat64(16, seq, true);
  view.setFloat64(24, length, true);
  return bytes;
}

/** One message to send or buffer to fill; `peer` is a global rank. */
export interface HostOp {
  kind: "send" | "recv";
  peer: number;
  data: Uint8Array;
}

interface Group {
  what: string;
  items: Item[];
  remaining: number;
  settled: boolean;
  resolve: () => void;
  reject: (error: Error) => void;
  timer?: ReturnType<typeof setTimeout>;
}

interface Item {
  kind: "send" | "recv";
  peer: number;
  bytes: number;
  postedAt: number;
  done: boolean;
  group: Group;
}

interface Channel {
  sendSeq: number;
  recvSeq: number;
  arriveSeq: number;
  posted: Map<number, { buf: Uint8Array; item: Item }>;
  arrived: Map<number, Uint8Array>;
}

interface Link {
  peer: number;
  conn: Deno.TcpConn;
  reader: ConnReader;
  chain: Promise<void>;
  peerBye: boolean;
  ended: boolean;
}

export interface HostMeshOptions {
  /** No progress from a peer for this long fails the operation (default DISTFLASH_COMM_TIMEOUT_S). */
  timeoutMs?: number;
  /** How long an orderly close waits for the peers' goodbyes before dropping them (10 s). */
  lingerMs?: number;
  /** Store key prefix (several meshes on one store need different ones). */
  prefix?: string;
}

/** The sockets between all ranks of a job and the message matching over them. */
export class HostMesh {
  readonly timeoutMs: number;
  readonly lingerMs: number;
  readonly #links: (Link | undefined)[];
  readonly #channels = new Map<string, Channel>();
  readonly #groups = new Set<Group>();
  readonly #activity: Float64Array;
  readonly #names = new Map<number, string>();
  #broken?: CommError;
  #closing?: Promise<void>;
  #allEnded?: () => void;

  private constructor(
    readonly rank: number,
    readonly size: number,
    links: (Link | undefined)[],
    options: HostMeshOptions,
  ) {
    this.timeoutMs = options.timeoutMs ?? commTimeoutMs();
    this.lingerMs = options.lingerMs ?? 10_000;
    this.#links = links;
    this.#activity = new Float64Array(size);
    for (const link of links) if (link) this.#readLoop(link);
  }

  /** Builds the full mesh through the store (every rank calls it at the same time). */
  static async establish(
    store: TcpStore,
    rank: number,
    size: number,
    options: HostMeshOptions = {},
  ): Promise<HostMesh> {
    const timeoutMs = options.timeoutMs ?? commTimeoutMs();
    const prefix = options.prefix ?? "hostmesh";
    const links: (Link | undefined)[] = new Array(size).fill(undefined);
    const makeLink = (peer: number, conn: Deno.TcpConn, reader: ConnReader): Link => ({
      peer,
      conn,
      reader,
      chain: Promise.resolve(),
      peerBye: false,
      ended: false,
    });
    if (size === 1) return new HostMesh(rank, size, links, options);

    const host = isLoopback(store.options.host) ? "127.0.0.1" : store.localHost;
    const listener = Deno.listen({ hostname: host, port: 0, transport: "tcp" });
    const port = (listener.addr as Deno.NetAddr).port;
    const accepted: Deno.TcpConn[] = [];
    const expected = size - 1 - rank;
    let acceptError: Error | undefined;
    const acceptAll = (async () => {
      let got = 0;
      while (got < expected) {
        const conn = await listener.accept();
        accepted.push(conn);
        conn.setNoDelay(true);
        const reader = new ConnReader(conn);
        const hello = new Uint8Array(HEADER_BYTES);
        const view = new DataView(hello.buffer);
        if (
          !await reader.readFull(hello) || view.getUint32(0, true) !== MAGIC ||
          view.getUint32(4, true) !== T_HELLO
        ) {
          conn.close(); // not one of ours
          continue;
        }
        const peer = view.getUint32(12, true);
        if (peer <= rank || peer >= size || links[peer]) {
          acceptError = new CommError(`host transport: unexpected hello from rank ${peer}`);
          conn.close();
          continue;
        }
        links[peer] = makeLink(peer, conn, reader);
        got++;
      }
    })();
    acceptAll.catch(() => {}); // reported through the missing ranks below

    const cleanup = () => {
      try {
        listener.close();
      } catch { /* closed */ }
      for (const conn of accepted) {
        try {
          conn.close();
        } catch { /* closed */ }
      }
      for (const l of links) {
        try {
          l?.conn.close();
        } catch { /* closed */ }
      }
    };
    try {
      await store.set(`${prefix}/addr/${rank}`, `${host} ${port}`);
      const deadline = performance.now() + timeoutMs;
      await Promise.all(Array.from({ length: rank }, async (_, peer) => {
        const [peerHost, peerPort] = (await store.getText(`${prefix}/addr/${peer}`, timeoutMs))
          .split(" ");
        const conn = await connectWithRetry(
          peerHost,
          Number(peerPort),
          Math.max(1, deadline - performance.now()),
          `rank ${peer}'s host transport`,
        );
        await writeAll(conn, header(T_HELLO, 0, rank, 0, 0));
        links[peer] = makeLink(peer, conn, new ConnReader(conn));
      }));
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timedOut = new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), Math.max(1, deadline - performance.now()));
      });
      const outcome = await Promise.race([acceptAll.then(() => "ok" as const), timedOut]);
      clearTimeout(timer);
      if (outcome === "timeout") {
        const missing = [];
        for (let p = rank + 1; p < size; p++) if (!links[p]) missing.push(p);
        throw acceptError ??
          new CommError(
            `host transport: rank ${rank} did not hear from rank(s) ${missing.join(", ")} ` +
              `within ${(timeoutMs / 1000).toFixed(1)} s`,
            missing[0],
          );
      }
    } catch (error) {
      cleanup();
      throw error;
    }
    listener.close();
    const mesh = new HostMesh(rank, size, links, options);
    return mesh;
  }

  /** Records a communicator's wire id; two different names with one id are refused. */
  register(id: number, name: string): void {
    const known = this.#names.get(id);
    if (known !== undefined && known !== name) {
      throw new CommError(`communicator ids collide: "${known}" and "${name}"; rename one`);
    }
    this.#names.set(id, name);
  }

  unregister(id: number): void {
    this.#names.delete(id);
  }

  /** Why the mesh is unusable, if it is. */
  get error(): CommError | undefined {
    return this.#broken;
  }

  #channel(comm: number, peer: number): Channel {
    const key = `${comm}/${peer}`;
    let ch = this.#channels.get(key);
    if (!ch) {
      ch = { sendSeq: 0, recvSeq: 0, arriveSeq: 0, posted: new Map(), arrived: new Map() };
      this.#channels.set(key, ch);
    }
    return ch;
  }

  #name(comm: number): string {
    return this.#names.get(comm) ?? `#${comm}`;
  }

  /**
   * Sends and receives host buffers on communicator `comm` (ranks are global); resolves when every
   * send has been written and every receive buffer filled.
   */
  transfer(comm: number, ops: HostOp[], what: string): Promise<void> {
    if (this.#broken) return Promise.reject(this.#broken);
    if (this.#closing) return Promise.reject(new CommError("the host transport is closed"));
    for (const op of ops) checkRank(op.peer, this.size);
    return new Promise<void>((resolve, reject) => {
      const group: Group = {
        what,
        items: [],
        remaining: ops.length,
        settled: false,
        resolve,
        reject,
      };
      this.#groups.add(group);
      const now = performance.now();
      try {
        for (const op of ops) {
          const item: Item = {
            kind: op.kind,
            peer: op.peer,
            bytes: op.data.length,
            postedAt: now,
            done: false,
            group,
          };
          group.items.push(item);
          if (op.kind === "send") this.#postSend(comm, item, op.data);
          else this.#postRecv(comm, item, op.data);
        }
      } catch (error) {
        this.#fail(
          error instanceof CommError ? error : new CommError((error as Error).message),
        );
        return;
      }
      if (group.remaining === 0) this.#settle(group);
      else if (!group.settled) this.#arm(group);
    });
  }

  #settle(group: Group, error?: Error): void {
    if (group.settled) return;
    group.settled = true;
    clearTimeout(group.timer);
    this.#groups.delete(group);
    if (error) group.reject(error);
    else group.resolve();
  }

  #complete(item: Item): void {
    if (item.done) return;
    item.done = true;
    if (--item.group.remaining === 0) this.#settle(item.group);
  }

  #arm(group: Group): void {
    const check = () => {
      if (group.settled) return;
      const now = performance.now();
      let next = Infinity;
      for (const it of group.items) {
        if (it.done) continue;
        const since = Math.max(it.postedAt, this.#activity[it.peer]);
        if (now - since >= this.timeoutMs) {
          const action = it.kind === "recv"
            ? `receive ${it.bytes} bytes from it`
            : `send ${it.bytes} bytes to it`;
          this.#fail(
            new CommError(
              `rank ${this.rank}: timed out after ${(this.timeoutMs / 1000).toFixed(1)} s with ` +
                `no progress from rank ${it.peer} while waiting to ${action} (${group.what}); ` +
                `the limit is DISTFLASH_COMM_TIMEOUT_S`,
              it.peer,
            ),
          );
          return;
        }
        next = Math.min(next, since + this.timeoutMs);
      }
      group.timer = setTimeout(check, Math.max(1, next - now));
    };
    group.timer = setTimeout(check, this.timeoutMs);
  }

  #postSend(comm: number, item: Item, data: Uint8Array): void {
    const peer = item.peer;
    const ch = this.#channel(comm, peer);
    const seq = ch.sendSeq++;
    if (peer === this.rank) {
      this.#arrive(comm, peer, seq, data);
      this.#complete(item);
      return;
    }
    const link = this.#links[peer]!;
    if (link.ended || link.peerBye) {
      throw new CommError(
        `rank ${this.rank}: cannot send to rank ${peer}: it has closed its communicator`,
        peer,
      );
    }
    const head = header(T_DATA, comm, this.rank, seq, data.length);
    const progress = () => this.#activity[peer] = performance.now();
    const written = link.chain.then(async () => {
      if (this.#broken) throw this.#broken;
      await writeAll(link.conn, head, progress);
      await writeAll(link.conn, data, progress);
    });
    link.chain = written.catch(() => {});
    written.then(
      () => this.#complete(item),
      (error) => {
        if (this.#broken) return;
        this.#fail(
          new CommError(
            `rank ${this.rank}: sending to rank ${peer} failed (${error.message}); ` +
              `did rank ${peer} exit or crash?`,
            peer,
            { cause: error },
          ),
        );
      },
    );
  }

  #postRecv(comm: number, item: Item, buf: Uint8Array): void {
    const peer = item.peer;
    const ch = this.#channel(comm, peer);
    const seq = ch.recvSeq++;
    const early = ch.arrived.get(seq);
    if (early) {
      ch.arrived.delete(seq);
      this.#checkSize(comm, peer, seq, early.length, buf.length);
      buf.set(early);
      this.#complete(item);
      return;
    }
    const link = this.#links[peer];
    if (peer !== this.rank && (link!.ended || link!.peerBye)) {
      throw new CommError(
        `rank ${this.rank}: cannot receive from rank ${peer}: it has closed its communicator`,
        peer,
      );
    }
    ch.posted.set(seq, { buf, item });
  }

  #checkSize(comm: number, peer: number, seq: number, sent: number, expected: number): void {
    if (sent === expected) return;
    throw new CommError(
      `rank ${peer} sent ${sent} bytes but rank ${this.rank} expected ${expected} ` +
        `(communicator ${this.#name(comm)}, message ${seq} between them): the ranks' operations ` +
        `are out of step`,
      peer,
    );
  }

  /** A whole message from `peer` (already read). */
  #arrive(comm: number, peer: number, seq: number, data: Uint8Array): void {
    const ch = this.#channel(comm, peer);
    this.#checkOrder(ch, comm, peer, seq);
    const posted = ch.posted.get(seq);
    if (!posted) {
      ch.arrived.set(seq, data);
      return;
    }
    ch.posted.delete(seq);
    this.#checkSize(comm, peer, seq, data.length, posted.buf.length);
    posted.buf.set(data);
    this.#complete(posted.item);
  }

  #checkOrder(ch: Channel, comm: number, peer: number, seq: number): void {
    if (seq !== ch.arriveSeq) {
      throw new CommError(
        `message ${seq} from rank ${peer} on ${this.#name(comm)} arrived when ${ch.arriveSeq} ` +
          `was due (corrupt stream)`,
        peer,
      );
    }
    ch.arriveSeq++;
  }

  async #readLoop(link: Link): Promise<void> {
    const peer = link.peer;
    const reader = link.reader;
    reader.onBytes = () => this.#activity[peer] = performance.now();
    const head = new Uint8Array(HEADER_BYTES);
    const view = new DataView(head.buffer);
    const readFull = async (buf: Uint8Array) => {
      if (!await reader.readFull(buf) && buf.length > 0) {
        throw new Error("connection closed in the middle of a message");
      }
    };
    try {
      for (;;) {
        if (!await reader.readFull(head)) break;
        if (view.getUint32(0, true) !== MAGIC) throw new Error("bad message header");
        const type = view.getUint32(4, true);
        if (type === T_BYE) {
          link.peerBye = true;
          this.#onBye(link);
          continue;
        }
        if (type !== T_DATA) throw new Error(`unexpected message type ${type}`);
        const comm = view.getUint32(8, true);
        const seq = view.getFloat64(16, true);
        const length = view.getFloat64(24, true);
        const ch = this.#channel(comm, peer);
        const posted = ch.posted.get(seq);
        if (posted && posted.buf.length === length) {
          this.#checkOrder(ch, comm, peer, seq);
          await readFull(posted.buf);
          ch.posted.delete(seq);
          this.#complete(posted.item);
        } else {
          const data = new Uint8Array(length);
          await readFull(data);
          this.#arrive(comm, peer, seq, data);
        }
      }
    } catch (error) {
      if (this.#broken || link.ended) return;
      link.ended = true;
      this.#closeConn(link);
      if (this.#closing) return this.#checkAllEnded();
      this.#fail(
        error instanceof CommError ? error : new CommError(
          `rank ${this.rank} lost its connection to rank ${peer} (${(error as Error).message}); ` +
            `did rank ${peer} exit or crash?`,
          peer,
          { cause: error },
        ),
      );
      return;
    }
    // End of stream.
    link.ended = true;
    this.#closeConn(link);
    if (this.#broken) return;
    if (this.#closing) return this.#checkAllEnded();
    if (!link.peerBye) {
      this.#fail(
        new CommError(
          `rank ${peer} closed its connection to rank ${this.rank} unexpectedly ` +
            `(it exited or crashed)`,
          peer,
        ),
      );
    }
  }

  #onBye(link: Link): void {
    if (this.#closing) return;
    for (const group of this.#groups) {
      for (const it of group.items) {
        if (!it.done && it.peer === link.peer && it.kind === "recv") {
          this.#fail(
            new CommError(
              `rank ${link.peer} closed its communicator while rank ${this.rank} was still ` +
                `waiting for ${it.bytes} bytes from it (${group.what})`,
              link.peer,
            ),
          );
          return;
        }
      }
    }
  }

  #closeConn(link: Link): void {
    try {
      link.conn.close();
    } catch { /* already closed */ }
  }

  #fail(error: CommError): void {
    if (this.#broken) return;
    this.#broken = error;
    for (const group of [...this.#groups]) this.#settle(group, error);
    for (const link of this.#links) {
      if (!link) continue;
      link.ended = true;
      this.#closeConn(link);
    }
    this.#channels.clear();
    this.#allEnded?.();
  }

  #checkAllEnded(): void {
    if (this.#links.every((l) => !l || l.ended)) this.#allEnded?.();
  }

  /**
   * Orderly close: sends a goodbye on every socket, waits (at most `lingerMs`) for every peer's
   * goodbye, then closes. Pending operations reject.
   */
  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    if (this.#broken) return this.#closing = Promise.resolve();
    this.#closing = new Promise<void>((resolve) => {
      const error = new CommError("the host transport was closed with operations pending");
      for (const group of [...this.#groups]) this.#settle(group, error);
      const timer = setTimeout(() => {
        for (const link of this.#links) {
          if (link) link.ended = true;
        }
        this.#allEnded?.();
      }, this.lingerMs);
      this.#allEnded = () => {
        clearTimeout(timer);
        for (const link of this.#links) if (link) this.#closeConn(link);
        resolve();
      };
      const bye = header(T_BYE, 0, this.rank, 0, 0);
      for (const link of this.#links) {
        if (!link || link.ended) continue;
        link.chain = link.chain
          .then(() => writeAll(link.conn, bye))
          .then(() => link.conn.closeWrite())
          .catch(() => {});
      }
      this.#checkAllEnded();
    });
    return this.#closing;
  }

  /** Drops every socket at once; pending operations reject. Never waits. */
  abort(reason = "the host transport was aborted"): void {
    this.#fail(new CommError(reason));
    this.#closing ??= Promise.resolve();
  }
}

// ---------------------------------------------------------------------------------------------

export interface HostCommunicatorOptions extends HostMeshOptions {
  store: TcpStore;
  rank: number;
  size: number;
  device: Device;
}

/** Builds the mesh and returns the world communicator (which then owns the mesh and the store). */
export async function createHostCommunicator(
  options: HostCommunicatorOptions,
): Promise<HostCommunicator> {
  const mesh = await HostMesh.establish(options.store, options.rank, options.size, options);
  return new HostCommunicator(
    mesh,
    options.device,
    Array.from({ length: options.size }, (_, r) => r),
    "world",
    options.store,
  );
}

/** A communicator over some of the mesh's ranks. */
export class HostCommunicator implements Communicator {
  readonly rank: number;
  readonly size: number;
  readonly id: number;
  readonly #subgroups = new Map<string, number>();
  #closed = false;

  constructor(
    readonly mesh: HostMesh,
    readonly device: Device,
    /** Global ranks of the members, in this communicator's rank order. */
    readonly members: number[],
    readonly name: string,
    /** Set on the world communicator, which closes the store with the mesh. */
    readonly store?: TcpStore,
  ) {
    this.rank = members.indexOf(mesh.rank);
    if (this.rank < 0) throw new CommError(`rank ${mesh.rank} is not in ${name}`);
    this.size = members.length;
    this.id = hash32(name);
    mesh.register(this.id, name);
  }

  #transfer(ops: HostOp[], what: string): Promise<void> {
    if (this.#closed) return Promise.reject(new CommError(`${this.name} is closed`));
    for (const op of ops) op.peer = this.members[op.peer];
    return this.mesh.transfer(this.id, ops, `${what} on ${this.name}`);
  }

  #read(ptr: DevicePtr, bytes: number, stream: Stream): Uint8Array {
    const out = new Uint8Array(bytes);
    if (bytes > 0) this.device.download(out, ptr, stream);
    return out;
  }

  #write(ptr: DevicePtr, data: Uint8Array, stream: Stream): void {
    if (data.length > 0) this.device.upload(ptr, data, stream);
  }

  async exchange(ops: P2P[], stream: Stream = 0n): Promise<void> {
    checkP2P(ops, this.size);
    const wire: HostOp[] = ops.map((op) => ({
      kind: op.kind,
      peer: op.peer,
      data: op.kind === "send" ? this.#read(op.ptr, op.bytes, stream) : new Uint8Array(op.bytes),
    }));
    await this.#transfer(wire, `exchange of ${ops.length} ops`);
    ops.forEach((op, i) => {
      if (op.kind === "recv") this.#write(op.ptr, wire[i].data, stream);
    });
  }

  /** Sends parts[q] to every other rank q and receives sizes[q] bytes from each; own part kept. */
  async #allToAll(parts: Uint8Array[], sizes: number[], what: string): Promise<Uint8Array[]> {
    const ops: HostOp[] = [];
    const got: Uint8Array[] = new Array(this.size);
    for (let q = 0; q < this.size; q++) {
      if (q === this.rank) {
        got[q] = parts[q];
        continue;
      }
      ops.push({ kind: "send", peer: q, data: parts[q] });
      got[q] = new Uint8Array(sizes[q]);
      ops.push({ kind: "recv", peer: q, data: got[q] });
    }
    await this.#transfer(ops, what);
    return got;
  }

  /** Element offsets of the P chunks of `count` elements (the last ones one shorter). */
  #chunks(count: number): number[] {
    return Array.from({ length: this.size + 1 }, (_, i) => Math.floor((i * count) / this.size));
  }

  async allReduceSum(
    ptr: DevicePtr,
    count: number,
    dtype: CommDType,
    stream: Stream = 0n,
  ): Promise<void> {
    checkCount(count);
    const e = commDTypeBytes(dtype);
    if (this.size === 1 || count === 0) return this.#checkOpen();
    const data = this.#read(ptr, count * e, stream);
    const at = this.#chunks(count).map((c) => c * e);
    const mine = at[this.rank + 1] - at[this.rank];
    const parts = Array.from({ length: this.size }, (_, q) => data.subarray(at[q], at[q + 1]));
    const contributions = await this.#allToAll(
      parts,
      parts.map(() => mine),
      "all-reduce (reduce-scatter phase)",
    );
    const reduced = sumHost(contributions, dtype);
    const gathered = await this.#allToAll(
      parts.map(() => reduced),
      parts.map((p) => p.length),
      "all-reduce (all-gather phase)",
    );
    gathered.forEach((g, q) => data.set(g, at[q]));
    this.#write(ptr, data, stream);
  }

  async allGather(
    send: DevicePtr,
    recv: DevicePtr,
    countPerRank: number,
    dtype: CommDType,
    stream: Stream = 0n,
  ): Promise<void> {
    checkCount(countPerRank);
    const bytes = countPerRank * commDTypeBytes(dtype);
    const data = this.#read(send, bytes, stream);
    const got = await this.#allToAll(
      new Array(this.size).fill(data),
      new Array(this.size).fill(bytes),
      "all-gather",
    );
    const out = new Uint8Array(bytes * this.size);
    got.forEach((g, q) => out.set(g, q * bytes));
    this.#write(recv, out, stream);
  }

  async reduceScatterSum(
    send: DevicePtr,
    recv: DevicePtr,
    countPerRank: number,
    dtype: CommDType,
    stream: Stream = 0n,
  ): Promise<void> {
    checkCount(countPerRank);
    const bytes = countPerRank * commDTypeBytes(dtype);
    const data = this.#read(send, bytes * this.size, stream);
    const parts = Array.from(
      { length: this.size },
      (_, q) => data.subarray(q * bytes, (q + 1) * bytes),
    );
    const got = await this.#allToAll(parts, parts.map(() => bytes), "reduce-scatter");
    this.#write(recv, sumHost(got, dtype), stream);
  }

  async broadcast(
    ptr: DevicePtr,
    count: number,
    dtype: CommDType,
    root: number,
    stream: Stream = 0n,
  ): Promise<void> {
    checkCount(count);
    checkRank(root, this.size, "broadcast root");
    const bytes = count * commDTypeBytes(dtype);
    if (this.size === 1) return this.#checkOpen();
    if (this.rank === root) {
      const data = this.#read(ptr, bytes, stream);
      const ops: HostOp[] = [];
      for (let q = 0; q < this.size; q++) {
        if (q !== root) ops.push({ kind: "send", peer: q, data });
      }
      await this.#transfer(ops, "broadcast");
    } else {
      const data = new Uint8Array(bytes);
      await this.#transfer([{ kind: "recv", peer: root, data }], "broadcast");
      this.#write(ptr, data, stream);
    }
  }

  async barrier(): Promise<void> {
    const empty = new Uint8Array(0);
    await this.#allToAll(
      new Array(this.size).fill(empty),
      new Array(this.size).fill(0),
      "barrier",
    );
  }

  #checkOpen(): void {
    if (this.#closed) throw new CommError(`${this.name} is closed`);
    if (this.mesh.error) throw this.mesh.error;
  }

  subgroup(ranks: number[]): Promise<Communicator> {
    try {
      this.#checkOpen();
      checkSubgroup(ranks, this.size, this.rank);
      const key = ranks.join(",");
      const k = this.#subgroups.get(key) ?? 0;
      this.#subgroups.set(key, k + 1);
      const members = ranks.map((r) => this.members[r]);
      return Promise.resolve(
        new HostCommunicator(this.mesh, this.device, members, `${this.name}/[${key}]#${k}`),
      );
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** Orderly close; on the world communicator also closes the mesh and the store. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (!this.store) {
      this.mesh.unregister(this.id);
      return;
    }
    await this.mesh.close();
    await this.store.close();
  }

  /** Drops every socket of the job's mesh (and the store connection, on the world) at once. */
  abort(): void {
    this.#closed = true;
    this.mesh.abort();
    this.store?.abort();
  }

  /** Nothing to wait for: host operations are complete when their promise resolves. */
  synchronize(_stream?: Stream): Promise<void> {
    try {
      this.#checkOpen();
      return Promise.resolve();
    } catch (error) {
      return Promise.reject(error);
    }
  }
}
