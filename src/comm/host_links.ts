/**
 * Connecting the host transport's mesh: one TCP socket between every pair of ranks, found through
 * the rendezvous store. Separate from the message matching (host_mesh.ts) because it is a one-off
 * start-up protocol with failure modes of its own (a rank that never shows up, a stranger on the
 * port), and the mesh only needs the finished sockets.
 *
 * Every rank listens on an ephemeral port of the address through which it reaches the rendezvous
 * store (127.0.0.1 on one machine), publishes "host port" in the store, connects to every lower
 * rank and accepts a connection from every higher rank. The listener closes once the mesh is
 * complete.
 *
 * Every connection proves the job secret both ways without sending it (challenge-response,
 * HMAC-SHA-256 keyed with the secret): the accepting rank sends a fresh 32-byte nonce; the
 * connecting rank answers with a hello naming itself, a nonce of its own and the HMAC of both
 * nonces, the key prefix and the two ranks; the accepting rank checks it and answers with its own
 * HMAC of the same, which the connecting rank checks. A connection that does not prove the
 * secret within HANDSHAKE_MS is closed (and reported once on stderr); handshakes run side by
 * side, so a stranger on the port can neither stall the mesh nor pose as a rank.
 *
 * @module
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { CommError } from "./comm.ts";
import { header, HEADER_BYTES, MAGIC, parseHeader, T_HELLO } from "./host_wire.ts";
import { connectWithRetry, ConnReader, formatAddress, isLoopback, writeAll } from "./sockets.ts";
import type { TcpStore } from "./store_client.ts";

/** Time a connection has to prove the job secret (the whole handshake). */
export const HANDSHAKE_MS = 10_000;
const NONCE_BYTES = 32;
const MAC_BYTES = 32;

/**
 * The proof of the job secret for the link from rank `from` to rank `to`: HMAC-SHA-256 keyed
 * with the secret over a label (which side answers), the key prefix, both ranks and both nonces.
 */
export function linkProof(
  secret: string,
  side: "connect" | "accept",
  prefix: string,
  from: number,
  to: number,
  acceptNonce: Uint8Array,
  connectNonce: Uint8Array,
): Uint8Array {
  const mac = createHmac("sha256", secret);
  mac.update(`distflash host link v1\0${side}\0${prefix}\0${from}\0${to}\0`);
  mac.update(acceptNonce);
  mac.update(connectNonce);
  return new Uint8Array(mac.digest());
}

const sameBytes = (a: Uint8Array, b: Uint8Array) => a.length === b.length && timingSafeEqual(a, b);

/** Reads exactly `n` bytes, or null when the connection ends or `ms` pass first (then closed). */
async function readWithin(
  conn: Deno.TcpConn,
  reader: ConnReader,
  n: number,
  ms: number,
): Promise<Uint8Array | null> {
  const out = new Uint8Array(n);
  const timer = setTimeout(() => {
    try {
      conn.close();
    } catch { /* closed */ }
  }, Math.max(1, ms));
  try {
    return await reader.readFull(out) ? out : null;
  } catch {
    return null;
  } finally {
    clearTimeout(timer);
  }
}

function remote(conn: Deno.TcpConn): string {
  try {
    const a = conn.remoteAddr as Deno.NetAddr;
    return formatAddress(a.hostname, a.port);
  } catch {
    return "an unknown address";
  }
}

/** The socket to one peer and what the mesh knows of its state. */
export interface Link {
  peer: number;
  conn: Deno.TcpConn;
  reader: ConnReader;
  /** Writes in flight, in order: each waits for the one before. */
  chain: Promise<void>;
  /** The peer has said goodbye. */
  peerBye: boolean;
  /** The socket is closed (or failed). */
  ended: boolean;
}

function makeLink(peer: number, conn: Deno.TcpConn, reader: ConnReader): Link {
  return { peer, conn, reader, chain: Promise.resolve(), peerBye: false, ended: false };
}

/**
 * Connects this rank to every other (every rank calls it at the same time). Returns one link per
 * global rank, undefined at this rank's own index. `prefix` names the store keys used.
 */
