/**
 * Strangers on the job's ports and files outside the model folder (README "Reliability"): the
 * CPU transport's mesh proves the job secret on every rank-to-rank connection (a rogue client
 * that connects first neither stalls the mesh nor poses as a rank); unauthenticated connections
 * to the rendezvous store cannot starve the ranks', and the job secret never crosses the wire to
 * it (a per-connection challenge and HMAC proof); checkpoints copy only the model folder's own
 * tokenizer and generation files.
 */
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { SAVING_RUN } from "./_util.ts";
import { train } from "../src/train/trainer.ts";
import { join } from "node:path";
import { existsSync } from "node:fs";
import { TcpStore } from "../src/comm/store_client.ts";
import { connectLinks } from "../src/comm/host_links.ts";
import { header, T_HELLO } from "../src/comm/host_wire.ts";
import { ConnReader, writeAll } from "../src/comm/sockets.ts";
import { encodeFrame, readFrame, storeProof } from "../src/comm/store_protocol.ts";

const secret = "security-test-secret-0123";

/** Rank `rank` of a 2-rank job's rendezvous store on 127.0.0.1:`port` (rank 0 hosts it; 0: any). */
function storeOn(port: number, rank: number): Promise<TcpStore> {
  return TcpStore.open({ host: "127.0.0.1", port, rank, size: 2, timeoutMs: 5000, secret });
}

