/**
 * The rendezvous store's server side, which rank 0 hosts on a thread of its own
 * (ThreadedStoreServer, running StoreServer in store_worker.ts). It keeps the keys, answers `get`
 * once a key exists, and spreads bad news: when a rank's connection drops without a goodbye it
 * tells every other rank which rank went away. Separate from the client (store_client.ts), which
 * every rank runs, because it is where the store's trust rules are enforced.
 *
 * It opens every connection with a challenge and answers a frame without the connection's proof of
 * the job's secret (store_protocol.ts, storeProof) with an error and closes that connection. Before
 * a connection has shown the secret its frames may not exceed 64 KiB, and it must show it within
 * 10 s; frames are at most 64 MiB. It keeps at most `maxConnections` connections that showed the
 * secret, and at most MAX_UNTRUSTED that have not yet: a new connection beyond that closes the
 * oldest one still unauthenticated, so a local process holding connections open cannot starve
 * the ranks (whose first frame carries the proof). Such closings are reported on stderr.
 *
 * @module
 */
import { MasterPortTakenError, RendezvousError } from "./comm.ts";
import { MIN_SECRET_LENGTH, sameSecret } from "./job_secret.ts";
import { ConnReader, formatAddress } from "./sockets.ts";
import {
  decoder,
  encodeFrame,
  encoder,
  MAX_FRAME,
  MAX_UNAUTHENTICATED_FRAME,
  newNonce,
  readFrame,
  type StoreHeader,
  storeProof,
  Writer,
} from "./store_protocol.ts";

/** Time a new connection has to show the secret. */
const AUTH_TIMEOUT_MS = 10_000;
/** Connections that have not shown the secret yet, kept at most (the oldest is closed first). */
export const MAX_UNTRUSTED = 32;

interface ServerClient {
  conn: Deno.TcpConn;
  writer: Writer;
  rank?: number;
  bye: boolean;
  /** It has shown the job secret. */
  trusted: boolean;
  /** The proof of the secret its requests must carry (storeProof over its challenge). */
  proof: string;
  done: Promise<void>;
}

function addrOf(addr: Deno.Addr): [string, number] {
  const a = addr as Deno.NetAddr;
  return [a.hostname, a.port];
}

/** The store's server side; rank 0 runs it inside its own process. */
export class StoreServer {
  readonly #listener: Deno.TcpListener;
  readonly #data = new Map<string, Uint8Array>();
  readonly #waiters = new Map<string, ((value: Uint8Array) => void)[]>();
  readonly #clients = new Set<ServerClient>();
  #closing = false;
  #closed?: Promise<void>;
  /** Unauthenticated connections closed to make room, reported on stderr. */
  #evicted = 0;

  private constructor(
    listener: Deno.TcpListener,
    private readonly secret: string,
    private readonly maxConnections: number,
  ) {
    this.#listener = listener;
    this.#acceptLoop();
  }

  /**
   * Listens on hostname:port (port 0: any free port), answering only requests that carry
   * `secret`, with at most `maxConnections` connections at a time.
   */
  static listen(
    hostname: string,
    port: number,
    secret: string,
    maxConnections = 1024,
  ): StoreServer {
    if (secret.length < MIN_SECRET_LENGTH) {
      throw new RendezvousError(`the store's secret must have >= ${MIN_SECRET_LENGTH} characters`);
    }
    try {
      return new StoreServer(
        Deno.listen({ hostname, port, transport: "tcp" }),
        secret,
        maxConnections,
      );
    } catch (error) {
      const inUse = error instanceof Deno.errors.AddrInUse;
      throw new (inUse ? MasterPortTakenError : RendezvousError)(
        `rank 0 cannot host the rendezvous store at ${formatAddress(hostname, port)}: ` +
          `${(error as Error).message} (${
            inUse
              ? `is MASTER_PORT ${port} in use?`
              : `check --master-addr (MASTER_ADDR ${hostname}): it must be an address of ` +
                "rank 0's node"
          })`,
        { cause: error },
      );
    }
  }

