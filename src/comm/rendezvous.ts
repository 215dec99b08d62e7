/**
 * Rendezvous: a small TCP key-value store hosted by rank 0 at MASTER_ADDR:MASTER_PORT (in the
 * manner of torch's TCPStore). Ranks use it to meet: to exchange the NCCL unique id, the host
 * transport's listening addresses, and to wait for each other (`barrier`). It also spreads bad
 * news: when a rank's connection drops without a goodbye, the store tells every other rank which
 * rank went away (`onFailure`), so a rank blocked on a GPU collective can abort it.
 *
 * Wire format, both directions: frames of `u32 n` (little-endian) followed by n bytes: `u32 h`,
 * h bytes of JSON header, then the value bytes (the rest of the frame). A request carries an `id`
 * (0 when no reply is wanted); its response carries the same id. `get` waits on the server until
 * the key exists, so the client bounds it with a timeout.
 *
 * Every request carries the job's secret (`auth`; see `jobSecret`): the store answers a frame
 * without it with an error and closes that connection, so a process that is not part of the job
 * can neither read nor overwrite keys. Before a connection has shown the secret its frames may
 * not exceed 64 KiB, and it must show it within 10 s; frames are at most 64 MiB; the store keeps
 * at most `maxConnections` connections. It listens on MASTER_ADDR only.
 *
 * Also home to the socket helpers the host transport shares (exact reads, writes, connecting with
 * retries).
 *
 * @module
 */
import { envSeconds } from "./comm.ts";

/** A rendezvous failure: nothing listening, a timeout, or the store going away. */
export class RendezvousError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "RendezvousError";
  }
}

/** Rendezvous timeout (DISTFLASH_RENDEZVOUS_TIMEOUT_S, default 300 s), in milliseconds. */
/** The shortest job secret accepted (characters). */
export const MIN_SECRET_LENGTH = 16;

/**
 * The job's rendezvous secret: DISTFLASH_JOB_SECRET, else the first line of the file named by
 * DISTFLASH_JOB_SECRET_FILE (for Slurm: a file in the shared job folder), else undefined.
 * Throws when the value is shorter than MIN_SECRET_LENGTH or the file cannot be read.
 */
export function jobSecret(env: Record<string, string | undefined>): string | undefined {
  let secret = env.DISTFLASH_JOB_SECRET?.trim();
  let from = "DISTFLASH_JOB_SECRET";
  if (!secret && env.DISTFLASH_JOB_SECRET_FILE) {
    from = `DISTFLASH_JOB_SECRET_FILE=${env.DISTFLASH_JOB_SECRET_FILE}`;
    try {
      secret = Deno.readTextFileSync(env.DISTFLASH_JOB_SECRET_FILE).split("\n")[0].trim();
    } catch (error) {
      throw new RendezvousError(`${from}: cannot read it: ${(error as Error).message}`);
    }
  }
  if (!secret) return undefined;
  if (secret.length < MIN_SECRET_LENGTH) {
    throw new RendezvousError(
      `${from}: the job secret must have at least ${MIN_SECRET_LENGTH} characters ` +
        "(e.g. the output of `openssl rand -hex 16`)",
    );
  }
  return secret;
}

/** A fresh random job secret (32 hex digits). */
export function newJobSecret(): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(16)),
    (b) => b.toString(16).padStart(2, "0"),
  )
    .join("");
}

