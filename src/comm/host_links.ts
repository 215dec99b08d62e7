/**
 * Connecting the host transport's mesh: one TCP socket between every pair of ranks, found through
 * the rendezvous store. Separate from the message matching (host_mesh.ts) because it is a one-off
 * start-up protocol with failure modes of its own (a rank that never shows up, a stranger on the
 * port), and the mesh only needs the finished sockets.
 *
 * Every rank listens on an ephemeral port of the address through which it reaches the rendezvous
 * store (127.0.0.1 on one machine), publishes "host port" in the store, connects to every lower
 * rank and accepts a connection from every higher rank. The listener closes once the mesh is
 * complete. A connecting rank first sends a hello naming itself.
 *
 * @module
 */
import { CommError } from "./comm.ts";
import { header, HEADER_BYTES, MAGIC, parseHeader, T_HELLO } from "./host_wire.ts";
import { connectWithRetry, ConnReader, isLoopback, writeAll } from "./sockets.ts";
import type { TcpStore } from "./store_client.ts";

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
  const acceptAll = (async () => {
    let got = 0;
    while (got < expected) {
      const conn = await listener.accept();
      accepted.push(conn);
      conn.setNoDelay(true);
      const reader = new ConnReader(conn);
      const hello = new Uint8Array(HEADER_BYTES);
      if (!await reader.readFull(hello)) {
        conn.close(); // not one of ours
        continue;
      }
      const fields = parseHeader(hello);
      if (fields.magic !== MAGIC || fields.type !== T_HELLO) {
        conn.close(); // not one of ours
        continue;
      }
      const peer = fields.aux;
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
  return links;
}
