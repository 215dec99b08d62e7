/**
 * The host transport's message header: the one place that knows its 32-byte layout (magic, type,
 * communicator id, sender rank, sequence number, byte length). Separate so that the code that
 * connects the mesh (host_links.ts) and the code that matches messages (host_mesh.ts) read and
 * write the same bytes without either owning the other.
 *
 * @module
 */

/** "DFHT" in little-endian: frames that do not start with it are not ours. */
export const MAGIC = 0x54484644;
export const HEADER_BYTES = 32;
/** First message on a new socket: the connecting rank names itself (in `aux`). */
export const T_HELLO = 1;
/** A payload of `length` bytes follows. */
export const T_DATA = 2;
/** The sender has closed its communicator and will send nothing more. */
export const T_BYE = 3;

/** The fields of a header. `aux` is the sender's global rank. */
export interface HostHeader {
  magic: number;
  type: number;
  comm: number;
  aux: number;
  seq: number;
  length: number;
}

/** Encodes one header. */
export function header(
  type: number,
  comm: number,
  aux: number,
  seq: number,
  length: number,
): Uint8Array {
  const bytes = new Uint8Array(HEADER_BYTES);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, MAGIC, true);
  view.setUint32(4, type, true);
  view.setUint32(8, comm, true);
  view.setUint32(12, aux, true);
  view.setFloat64(16, seq, true);
  view.setFloat64(24, length, true);
  return bytes;
}

/** Decodes the header held in `bytes` (HEADER_BYTES long). */
export function parseHeader(bytes: Uint8Array): HostHeader {
  const view = new DataView(bytes.buffer, bytes.byteOffset, HEADER_BYTES);
  return {
    magic: view.getUint32(0, true),
    type: view.getUint32(4, true),
    comm: view.getUint32(8, true),
    aux: view.getUint32(12, true),
    seq: view.getFloat64(16, true),
    length: view.getFloat64(24, true),
  };
}