export async function connectLinks(
  store: TcpStore,
  rank: number,
  size: number,
  timeoutMs: number,
  prefix: string,
): Promise<(Link | undefined)[]> {
  const links: (Link | undefined)[] = new Array(size).fill(undefined);
  if (size === 1) return links;

  const host = isLoopback(store.options.host) ? "127.0.0.1" : store.localHost;
  const listener = Deno.listen({ hostname: host, port: 0, transport: "tcp" });
  const port = (listener.addr as Deno.NetAddr).port;
  const accepted: Deno.TcpConn[] = [];
  const expected = size - 1 - rank;
  let acceptError: Error | undefined;
  const secret = store.options.secret;
  let refused = 0;
  const refuse = (conn: Deno.TcpConn, why: string) => {
    if (refused++ === 0) {
      console.error(
        `distflash: host transport: rank ${rank} closed a connection from ${remote(conn)} ` +
          `(${why}); another process is connecting to this job's ports`,
      );
    }
    try {
      conn.close();
    } catch { /* closed */ }
  };
  /** One incoming connection's handshake; true once it is a rank's link. */
  const acceptOne = async (conn: Deno.TcpConn): Promise<void> => {
    const reader = new ConnReader(conn);
    const ends = performance.now() + Math.min(HANDSHAKE_MS, Math.max(1, timeoutMs));
    const acceptNonce = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
    try {
      await writeAll(conn, acceptNonce);
    } catch {
      return refuse(conn, "it closed before the handshake");
    }
    const hello = await readWithin(
      conn,
      reader,
      HEADER_BYTES + NONCE_BYTES + MAC_BYTES,
      ends - performance.now(),
    );
    if (hello === null) return refuse(conn, "it did not prove the job secret in time");
    const fields = parseHeader(hello.subarray(0, HEADER_BYTES));
    if (fields.magic !== MAGIC || fields.type !== T_HELLO) {
      return refuse(conn, "not a distflash rank's hello");
    }
    const peer = fields.aux;
    const connectNonce = hello.subarray(HEADER_BYTES, HEADER_BYTES + NONCE_BYTES);
    const proof = hello.subarray(HEADER_BYTES + NONCE_BYTES);
    const want = linkProof(secret, "connect", prefix, peer, rank, acceptNonce, connectNonce);
    if (!sameBytes(proof, want)) {
      return refuse(conn, `a hello as rank ${peer} without the proof of the job secret`);
    }
    if (peer <= rank || peer >= size || links[peer]) {
      acceptError = new CommError(`host transport: unexpected hello from rank ${peer}`);
      conn.close();
      return;
    }
    try {
      await writeAll(
        conn,
        linkProof(secret, "accept", prefix, peer, rank, acceptNonce, connectNonce),
      );
    } catch {
      return refuse(conn, `rank ${peer}'s connection closed during the handshake`);
    }
    links[peer] = makeLink(peer, conn, reader);
    if (++got === expected) allAccepted();
  };
  let got = 0;
  let allAccepted = () => {};
  const acceptAll = new Promise<void>((resolve) => {
    allAccepted = resolve;
    if (expected <= 0) resolve();
  });
  (async () => {
    for (;;) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
      } catch {
        return; // the listener closed
      }
      accepted.push(conn);
      conn.setNoDelay(true);
      acceptOne(conn).catch(() => refuse(conn, "its handshake failed"));
    }
  })();

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
      const reader = new ConnReader(conn);
      const wait = () => Math.min(HANDSHAKE_MS, Math.max(1, deadline - performance.now()));
      const fail = () => {
        try {
          conn.close();
        } catch { /* closed */ }
        return new CommError(
          `host transport: rank ${peer}'s port ${peerHost}:${peerPort} did not prove the job ` +
            "secret (another process may hold it, or the ranks' DISTFLASH_JOB_SECRET differ)",
          peer,
        );
      };
      const acceptNonce = await readWithin(conn, reader, NONCE_BYTES, wait());
      if (acceptNonce === null) throw fail();
      const connectNonce = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
      const hello = new Uint8Array(HEADER_BYTES + NONCE_BYTES + MAC_BYTES);
      hello.set(header(T_HELLO, 0, rank, 0, 0));
      hello.set(connectNonce, HEADER_BYTES);
      hello.set(
        linkProof(secret, "connect", prefix, rank, peer, acceptNonce, connectNonce),
        HEADER_BYTES + NONCE_BYTES,
      );
      await writeAll(conn, hello);
      const answer = await readWithin(conn, reader, MAC_BYTES, wait());
      const want = linkProof(secret, "accept", prefix, rank, peer, acceptNonce, connectNonce);
      if (answer === null || !sameBytes(answer, want)) throw fail();
      links[peer] = makeLink(peer, conn, reader);
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
  // Connections still in a handshake are strangers: every rank's link is in place.
  const linked = new Set(links.map((l) => l?.conn));
  for (const conn of accepted) {
    if (!linked.has(conn)) {
      try {
        conn.close();
      } catch { /* closed */ }
    }
  }
  return links;
}