  get port(): number {
    return (this.#listener.addr as Deno.NetAddr).port;
  }

  get hostname(): string {
    return (this.#listener.addr as Deno.NetAddr).hostname;
  }

  async #acceptLoop(): Promise<void> {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch {
        return; // listener closed
      }
      if (this.#closing) {
        conn.close();
        continue;
      }
      const untrusted = [...this.#clients].filter((c) => !c.trusted);
      if (untrusted.length >= MAX_UNTRUSTED) this.#evict(untrusted[0]);
      conn.setNoDelay(true);
      const nonce = newNonce();
      const client: ServerClient = {
        conn,
        writer: new Writer(conn),
        bye: false,
        trusted: false,
        proof: storeProof(this.secret, nonce),
        done: Promise.resolve(),
      };
      this.#clients.add(client);
      // The connection's first frame: its challenge (the client answers with its proof).
      client.writer.write(encodeFrame({ event: "challenge", nonce })).catch(() => {});
      client.done = this.#serve(client);
    }
  }

  /** Closes `client`, which has not shown the secret, to make room for a new connection. */
  #evict(client: ServerClient): void {
    this.#clients.delete(client);
    let from = "an unknown address";
    try {
      from = formatAddress(...addrOf(client.conn.remoteAddr));
      client.conn.close();
    } catch { /* closed already */ }
    this.#evicted++;
    if ([1, 10, 100, 1000, 10000].includes(this.#evicted) || this.#evicted % 100000 === 0) {
      console.error(
        `distflash: rendezvous store on port ${this.port}: closed a connection from ${from} ` +
          `that had not shown the job secret, to make room for the ranks (${this.#evicted} so ` +
          `far; more than ${MAX_UNTRUSTED} connections were open without it: another process ` +
          "is connecting to the master port)",
      );
    }
  }

  async #serve(client: ServerClient): Promise<void> {
    const reader = new ConnReader(client.conn);
    let reason = "its connection closed";
    // A connection that never shows the secret is dropped instead of held open.
    const authTimer = setTimeout(() => {
      if (!client.trusted) client.conn.close();
    }, AUTH_TIMEOUT_MS);
    try {
      for (;;) {
        const frame = await readFrame(
          reader,
          client.trusted ? MAX_FRAME : MAX_UNAUTHENTICATED_FRAME,
        );
        if (frame === null) break;
        if (!sameSecret(frame.header.auth, client.proof)) {
          const error = "refused: this request does not carry the job's secret " +
            "(DISTFLASH_JOB_SECRET); only ranks of this job may use the rendezvous store";
          await client.writer.write(
            encodeFrame({ id: frame.header.id, ok: false, error, refused: true }),
          )
            .catch(() => {});
          client.rank = undefined; // an impostor's drop is no rank's failure
          break;
        }
        if (!client.trusted) {
          const trusted = [...this.#clients].filter((c) => c.trusted).length;
          if (trusted >= this.maxConnections) {
            const error = `refused: the rendezvous store already serves ${trusted} connections ` +
              `of this job (at most ${this.maxConnections})`;
            await client.writer.write(encodeFrame({ id: frame.header.id, ok: false, error }))
              .catch(() => {});
            break;
          }
        }
        client.trusted = true;
        this.#handle(client, frame.header, frame.value);
        if (client.bye) break;
      }
    } catch (error) {
      reason = `its connection failed: ${(error as Error).message}`;
    }
    clearTimeout(authTimer);
    if (!this.#clients.delete(client)) return; // evicted: closed and reported already
    try {
      client.conn.close();
    } catch { /* already closed */ }
    if (!client.bye && !this.#closing && client.rank !== undefined) {
      const event = encodeFrame({ event: "failed", rank: client.rank, reason });
      for (const other of this.#clients) other.writer.write(event).catch(() => {});
    }
  }

  #reply(
    client: ServerClient,
    id: number | undefined,
    header: StoreHeader,
    value?: Uint8Array,
  ): void {
    if (!id) return;
    client.writer.write(encodeFrame({ ...header, id }, value)).catch(() => {});
  }

  #put(key: string, value: Uint8Array): void {
    this.#data.set(key, value);
    const waiters = this.#waiters.get(key);
    if (waiters) {
      this.#waiters.delete(key);
      for (const w of waiters) w(value);
    }
  }

