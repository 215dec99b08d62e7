/**
 * The host transport's mesh: the sockets between all ranks of a job (connected by host_links.ts)
 * and the matching of messages over them. Separate from the communicator (host_communicator.ts),
 * which builds collectives out of `transfer` calls and never sees a socket.
 *
 * ## Messages
 * A 32-byte header (host_wire.ts) then the payload. Subgroups share the world's sockets: each
 * message names its communicator. Every (communicator, sender, receiver) triple is a channel whose
 * messages are numbered (host_channels.ts); the k-th message on a channel fills the k-th receive
 * posted on it. A receive posted before its message arrives is filled straight from the socket; a
 * message that arrives first waits in memory. Every socket is read all the time, whatever is
 * posted, so sends never wait on receives and no cycle of sends can deadlock.
 *
 * ## Failures
 * A socket that closes without a goodbye, a write that fails, a byte count that does not match, or
 * a peer that makes no progress for the timeout (DISTFLASH_COMM_TIMEOUT_S, default 300 s) breaks
 * the whole mesh: every pending and later operation rejects with a CommError naming the peer, and
 * all sockets are closed at once, so the other ranks learn of it within milliseconds too.
 *
 * @module
 */
import { checkRank, CommError, commTimeoutMs } from "./comm.ts";
import { ChannelTable } from "./host_channels.ts";
import { connectLinks, type Link } from "./host_links.ts";
import { header, HEADER_BYTES, MAGIC, parseHeader, T_BYE, T_DATA } from "./host_wire.ts";
import { writeAll } from "./sockets.ts";
import type { TcpStore } from "./store_client.ts";

/** One message to send or buffer to fill; `peer` is a global rank. */
export interface HostOp {
  kind: "send" | "recv";
  peer: number;
  data: Uint8Array;
}

/** One `transfer` call: its messages settle together, and its timeout watches all of them. */
interface Group {
  what: string;
  items: Item[];
  remaining: number;
  settled: boolean;
  resolve: () => void;
  reject: (error: Error) => void;
  timer?: ReturnType<typeof setTimeout>;
}

/** One message of a group, with when it was posted (for the no-progress timeout). */
interface Item {
  kind: "send" | "recv";
  peer: number;
  bytes: number;
  postedAt: number;
  done: boolean;
  group: Group;
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
  readonly #channels: ChannelTable<Item>;
  readonly #groups = new Set<Group>();
  readonly #activity: Float64Array;
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
    this.#channels = new ChannelTable<Item>(rank);
    for (const link of links) if (link) this.#readLoop(link);
  }

  /** Builds the full mesh through the store (every rank calls it at the same time). */
  static async establish(
    store: TcpStore,
    rank: number,
    size: number,
    options: HostMeshOptions = {},
  ): Promise<HostMesh> {
    const links = await connectLinks(
      store,
      rank,
      size,
      options.timeoutMs ?? commTimeoutMs(),
      options.prefix ?? "hostmesh",
    );
    return new HostMesh(rank, size, links, options);
  }

  /** Records a communicator's wire id; two different names with one id are refused. */
  register(id: number, name: string): void {
    this.#channels.register(id, name);
  }

  unregister(id: number): void {
    this.#channels.unregister(id);
  }

  /** Why the mesh is unusable, if it is. */
  get error(): CommError | undefined {
    return this.#broken;
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
    const ch = this.#channels.get(comm, peer);
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
    const ch = this.#channels.get(comm, peer);
    const seq = ch.recvSeq++;
    const early = ch.arrived.get(seq);
    if (early) {
      ch.arrived.delete(seq);
      this.#channels.checkSize(comm, peer, seq, early.length, buf.length);
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

  /** A whole message from `peer` (already read). */
  #arrive(comm: number, peer: number, seq: number, data: Uint8Array): void {
    const ch = this.#channels.get(comm, peer);
    this.#channels.checkOrder(ch, comm, peer, seq);
    const posted = ch.posted.get(seq);
    if (!posted) {
      ch.arrived.set(seq, data);
      return;
    }
    ch.posted.delete(seq);
    this.#channels.checkSize(comm, peer, seq, data.length, posted.buf.length);
    posted.buf.set(data);
    this.#complete(posted.item);
  }

  async #readLoop(link: Link): Promise<void> {
    const peer = link.peer;
    const reader = link.reader;
    reader.onBytes = () => this.#activity[peer] = performance.now();
    const head = new Uint8Array(HEADER_BYTES);
    const readFull = async (buf: Uint8Array) => {
      if (!await reader.readFull(buf) && buf.length > 0) {
        throw new Error("connection closed in the middle of a message");
      }
    };
    try {
      for (;;) {
        if (!await reader.readFull(head)) break;
        const { magic, type, comm, seq, length } = parseHeader(head);
        if (magic !== MAGIC) throw new Error("bad message header");
        if (type === T_BYE) {
          link.peerBye = true;
          this.#onBye(link);
          continue;
        }
        if (type !== T_DATA) throw new Error(`unexpected message type ${type}`);
        const ch = this.#channels.get(comm, peer);
        const posted = ch.posted.get(seq);
        if (posted && posted.buf.length === length) {
          this.#channels.checkOrder(ch, comm, peer, seq);
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
