/**
 * Rendezvous: a small TCP key-value store hosted by rank 0 at MASTER_ADDR:MASTER_PORT (in the
 * manner of torch's TCPStore), and this file is every rank's connection to it. Ranks use it to
 * meet: to exchange the NCCL unique id, the host transport's listening addresses, and to wait for
 * each other (`barrier`). It also relays bad news: when a rank's connection drops without a
 * goodbye, the store tells every other rank which rank went away (`onFailure`), so a rank blocked
 * on a GPU collective can abort it. `get` waits on the server until the key exists, so the client
 * bounds it with a timeout.
 *
 * The wire format (with the challenge each connection answers with its proof of the job secret)
 * is in store_protocol.ts, the server in store_server.ts, the job secret's rules in job_secret.ts.
 *
 * @module
 */
import { envSeconds, MasterPortTakenError, RendezvousError } from "./comm.ts";
import { connectWithRetry, ConnReader, formatAddress, isLoopback } from "./sockets.ts";
import {
  decoder,
  encodeFrame,
  encoder,
  readFrame,
  type StoreHeader,
  storeProof,
  Writer,
} from "./store_protocol.ts";
import { type StoreHost, ThreadedStoreServer } from "./store_server.ts";

/** Rendezvous timeout (DISTFLASH_RENDEZVOUS_TIMEOUT_S, default 300 s), in milliseconds. */
export function rendezvousTimeoutMs(env?: Record<string, string | undefined>): number {
  return envSeconds("DISTFLASH_RENDEZVOUS_TIMEOUT_S", 300, env);
}

export interface StoreOptions {
  /** Address of the store (MASTER_ADDR). */
  host: string;
  /** Its port (MASTER_PORT). */
  port: number;
  /** This process's rank (announced to the store, which reports it if the connection drops). */
  rank: number;
  /** Number of ranks (the default participant count of a barrier). */
  size: number;
  /** Time to wait for the store to answer a connection, and default wait for keys (ms). */
  timeoutMs?: number;
  /** The job's secret (see `jobSecret`); requests carry a proof of it, never the secret. */
  secret: string;
}

/** A failure another rank reported through the store. */
export interface PeerFailure {
  rank: number;
  reason: string;
}

interface Pending {
  resolve: (frame: { header: StoreHeader; value: Uint8Array }) => void;
  reject: (error: Error) => void;
}

/** A rank's connection to the store. */
export class TcpStore {
  readonly address: string;
  readonly timeoutMs: number;
  /** The store server, on the rank hosting it (closed together with this client). */
  server?: StoreHost;
  readonly #conn: Deno.TcpConn;
  readonly #writer: Writer;
  readonly #pending = new Map<number, Pending>();
  readonly #listeners = new Set<(failure: PeerFailure) => void>();
  readonly #barriers = new Map<string, number>();
  #nextId = 1;
  #state: "open" | "closing" | "closed" = "open";
  #error?: Error;
  #failure?: PeerFailure;
  /** This connection's proof of the job secret, once the server's challenge arrived. */
  #proof = "";
  readonly #challenged = Promise.withResolvers<void>();

  private constructor(conn: Deno.TcpConn, readonly options: StoreOptions, timeoutMs: number) {
    this.#conn = conn;
    this.#writer = new Writer(conn);
    this.address = formatAddress(options.host, options.port);
    this.timeoutMs = timeoutMs;
    this.#readLoop();
  }

  /** Connects, retrying until the timeout; the error names the address when nothing answers. */
  static async connect(options: StoreOptions): Promise<TcpStore> {
    const timeoutMs = options.timeoutMs ?? rendezvousTimeoutMs();
    const conn = await connectWithRetry(options.host, options.port, timeoutMs);
    const store = new TcpStore(conn, options, timeoutMs);
    await store.#challenge(timeoutMs);
    await store.#request({ op: "hello", rank: options.rank }, undefined, timeoutMs);
    return store;
  }