/** Reads until the peer closes; true when it closed within `ms`. */
async function closedWithin(conn: Deno.TcpConn, ms: number): Promise<boolean> {
  const timer = setTimeout(() => conn.close(), ms);
  const buf = new Uint8Array(1024);
  try {
    while (await conn.read(buf) !== null) { /* the challenge, then nothing */ }
    return true;
  } catch {
    return false; // closed by the timer: the rank kept it open
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("mesh: rogue clients that connect first are refused and the ranks still connect", async () => {
  const store0 = await storeOn(0, 0);
  const port = store0.server!.port;
  const store1 = await storeOn(port, 1);
  const t0 = performance.now();
  const links0 = connectLinks(store0, 0, 2, 5000, "sec");
  const [host, meshPort] = (await store0.getText("sec/addr/0")).split(" ");
  // Before rank 1: one stranger says nothing, one sends a hello as rank 1 without the secret.
  const silent = await Deno.connect({ hostname: host, port: Number(meshPort) });
  const impostor = await Deno.connect({ hostname: host, port: Number(meshPort) });
  await writeAll(impostor, header(T_HELLO, 0, 1, 0, 0));
  await writeAll(impostor, new Uint8Array(64));
  const silentClosed = closedWithin(silent, 8000);
  const impostorClosed = closedWithin(impostor, 8000);
  const links1 = connectLinks(store1, 1, 2, 5000, "sec");
  const [a, b] = await Promise.all([links0, links1]);
  const took = performance.now() - t0;
  assert(took < 3000, `the mesh took ${took} ms`);
  assert(await impostorClosed, "the impostor's connection was closed");
  assert(await silentClosed, "the silent stranger's connection was closed once the mesh stood");
  // The links are the two ranks': bytes from rank 1 arrive at rank 0.
  await writeAll(b[0]!.conn, new Uint8Array([7, 8, 9]));
  const got = new Uint8Array(3);
  assert(await a[1]!.reader.readFull(got));
  assertEquals([...got], [7, 8, 9]);
  a[1]!.conn.close();
  b[0]!.conn.close();
  store1.close();
  await store0.close();
});

Deno.test("store: unauthenticated connections held open do not starve the ranks", async () => {
  const store0 = await storeOn(0, 0);
  const port = store0.server!.port;
  // More idle connections than the store keeps (2 * size + 16 = 20 before the fix).
  const idle: Deno.TcpConn[] = [];
  for (let i = 0; i < 60; i++) idle.push(await Deno.connect({ hostname: "127.0.0.1", port }));
  await new Promise((r) => setTimeout(r, 200));
  const store1 = await storeOn(port, 1);
  await store1.set("k", "v");
  assertEquals(await store0.getText("k"), "v");
  for (const c of idle) {
    try {
      c.close();
    } catch { /* closed by the store */ }
  }
  store1.close();
  await store0.close();
});

Deno.test("store: the secret never crosses the wire; a proof works on its own connection only", async () => {
  const store0 = await storeOn(0, 0);
  const port = store0.server!.port;
  // Rank 1 talks to the store through a relay that records every byte it sends.
  const relay = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const sent: Uint8Array[] = [];
  const relayed = (async () => {
    const from = await relay.accept();
    const to = await Deno.connect({ hostname: "127.0.0.1", port });
    const pump = async (a: Deno.Conn, b: Deno.Conn, record: boolean) => {
      const buf = new Uint8Array(65536);
      try {
        for (let n; (n = await a.read(buf)) !== null;) {
          if (record) sent.push(buf.slice(0, n));
          await writeAll(b, buf.subarray(0, n));
        }
      } catch { /* closed */ }
      try {
        b.close();
      } catch { /* closed */ }
    };
    await Promise.all([pump(from, to, true), pump(to, from, false)]);
  })();
  const store1 = await storeOn((relay.addr as Deno.NetAddr).port, 1);
  await store1.set("k", "v");
  assertEquals(await store0.getText("k"), "v");
  await store1.close();
  await relayed;
  relay.close();
  const wire = new TextDecoder().decode(
    new Uint8Array(sent.flatMap((b) => [...b])),
  );
  assert(wire.includes('"op":"set"'), "the relay saw the requests");
  assert(!wire.includes(secret), "the job secret crossed the wire");
  // A connection of our own: its challenge, then the secret itself, a proof for another
  // connection's challenge, and the right proof.
  const frames = async (conn: Deno.TcpConn) => {
    const reader = new ConnReader(conn);
    const challenge = (await readFrame(reader))!.header;
    assertEquals(challenge.event, "challenge");
    const ask = async (auth: string) => {
      await writeAll(conn, encodeFrame({ op: "tryget", key: "k", id: 7, auth }));
      return (await readFrame(reader))!.header;
    };
    return { nonce: challenge.nonce!, ask, proof: (n: string) => storeProof(secret, n) };
  };
  const a = await Deno.connect({ hostname: "127.0.0.1", port });
  const b = await Deno.connect({ hostname: "127.0.0.1", port });
  const fa = await frames(a), fb = await frames(b);
  assert(fa.nonce.length === 64 && fa.nonce !== fb.nonce, "a fresh challenge per connection");
  assertEquals((await fa.ask(secret)).refused, true, "the bare secret is refused");
  const replayed = await fb.ask(fb.proof(fa.nonce));
  assertEquals(replayed.refused, true, "another connection's proof is refused");
  const c = await Deno.connect({ hostname: "127.0.0.1", port });
  const fc = await frames(c);
  const ok = await fc.ask(fc.proof(fc.nonce));
  assertEquals([ok.ok, ok.found], [true, true]);
  for (const conn of [a, b, c]) {
    try {
      conn.close();
    } catch { /* closed by the store */ }
  }
  await store0.close();
});

const quiet = { log: () => {} };
const tiny = { ...SAVING_RUN, maxSteps: 1 };

/** A model folder (config.json and weights as a run saves them) at `dir`. */
async function modelAt(dir: string): Promise<void> {
  const saved = await Deno.makeTempDir();
  await train({ ...tiny, saveStrategy: "no", saveFinalModel: true, outputDir: saved }, quiet);
  await Deno.mkdir(dir, { recursive: true });
  for (const f of ["config.json", "model.safetensors"]) {
    await Deno.copyFile(join(saved, f), join(dir, f));
  }
  await Deno.remove(saved, { recursive: true });
}

Deno.test("model files: a tokenizer linked to a file outside the model folder is refused, never copied", async () => {
  const root = await Deno.makeTempDir();
  const model = join(root, "model"), out = join(root, "out");
  await modelAt(model);
  const secret = join(root, "secret.txt");
  await Deno.writeTextFile(secret, "api key 1234", { mode: 0o600 });
  await Deno.symlink(secret, join(model, "tokenizer.model"));
  const e = await assertRejects(() => train({ ...tiny, model, outputDir: out }, quiet));
  assert(e.message.includes(join(model, "tokenizer.model")), e.message);
  assert(e.message.includes("outside the model folder"), e.message);
  assert(!existsSync(join(out, "checkpoint-1")), "no checkpoint holds the secret");
  await Deno.remove(root, { recursive: true });
});

Deno.test("model files: an HF cache link is copied, no more readable than its source; generation_config.json must be JSON", async () => {
  const root = await Deno.makeTempDir();
  // The Hugging Face cache layout: snapshots/<rev>/tokenizer.model -> ../../blobs/<hash>.
  const repo = join(root, "models--org--tiny");
  const model = join(repo, "snapshots", "abc123"), out = join(root, "out");
  await modelAt(model);
  await Deno.mkdir(join(repo, "blobs"));
  const blob = join(repo, "blobs", "f00d");
  await Deno.writeFile(blob, new Uint8Array([1, 2, 3, 4]), { mode: 0o600 });
  await Deno.chmod(blob, 0o600);
  await Deno.symlink("../../blobs/f00d", join(model, "tokenizer.model"));
  await train({ ...tiny, model, outputDir: out }, quiet);
  const copy = join(out, "checkpoint-1", "tokenizer.model");
  assertEquals([...await Deno.readFile(copy)], [1, 2, 3, 4]);
  const mode = Deno.statSync(copy).mode! & 0o777;
  assertEquals(mode & 0o077, 0, `the copy's mode is ${mode.toString(8)}, its source's 600`);
  // A generation_config.json that is not JSON is refused before the run, naming it.
  const generation = join(model, "generation_config.json");
  await Deno.writeTextFile(generation, "{not json");
  const e = await assertRejects(() =>
    train({ ...tiny, model, outputDir: join(root, "out2") }, quiet)
  );
  assert(e.message.includes(generation) && e.message.includes("not valid JSON"), e.message);
  await Deno.remove(root, { recursive: true });
});
