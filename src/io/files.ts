/** File reading shared by the safetensors and .npy readers. */

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
