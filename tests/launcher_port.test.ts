/**
 * The launcher's port race: the port it chose is taken by another job before rank 0 listens on it
 * (here deterministically, through `choosePort`). The job starts again on a new port and succeeds,
 * saying so once; a port the user gave is not retried and fails with a clear message; a rank
 * refused by another job's store reports the port as taken.
 */
import { assert, assertEquals, assertRejects } from "./assert.ts";
import { freePort, launch } from "../src/launch/launcher.ts";
import { MASTER_PORT_TAKEN_EXIT_CODE, MasterPortTakenError } from "../src/comm/comm.ts";
import { TcpStore } from "../src/comm/store_client.ts";
import { StoreServer } from "../src/comm/store_server.ts";

const trainArgs = (out: string) => [
  "train",
  "--model",
  "debug-tiny",
  "--synthetic",
  "--model-max-length",
  "16",
  "--per-device-train-batch-size",
  "2",
  "--max-steps",
  "1",
  "--save-strategy",
  "no",
  "--save-final-model",
  "false",
  "--device",
  "cpu",
  "--output-dir",
  out,
];

/** Launches a 2-rank training job with its output captured. */
async function job(
  out: string,
  port: { masterPort?: number; portIsDefault?: boolean; choosePort?: () => number },
) {
  const lines: string[] = [];
  let stderr = "";
  const result = await launch({
    nprocPerNode: 2,
    args: trainArgs(out),
    outputDir: out,
    ...port,
    graceMs: 2000,
    output: { stdout: () => {}, stderr: (b) => stderr += new TextDecoder().decode(b) },
    report: (l) => lines.push(l),
    handleSignals: false,
  });
  return { result, lines, stderr };
}

Deno.test("launcher port: a chosen port taken by another job's store is retried on a new one", async () => {
  // Another job's store, with its own secret, holds the port the launcher chooses first.
  const other = StoreServer.listen("127.0.0.1", 0, "another-jobs-secret-0123");
  const out = await Deno.makeTempDir();
  try {
    const chosen: number[] = [];
    const choosePort = () => {
      const port = chosen.length === 0 ? other.port : freePort();
      chosen.push(port);
      return port;
    };
    const { result, lines, stderr } = await job(out, { choosePort });
    const said = lines.join("\n");
    assertEquals(result.code, 0, `${said}\n${stderr}`);
    assertEquals(chosen.length, 2, said);
    assertEquals(result.masterPort, chosen[1]);
    const notes = lines.filter((l) => l.includes(`port ${other.port} was taken`));
    assertEquals(notes.length, 1, said);
    assert(notes[0].includes(`again on port ${chosen[1]}`), notes[0]);
    // The job trained: its one step is logged once.
    const metrics = Deno.readTextFileSync(`${out}/metrics.jsonl`).trim().split("\n");
    assertEquals(metrics.map((l) => JSON.parse(l).step), [1]);
  } finally {
    await other.close(0);
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("launcher port: a busy --master-port the user gave fails clearly, without a retry", async () => {
  const busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (busy.addr as Deno.NetAddr).port;
  const out = await Deno.makeTempDir();
  try {
    const { result, lines, stderr } = await job(out, { masterPort: port });
    const said = lines.join("\n");
    assertEquals(result.code, MASTER_PORT_TAKEN_EXIT_CODE, said);
    assertEquals(result.failed?.rank, 0, said);
    assert(stderr.includes(`is MASTER_PORT ${port} in use?`), stderr);
    assert(!said.includes("was taken"), said);
    assertEquals(result.masterPort, port);
  } finally {
    busy.close();
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("launcher port: the CLI's default port, held by another job, is retried on a free one", async () => {
  // Two jobs on one machine both start with 29500 unless told otherwise: the second must not fail.
  const busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (busy.addr as Deno.NetAddr).port;
  const out = await Deno.makeTempDir();
  try {
    const { result, lines, stderr } = await job(out, { masterPort: port, portIsDefault: true });
    const said = lines.join("\n");
    assertEquals(result.code, 0, `${said}\n${stderr}`);
    assert(result.masterPort !== port, said);
    assertEquals(lines.filter((l) => l.includes(`port ${port} was taken`)).length, 1, said);
  } finally {
    busy.close();
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("launcher port: a rank refused by another job's store exits as for a taken port", async () => {
  const other = StoreServer.listen("127.0.0.1", 0, "another-jobs-secret-0123");
  try {
    const options = { host: "127.0.0.1", port: other.port, rank: 1, size: 2 };
    const e = await assertRejects(
      () => TcpStore.connect({ ...options, secret: "this-jobs-secret-0123" }),
      MasterPortTakenError,
    );
    assert(e.message.includes("secret"), e.message);
  } finally {
    await other.close(0);
  }
});