  #handle(client: ServerClient, header: StoreHeader, value: Uint8Array): void {
    const { op, id, key } = header;
    switch (op) {
      case "hello":
        client.rank = header.rank;
        return this.#reply(client, id, { ok: true });
      case "bye":
        client.bye = true;
        return;
      case "set":
        this.#put(key!, value.slice());
        return this.#reply(client, id, { ok: true });
      case "add": {
        const old = this.#data.get(key!);
        const next = (old ? Number(decoder.decode(old)) : 0) + (header.delta ?? 0);
        this.#put(key!, encoder.encode(String(next)));
        return this.#reply(client, id, { ok: true, value: next });
      }
      case "tryget": {
        const found = this.#data.get(key!);
        return this.#reply(client, id, { ok: true, found: found !== undefined }, found);
      }
      case "get": {
        const found = this.#data.get(key!);
        if (found !== undefined) return this.#reply(client, id, { ok: true, found: true }, found);
        const list = this.#waiters.get(key!) ?? [];
        list.push((v) => this.#reply(client, id, { ok: true, found: true }, v));
        this.#waiters.set(key!, list);
        return;
      }
      default:
        return this.#reply(client, id, { ok: false, error: `unknown store op ${op}` });
    }
  }

  /**
   * Stops accepting, waits (at most `lingerMs`) for connected ranks to say goodbye, then tells any
   * that remain that the store is shutting down and closes.
   */
  close(lingerMs = 30_000): Promise<void> {
    this.#closed ??= (async () => {
      this.#closing = true;
      try {
        this.#listener.close();
      } catch { /* already closed */ }
      if (this.#clients.size > 0) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([
          Promise.all([...this.#clients].map((c) => c.done)),
          new Promise<void>((resolve) => timer = setTimeout(resolve, lingerMs)),
        ]);
        clearTimeout(timer);
      }
      const bye = encodeFrame({ event: "shutdown" });
      await Promise.all([...this.#clients].map((c) => c.writer.write(bye).catch(() => {})));
      for (const c of this.#clients) {
        try {
          c.conn.close();
        } catch { /* already closed */ }
      }
      this.#clients.clear();
    })();
    return this.#closed;
  }

  /** Closes every connection at once. */
  abort(): void {
    this.#closing = true;
    try {
      this.#listener.close();
    } catch { /* already closed */ }
    for (const c of this.#clients) {
      try {
        c.conn.close();
      } catch { /* already closed */ }
    }
    this.#clients.clear();
  }
}

/** A running store server: in this thread (StoreServer) or in its own (ThreadedStoreServer). */
export interface StoreHost {
  readonly port: number;
  close(lingerMs?: number): Promise<void>;
  abort(): void;
}

/**
 * The store served from a Web Worker. The hosting rank's JavaScript thread blocks in device calls
 * (a stream synchronisation waiting for a collective); a store on that thread would then stop
 * answering the other ranks, which may need it to reach that collective: a deadlock. PyTorch's
 * TCPStore runs its server on a background thread for the same reason.
 */
export class ThreadedStoreServer implements StoreHost {
  #closed?: Promise<void>;
  private constructor(readonly port: number, readonly worker: Worker) {}

  static start(
    hostname: string,
    port: number,
    secret: string,
    maxConnections?: number,
  ): Promise<ThreadedStoreServer> {
    const worker = new Worker(new URL("./store_worker.ts", import.meta.url).href, {
      type: "module",
    });
    return new Promise((resolve, reject) => {
      worker.onerror = (event) => {
        event.preventDefault();
        worker.terminate();
        reject(new RendezvousError(`the rendezvous store thread failed: ${event.message}`));
      };
      worker.onmessage = (event: MessageEvent) => {
        if (event.data.error) {
          worker.terminate();
          const Class = event.data.portTaken ? MasterPortTakenError : RendezvousError;
          reject(new Class(event.data.error));
        } else resolve(new ThreadedStoreServer(event.data.port, worker));
      };
      worker.postMessage({ op: "listen", hostname, port, secret, maxConnections });
    });
  }

  close(lingerMs = 30_000): Promise<void> {
    this.#closed ??= new Promise<void>((resolve) => {
      this.worker.onmessage = () => resolve();
      this.worker.onerror = (event) => {
        event.preventDefault();
        resolve();
      };
      this.worker.postMessage({ op: "close", lingerMs });
    }).finally(() => this.worker.terminate());
    return this.#closed;
  }

  /** Ends the thread at once (its connections close with it). */
  abort(): void {
    this.worker.terminate();
  }
}