  /**
   * Opens the store for a job: rank 0 hosts the server on its own thread, listening on `host`
   * only, and every rank, rank 0 included, connects.
   */
  static async open(options: StoreOptions): Promise<TcpStore> {
    let server: StoreHost | undefined;
    let port = options.port;
    if (options.rank === 0) {
      // Every rank holds one connection; the rest allows for ranks reconnecting after a retry.
      server = await ThreadedStoreServer.start(
        isLoopback(options.host) ? "127.0.0.1" : options.host,
        port,
        options.secret,
        2 * options.size + 16,
      );
      port = server.port;
    }
    try {
      const store = await TcpStore.connect({ ...options, port });
      store.server = server;
      return store;
    } catch (error) {
      server?.abort();
      throw error;
    }
  }

  /** The local address of this rank's connection to the store (reachable by the store host). */
  get localHost(): string {
    return (this.#conn.localAddr as Deno.NetAddr).hostname;
  }

  /** The first failure reported by the store, if any. */
  get failure(): PeerFailure | undefined {
    return this.#failure;
  }

  /** Calls `listener` when a rank's connection drops without a goodbye; returns an unsubscribe. */
  onFailure(listener: (failure: PeerFailure) => void): () => void {
    this.#listeners.add(listener);
    if (this.#failure) queueMicrotask(() => listener(this.#failure!));
    return () => this.#listeners.delete(listener);
  }

  #fail(failure: PeerFailure): void {
    if (this.#failure) return;
    this.#failure = failure;
    for (const l of [...this.#listeners]) {
      try {
        l(failure);
      } catch { /* a listener's own problem */ }
    }
  }

  /** Waits for the server's challenge (its first frame); closes the connection on a timeout. */
  async #challenge(timeoutMs: number): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        reject(
          new RendezvousError(
            `no challenge from the rendezvous store at ${this.address} within ` +
              `${(timeoutMs / 1000).toFixed(1)} s (rank ${this.options.rank}): is something ` +
              "else listening on MASTER_PORT?",
          ),
        );
      }, timeoutMs);
    });
    try {
      await Promise.race([this.#challenged.promise, late]);
    } catch (error) {
      this.#state = "closed";
      try {
        this.#conn.close();
      } catch { /* closed already */ }
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  async #readLoop(): Promise<void> {
    const reader = new ConnReader(this.#conn);
    let error: Error | undefined;
    let shutdown = false;
    try {
      for (;;) {
        const frame = await readFrame(reader);
        if (frame === null) break;
        const { header } = frame;
        if (header.event === "failed") {
          this.#fail({ rank: header.rank ?? -1, reason: header.reason ?? "unknown" });
        } else if (header.event === "shutdown") {
          shutdown = true;
        } else if (header.event === "challenge" && !this.#proof) {
          this.#proof = storeProof(this.options.secret, header.nonce ?? "");
          this.#challenged.resolve();
        } else if (header.id) {
          const p = this.#pending.get(header.id);
          if (p) {
            this.#pending.delete(header.id);
            p.resolve(frame);
          }
        }
      }
    } catch (error_) {
      error = error_ as Error;
    }
    if (this.#state !== "open") return;
    this.#state = "closed";
    try {
      this.#conn.close();
    } catch { /* already closed */ }
    const message = shutdown
      ? `the rendezvous store at ${this.address} has shut down`
      : `lost the connection to the rendezvous store at ${this.address} (hosted by rank 0)` +
        (error ? `: ${error.message}` : "");
    this.#error = new RendezvousError(message);
    this.#challenged.reject(this.#error);
    this.#challenged.promise.catch(() => {}); // settled by then when the challenge came
    if (!shutdown && this.options.rank !== 0) this.#fail({ rank: 0, reason: message });
    for (const p of this.#pending.values()) p.reject(this.#error);
    this.#pending.clear();
  }

  #request(
    header: StoreHeader,
    value: Uint8Array | undefined,
    timeoutMs: number,
    what: string = header.op ?? "reply",
  ): Promise<{ header: StoreHeader; value: Uint8Array }> {
    if (this.#state !== "open") {
      return Promise.reject(this.#error ?? new RendezvousError("the store connection is closed"));
    }
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(
          new RendezvousError(
            `timed out after ${(timeoutMs / 1000).toFixed(1)} s waiting for ${what} ` +
              `from the rendezvous store at ${this.address} (rank ${this.options.rank})`,
          ),
        );
      }, timeoutMs);
      this.#pending.set(id, {
        resolve: (frame) => {
          clearTimeout(timer);
          if (frame.header.ok === false) {
            // Refused for the secret: the port is another job's store (see MasterPortTakenError).
            const Class = frame.header.refused ? MasterPortTakenError : RendezvousError;
            reject(new Class(frame.header.error ?? "error"));
          } else resolve(frame);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
      this.#writer.write(encodeFrame({ ...header, id, auth: this.#proof }, value)).catch(
        (error) => {
          const p = this.#pending.get(id);
          if (p) {
            this.#pending.delete(id);
            p.reject(new RendezvousError(`store write failed: ${error.message}`));
          }
        },
      );
    });
  }

  /** Stores `value` under `key` (replacing any previous value). */
  async set(key: string, value: Uint8Array | string): Promise<void> {
    const bytes = typeof value === "string" ? encoder.encode(value) : value;
    await this.#request({ op: "set", key }, bytes, this.timeoutMs, `set "${key}"`);
  }

  /**
   * Sends a `set` without waiting for the reply; resolves once the request has left this process.
   * For a rank about to block its event loop (NCCL init) that must not leave a reply pending.
   */
  async post(key: string, value: Uint8Array | string): Promise<void> {
    if (this.#state !== "open") throw this.#error ?? new RendezvousError("store closed");
    const bytes = typeof value === "string" ? encoder.encode(value) : value;
    await this.#writer.write(
      encodeFrame({ op: "set", key, id: 0, auth: this.#proof }, bytes),
    );
  }

  /** The value of `key`, waiting until some rank sets it (at most `timeoutMs`). */
  async get(key: string, timeoutMs = this.timeoutMs): Promise<Uint8Array> {
    const frame = await this.#request({ op: "get", key }, undefined, timeoutMs, `key "${key}"`);
    return frame.value.slice();
  }

  /** `get` decoded as UTF-8. */
  async getText(key: string, timeoutMs?: number): Promise<string> {
    return decoder.decode(await this.get(key, timeoutMs));
  }

  /** The value of `key` if it is set now, else undefined. */
  async tryGet(key: string): Promise<Uint8Array | undefined> {
    const frame = await this.#request({ op: "tryget", key }, undefined, this.timeoutMs);
    return frame.header.found ? frame.value.slice() : undefined;
  }

  /** Adds `delta` to the integer counter `key` (0 if unset); returns the new value. */
  async add(key: string, delta: number): Promise<number> {
    const frame = await this.#request({ op: "add", key, delta }, undefined, this.timeoutMs);
    return frame.header.value!;
  }

  /**
   * Waits until `count` ranks (default: all) have called barrier with the same name. Names may be
   * reused: each call of a name is a new barrier, matched by how often this rank has used it.
   */
  async barrier(
    name: string,
    count = this.options.size,
    timeoutMs = this.timeoutMs,
  ): Promise<void> {
    const k = this.#barriers.get(name) ?? 0;
    this.#barriers.set(name, k + 1);
    const key = `barrier/${name}#${k}`;
    const arrived = await this.add(key, 1);
    if (arrived > count) {
      throw new RendezvousError(`barrier "${name}": ${arrived} ranks arrived, ${count} expected`);
    }
    if (arrived === count) await this.set(`${key}/done`, "1");
    await this.get(`${key}/done`, timeoutMs);
  }

  /** Says goodbye and closes; on the hosting rank also closes the server (after the others). */
  async close(): Promise<void> {
    if (this.#state === "open") {
      this.#state = "closing";
      for (const p of this.#pending.values()) p.reject(new RendezvousError("store closed"));
      this.#pending.clear();
      await this.#writer.write(encodeFrame({ op: "bye", auth: this.#proof })).catch(
        () => {},
      );
      try {
        this.#conn.close();
      } catch { /* already closed */ }
      this.#state = "closed";
    }
    await this.server?.close();
  }

  /** Drops the connection (and the server) at once; peers see this rank fail. */
  abort(): void {
    this.#state = "closed";
    for (const p of this.#pending.values()) p.reject(new RendezvousError("store aborted"));
    this.#pending.clear();
    try {
      this.#conn.close();
    } catch { /* already closed */ }
    this.server?.abort();
  }
}
