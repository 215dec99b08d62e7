/**
 * File reading and atomic writing shared by the safetensors and .npy code and the checkpoints: every
 * file of a checkpoint is written through writeFileAtomic (a temporary file flushed to disk, then
 * renamed), with the test-only fault and flush hooks of the save tests.
 */
import { basename } from "node:path";

/** Reads exactly buf.byteLength bytes from the file's position; `what` names the file in errors. */
export async function readFully(file: Deno.FsFile, buf: Uint8Array, what: string): Promise<void> {
  let off = 0;
  while (off < buf.byteLength) {
    const n = await file.read(buf.subarray(off));
    if (n === null || n === 0) {
      throw new Error(`${what}: unexpected end of file (${off} of ${buf.byteLength} bytes read)`);
    }
    off += n;
  }
}

/** Writes all of `data` at the file's position, in chunks. */
export async function writeFully(file: Deno.FsFile, data: Uint8Array): Promise<void> {
  const CHUNK = 64 << 20;
  let off = 0;
  while (off < data.byteLength) {
    const end = Math.min(data.byteLength, off + CHUNK);
    off += await file.write(data.subarray(off, end));
  }
}

function tempName(path: string): string {
  const rand = Math.floor(Math.random() * 0xffffffff).toString(16).padStart(8, "0");
  return `${path}.tmp-${Deno.pid}-${rand}`;
}

/**
 * TEST-ONLY fault injection, for the tests of failed saves (no small filesystem in CI): when the
 * environment variable names a substring of a file's name, writeFileAtomic writing that file fails
 * as a full disk does, after the body was written to the temporary file. Never set it in a real run.
 */
export const TEST_FAIL_WRITE_ENV = "DISTFLASH_TEST_FAIL_WRITE";

/** Throws an ENOSPC-like error when TEST_FAIL_WRITE_ENV matches the name of `path`'s file. */
function injectTestWriteFault(path: string): void {
  const pattern = Deno.env.get(TEST_FAIL_WRITE_ENV);
  if (!pattern || !basename(path).includes(pattern)) return;
  const error = new Error(
    `No space left on device (os error 28; injected by ${TEST_FAIL_WRITE_ENV})`,
  );
  throw Object.assign(error, { code: "ENOSPC" });
}

/**
 * TEST-ONLY fault injection, for the test of a full disk while appending (metrics.jsonl): with the
 * environment variable set to `<substring>:<n>`, the n-th {@link appendWhole} of this process to a
 * file whose name contains the substring writes half of its bytes, then fails as a full disk does.
 * Never set it in a real run.
 */
export const TEST_FAIL_APPEND_ENV = "DISTFLASH_TEST_FAIL_APPEND";

let appendFault = { setting: "", count: 0 };

/** Writes `data` to `file`, or half of it and an ENOSPC-like error (see TEST_FAIL_APPEND_ENV). */
async function writeWithTestAppendFault(file: Deno.FsFile, path: string, data: Uint8Array) {
  const setting = Deno.env.get(TEST_FAIL_APPEND_ENV) ?? "";
  const m = /^(.+):(\d+)$/.exec(setting);
  if (m && basename(path).includes(m[1])) {
    if (appendFault.setting !== setting) appendFault = { setting, count: 0 };
    if (++appendFault.count === Number(m[2])) {
      await writeFully(file, data.subarray(0, data.byteLength >> 1));
      const error = new Error(
        `No space left on device (os error 28; injected by ${TEST_FAIL_APPEND_ENV})`,
      );
      throw Object.assign(error, { code: "ENOSPC" });
    }
  }
  await writeFully(file, data);
}

/**
 * Appends `text` (as UTF-8) to `path`, creating it, whole or not at all: when the write fails
 * part-way (a full disk), the file is cut back to its length before the append, so that a
 * line-per-record file never ends in half a record. The error names the file.
 */
export async function appendWhole(path: string, text: string): Promise<void> {
  const data = new TextEncoder().encode(text);
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { write: true, append: true, create: true });
  } catch (e) {
    if (e instanceof Error && !e.message.includes(path)) e.message = `${path}: ${e.message}`;
    throw e;
  }
  try {
    const before = (await file.stat()).size;
    try {
      await writeWithTestAppendFault(file, path, data);
    } catch (e) {
      let undo = "";
      try {
        await file.truncate(before);
      } catch (t) {
        undo = `; cutting it back to ${before} bytes failed too (${(t as Error).message})`;
      }
      if (e instanceof Error) {
        if (!e.message.includes(path)) e.message = `${path}: ${e.message}`;
        e.message += undo;
      }
      throw e;
    }
  } finally {
    file.close();
  }
}

/**
 * TEST-ONLY durability hooks, for the tests that every promised flush happens: with
 * TEST_SYNC_LOG_ENV naming a file, every flush to disk of writeFileAtomic and of
 * {@link flushToDisk} appends the flushed path (the final path, for an atomic write) to it, one a
 * line, once the flush returned; with TEST_FAIL_SYNC_ENV naming a substring of a file's name, its
 * flush fails as an I/O error does. Never set them in a real run.
 */
export const TEST_SYNC_LOG_ENV = "DISTFLASH_TEST_SYNC_LOG";
/** See {@link TEST_SYNC_LOG_ENV}. */
export const TEST_FAIL_SYNC_ENV = "DISTFLASH_TEST_FAIL_SYNC";

/** Flushes `file` (open at `path`, or the temporary file of an atomic write of `path`) to disk. */
export async function flushToDisk(file: Deno.FsFile, path: string): Promise<void> {
  const pattern = Deno.env.get(TEST_FAIL_SYNC_ENV);
  if (pattern && basename(path).includes(pattern)) {
    const error = new Error(`Input/output error (os error 5; injected by ${TEST_FAIL_SYNC_ENV})`);
    throw Object.assign(error, { code: "EIO" });
  }
  await file.sync();
  const log = Deno.env.get(TEST_SYNC_LOG_ENV);
  if (log) Deno.writeTextFileSync(log, `${path}\n`, { append: true });
}

/**
 * Writes `path` by calling `body` on a fresh temporary file next to it, flushing it to disk, and
 * renaming it over `path`. On failure the temporary file is removed and `path` left untouched.
 * Every file of a checkpoint is written through here (see TEST_FAIL_WRITE_ENV). `mode` (less the
 * umask) is the new file's permissions from its creation on; default 0o666 less the umask.
 */
export async function writeFileAtomic(
  path: string,
  body: (file: Deno.FsFile) => Promise<void>,
  mode?: number,
): Promise<void> {
  const tmp = tempName(path);
  const file = await Deno.open(tmp, { write: true, createNew: true, mode });
  let ok = false;
  try {
    await body(file);
    injectTestWriteFault(path);
    await flushToDisk(file, path);
    file.close();
    ok = true;
    await Deno.rename(tmp, path);
  } catch (e) {
    if (!ok) file.close();
    await Deno.remove(tmp).catch(() => {});
    // OS errors (a full disk) do not say which file: name it.
    if (e instanceof Error && !e.message.includes(path)) e.message = `${path}: ${e.message}`;
    throw e;
  }
}

/** Writes `bytes` (or a string, as UTF-8) to `path` atomically (see writeFileAtomic). */
export function writeBytesAtomic(
  path: string,
  bytes: Uint8Array | string,
  mode?: number,
): Promise<void> {
  const data = typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes;
  return writeFileAtomic(path, (file) => writeFully(file, data), mode);
}