/** Equality of two strings in a time that does not depend on where they differ. */
function sameSecret(a: unknown, b: string): boolean {
  if (typeof a !== "string" || a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < b.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

export function rendezvousTimeoutMs(env?: Record<string, string | undefined>): number {
  return envSeconds("DISTFLASH_RENDEZVOUS_TIMEOUT_S", 300, env);
}

// ---------------------------------------------------------------------------------------------
// Socket helpers

/** Thrown by ConnReader when the peer closes the connection in the middle of a frame. */
export class UnexpectedEof extends Error {
  constructor() {
    super("connection closed in the middle of a message");
    this.name = "UnexpectedEof";
  }
}

/** Buffered exact reads from a connection. */
export class ConnReader {
  #buf = new Uint8Array(64 * 1024);
  #start = 0;
  #end = 0;
  constructor(
    private readonly conn: Deno.Conn,
    /** Called with the byte count of every read (progress tracking). */
    public onBytes?: (n: number) => void,
  ) {}

  /**
   * Fills `out` completely. Returns false on a clean end of stream before the first byte; throws
   * UnexpectedEof if the stream ends part-way.
   */
  async readFull(out: Uint8Array): Promise<boolean> {
    let off = 0;
    const buffered = this.#end - this.#start;
    if (buffered > 0 && out.length > 0) {
      const n = Math.min(buffered, out.length);
      out.set(this.#buf.subarray(this.#start, this.#start + n));
      this.#start += n;
      off = n;
    }
    while (off < out.length) {
      const want = out.length - off;
      const direct = want >= this.#buf.length;
      const n = await this.conn.read(direct ? out.subarray(off) : this.#buf);
      if (n === null) {
        if (off === 0) return false;
        throw new UnexpectedEof();
      }
      this.onBytes?.(n);
      if (direct) {
        off += n;
      } else {
        const take = Math.min(n, want);
        out.set(this.#buf.subarray(0, take), off);
        this.#start = take;
        this.#end = n;
        off += take;
      }
    }
    return true;
  }
}

/** Writes all of `data`, reporting progress. */
export async function writeAll(
  conn: Deno.Conn,
  data: Uint8Array,
  onBytes?: (n: number) => void,
): Promise<void> {
  let off = 0;
  while (off < data.length) {
    const n = await conn.write(data.subarray(off));
    off += n;
    onBytes?.(n);
  }
}

/** Whether `host` names the local machine's loopback interface. */
export function isLoopback(host: string): boolean {
  return host === "localhost" || host.startsWith("127.") || host === "::1";
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Connects to host:port, retrying (refused, unreachable, unresolvable) until `timeoutMs` has
 * passed; the error then names the address and the last reason.
 */
export async function connectWithRetry(
  host: string,
  port: number,
  timeoutMs: number,
  what = "the rendezvous store",
): Promise<Deno.TcpConn> {
  const deadline = performance.now() + timeoutMs;
  let delay = 50;
  let last = "no attempt";
  for (;;) {
    const left = deadline - performance.now();
    if (left <= 0) break;
    try {
      const conn = await Deno.connect({
        hostname: host,
        port,
        signal: AbortSignal.timeout(Math.max(1, Math.min(left, 10_000))),
      });
      conn.setNoDelay(true);
      conn.setKeepAlive(true);
      return conn;
    } catch (error) {
      last = (error as Error).message;
    }
    await sleep(Math.min(delay, Math.max(0, deadline - performance.now())));
    delay = Math.min(delay * 2, 1000);
  }
  throw new RendezvousError(
    `could not reach ${what} at ${formatAddress(host, port)} within ` +
      `${(timeoutMs / 1000).toFixed(1)} s (last error: ${last}); is rank 0 running, and are ` +
      `MASTER_ADDR/MASTER_PORT right?`,
  );
}

/** host:port, with brackets around IPv6 literals. */
export function formatAddress(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

// ---------------------------------------------------------------------------------------------
// Framing

interface Header {
  op?: "hello" | "set" | "get" | "tryget" | "add" | "bye";
  id?: number;
  key?: string;
  delta?: number;
  rank?: number;
  ok?: boolean;
  error?: string;
  found?: boolean;
  value?: number;
  event?: "failed" | "shutdown";
  reason?: string;
  /** The job secret (requests only). */
  auth?: string;
}

/** Largest frame of a connection that has shown the secret, and of one that has not. */
const MAX_FRAME = 64 << 20, MAX_UNAUTHENTICATED_FRAME = 64 << 10;
/** Time a new connection has to show the secret. */
const AUTH_TIMEOUT_MS = 10_000;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function encodeFrame(header: Header, value: Uint8Array = new Uint8Array(0)): Uint8Array {
  const h = encoder.encode(JSON.stringify(header));
  const frame = new Uint8Array(8 + h.length + value.length);
  const view = new DataView(frame.buffer);
  view.setUint32(0, 4 + h.length + value.length, true);
  view.setUint32(4, h.length, true);
  frame.set(h, 8);
  frame.set(value, 8 + h.length);
  return frame;
}

async function readFrame(
  reader: ConnReader,
  maxFrame = MAX_FRAME,
): Promise<{ header: Header; value: Uint8Array } | null> {
  const lenBytes = new Uint8Array(4);
  if (!await reader.readFull(lenBytes)) return null;
  const n = new DataView(lenBytes.buffer).getUint32(0, true);
  if (n < 4 || n > maxFrame) {
    throw new RendezvousError(`malformed store frame (${n} bytes, at most ${maxFrame} allowed)`);
  }
  const body = new Uint8Array(n);
  if (!await reader.readFull(body)) throw new UnexpectedEof();
  const h = new DataView(body.buffer).getUint32(0, true);
  if (h > n - 4) throw new RendezvousError(`malformed store frame header (${h} bytes)`);
  const header = JSON.parse(decoder.decode(body.subarray(4, 4 + h))) as Header;
  return { header, value: body.subarray(4 + h) };
}

/** Serialises writes on one connection so frames never interleave. */
class Writer {
  #chain: Promise<void> = Promise.resolve();
  #failed = false;
  constructor(private readonly conn: Deno.Conn) {}
  write(frame: Uint8Array): Promise<void> {
    const next = this.#chain.then(() => {
      if (this.#failed) throw new RendezvousError("connection already failed");
      return writeAll(this.conn, frame);
    });
    this.#chain = next.catch(() => {
      this.#failed = true;
    });
    return next;
  }
}

// ---------------------------------------------------------------------------------------------
// Server

interface ServerClient {
  conn: Deno.TcpConn;
  writer: Writer;
  rank?: number;
  bye: boolean;
  /** It has shown the job secret. */
  trusted: boolean;
  done: Promise<void>;
}

/** The store's server side; rank 0 runs it inside its own process. */
export class StoreServer {
  readonly #listener: Deno.TcpListener;
  readonly #data = new Map<string, Uint8Array>();
  readonly #waiters = new Map<string, ((value: Uint8Array) => void)[]>();
  readonly #clients = new Set<ServerClient>();
  #closing = false;
  #closed?: Promise<void>;

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
      throw new RendezvousError(
        `rank 0 cannot host the rendezvous store at ${formatAddress(hostname, port)}: ` +
          `${(error as Error).message} (is MASTER_PORT ${port} in use?)`,
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
      if (this.#closing || this.#clients.size >= this.maxConnections) {
        conn.close();
        continue;
      }
      conn.setNoDelay(true);
      const client: ServerClient = {
        conn,
        writer: new Writer(conn),
        bye: false,
        trusted: false,
        done: Promise.resolve(),
      };
      this.#clients.add(client);
      client.done = this.#serve(client);
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
        if (!sameSecret(frame.header.auth, this.secret)) {
          const error = "refused: this request does not carry the job's secret " +
            "(DISTFLASH_JOB_SECRET); only ranks of this job may use the rendezvous store";
          await client.writer.write(encodeFrame({ id: frame.header.id, ok: false, error }))
            .catch(() => {});
          client.rank = undefined; // an impostor's drop is no rank's failure
          break;
        }
        client.trusted = true;
        this.#handle(client, frame.header, frame.value);
        if (client.bye) break;
      }
    } catch (error) {
      reason = `its connection failed: ${(error as Error).message}`;
    }
    clearTimeout(authTimer);
    this.#clients.delete(client);
    try {
      client.conn.close();
    } catch { /* already closed */ }
    if (!client.bye && !this.#closing && client.rank !== undefined) {
      const event = encodeFrame({ event: "failed", rank: client.rank, reason });
      for (const other of this.#clients) other.writer.write(event).catch(() => {});
    }
  }

  #reply(client: ServerClient, id: number | undefined, header: Header, value?: Uint8Array): void {
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

  #handle(client: ServerClient, header: Header, value: Uint8Array): void {
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
          reject(new RendezvousError(event.data.error));
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

// ---------------------------------------------------------------------------------------------
// Client

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
  /** The job's secret (see `jobSecret`), carried by every request. */
  secret: string;
}

/** A failure another rank reported through the store. */
export interface PeerFailure {
  rank: number;
  reason: string;
}

interface Pending {
  resolve: (frame: { header: Header; value: Uint8Array }) => void;
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
    if (!shutdown && this.options.rank !== 0) this.#fail({ rank: 0, reason: message });
    for (const p of this.#pending.values()) p.reject(this.#error);
    this.#pending.clear();
  }

  #request(
    header: Header,
    value: Uint8Array | undefined,
    timeoutMs: number,
    what: string = header.op ?? "reply",
  ): Promise<{ header: Header; value: Uint8Array }> {
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
          if (frame.header.ok === false) reject(new RendezvousError(frame.header.error ?? "error"));
          else resolve(frame);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
      this.#writer.write(encodeFrame({ ...header, id, auth: this.options.secret }, value)).catch(
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
      encodeFrame({ op: "set", key, id: 0, auth: this.options.secret }, bytes),
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
      await this.#writer.write(encodeFrame({ op: "bye", auth: this.options.secret })).catch(
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
