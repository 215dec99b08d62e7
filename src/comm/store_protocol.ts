/**
 * The rendezvous store's wire protocol, both directions: frames of `u32 n` (little-endian) followed
 * by n bytes: `u32 h`, h bytes of JSON header, then the value bytes (the rest of the frame). A
 * request carries an `id` (0 when no reply is wanted); its response carries the same id; events
 * ("failed", "shutdown", "challenge") carry none. The job secret never crosses the wire: the
 * server opens each connection with a challenge (a fresh random nonce), and every request carries
 * the connection's proof of the secret (`auth` = storeProof(secret, nonce), an HMAC), which a
 * listener on the network cannot reuse on another connection nor turn back into the secret.
 * Separate so the server (store_server.ts) and the client (store_client.ts) share one definition
 * of the bytes.
 *
 * @module
 */
import { createHmac } from "node:crypto";
import { RendezvousError } from "./comm.ts";
import { type ConnReader, UnexpectedEof, writeAll } from "./sockets.ts";

export interface StoreHeader {
  op?: "hello" | "set" | "get" | "tryget" | "add" | "bye";
  id?: number;
  key?: string;
  delta?: number;
  rank?: number;
  ok?: boolean;
  error?: string;
  found?: boolean;
  value?: number;
  event?: "failed" | "shutdown" | "challenge";
  /** The connection's challenge (hex), in its first frame from the server. */
  nonce?: string;
  reason?: string;
  /** The connection's proof of the job secret, storeProof (requests only). */
  auth?: string;
  /** An error response to a request without this store's secret: the store is another job's. */
  refused?: boolean;
}

/** Largest frame of a connection that has shown the secret, and of one that has not. */
export const MAX_FRAME = 64 << 20, MAX_UNAUTHENTICATED_FRAME = 64 << 10;
export const encoder = new TextEncoder();
export const decoder = new TextDecoder();

/** A fresh challenge: 32 random bytes, hex. */
export function newNonce(): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(32)),
    (b) => b.toString(16).padStart(2, "0"),
  )
    .join("");
}

/**
 * What a connection shows for the job secret: HMAC-SHA-256 keyed with the secret over the server's
 * challenge for that connection (hex). Distinct from the mesh's proofs (host_links.ts), which
 * cover other messages.
 */
export function storeProof(secret: string, nonce: string): string {
  return createHmac("sha256", secret).update(`distflash rendezvous store ${nonce}`).digest("hex");
}

/** One frame: its header as JSON, then `value`. */
export function encodeFrame(
  header: StoreHeader,
  value: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const h = encoder.encode(JSON.stringify(header));
  const frame = new Uint8Array(8 + h.length + value.length);
  const view = new DataView(frame.buffer);
  view.setUint32(0, 4 + h.length + value.length, true);
  view.setUint32(4, h.length, true);
  frame.set(h, 8);
  frame.set(value, 8 + h.length);
  return frame;
}

/** The next frame, or null at a clean end of stream; frames over `maxFrame` bytes are refused. */
export async function readFrame(
  reader: ConnReader,
  maxFrame = MAX_FRAME,
): Promise<{ header: StoreHeader; value: Uint8Array } | null> {
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
  const header = JSON.parse(decoder.decode(body.subarray(4, 4 + h))) as StoreHeader;
  return { header, value: body.subarray(4 + h) };
}

/** Serialises writes on one connection so frames never interleave. */
export class Writer {
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
