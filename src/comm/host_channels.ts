/**
 * The host mesh's channels: every (communicator, peer) pair is a channel whose messages are
 * numbered, so the k-th message on a channel fills the k-th receive posted on it. This file owns
 * that numbering, the receives waiting for their message and the messages waiting for their
 * receive, the communicators' names (for error messages) and the out-of-step checks. Separate from
 * host_mesh.ts, which owns the sockets, the pending operations and failure, because the matching
 * rules can be read (and reasoned about) without any of that.
 *
 * @module
 */
import { CommError } from "./comm.ts";

/** The message bookkeeping of one (communicator, peer) pair. */
export interface Channel<Item> {
  /** Number of the next message this rank sends on it. */
  sendSeq: number;
  /** Number of the next receive this rank posts on it. */
  recvSeq: number;
  /** Number of the next message due to arrive on it. */
  arriveSeq: number;
  /** Receives posted before their message arrived, by message number. */
  posted: Map<number, { buf: Uint8Array; item: Item }>;
  /** Messages that arrived before their receive was posted, by message number. */
  arrived: Map<number, Uint8Array>;
}

/** Every channel of one rank, created on first use, and the communicators' names. */
export class ChannelTable<Item> {
  readonly #channels = new Map<string, Channel<Item>>();
  readonly #names = new Map<number, string>();

  constructor(readonly rank: number) {}

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

  /** The channel of communicator `comm` with global rank `peer`. */
  get(comm: number, peer: number): Channel<Item> {
    const key = `${comm}/${peer}`;
    let ch = this.#channels.get(key);
    if (!ch) {
      ch = { sendSeq: 0, recvSeq: 0, arriveSeq: 0, posted: new Map(), arrived: new Map() };
      this.#channels.set(key, ch);
    }
    return ch;
  }

  /** Forgets every channel (the mesh is broken). */
  clear(): void {
    this.#channels.clear();
  }

  #name(comm: number): string {
    return this.#names.get(comm) ?? `#${comm}`;
  }

  /** Rejects a message whose size differs from its receive buffer's. */
  checkSize(comm: number, peer: number, seq: number, sent: number, expected: number): void {
    if (sent === expected) return;
    throw new CommError(
      `rank ${peer} sent ${sent} bytes but rank ${this.rank} expected ${expected} ` +
        `(communicator ${this.#name(comm)}, message ${seq} between them): the ranks' operations ` +
        `are out of step`,
      peer,
    );
  }

  /** Rejects a message that arrives out of order; else counts it as arrived. */
  checkOrder(ch: Channel<Item>, comm: number, peer: number, seq: number): void {
    if (seq !== ch.arriveSeq) {
      throw new CommError(
        `message ${seq} from rank ${peer} on ${this.#name(comm)} arrived when ${ch.arriveSeq} ` +
          `was due (corrupt stream)`,
        peer,
      );
    }
    ch.arriveSeq++;
  }
}
