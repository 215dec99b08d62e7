/** The one place where a native status becomes an exception. */

/** df_status codes (csrc/include/distflash.h). */
export const DfStatus = {
  ok: 0,
  invalid: 1,
  oom: 2,
  device: 3,
  unsupported: 4,
  library: 5,
  internal: 6,
} as const;

const STATUS_NAMES = Object.fromEntries(Object.entries(DfStatus).map(([k, v]) => [v, k]));

/** A failure reported by the native library, carrying its C-side message. */
export class DistflashError extends Error {
  /** Creates the error for native function `fn`, its df_status `status` and C-side `detail`. */
  constructor(readonly fn: string, readonly status: number, readonly detail: string) {
    super(`${fn} failed (${STATUS_NAMES[status] ?? `status ${status}`}): ${detail}`);
    this.name = "DistflashError";
  }
}

/** Reads a NUL-terminated C string returned by a native function. */
export function cString(ptr: Deno.PointerValue): string {
  return ptr === null ? "" : Deno.UnsafePointerView.getCString(ptr);
}

/** Throws a DistflashError unless status is DF_OK; `lastError` reads the C-side message. */
export function unwrap(status: number, fn: string, lastError: () => string): void {
  if (status !== DfStatus.ok) throw new DistflashError(fn, status, lastError() || "(no message)");
}
