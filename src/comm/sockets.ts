/**
 * TCP socket helpers shared by the rendezvous store and the host transport: exact buffered reads,
 * writes that report progress, connecting with retries, and address formatting. Separate because
 * both protocols build on them and neither should import the other for them.
 *
 * @module
 */
import { RendezvousError } from "./comm.ts";

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
