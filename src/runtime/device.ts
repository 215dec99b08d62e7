/**
 * A native backend opened through FFI: device queries, memory, streams and events. Every call goes
 * through `check`, which turns a df_status into a DistflashError with the C-side message.
 */
import { type BackendName, type LoaderOptions, openDistflash } from "../../ffi/loader.ts";
import { DEVICE_PROPS_LAYOUT, type DistflashSymbols } from "../../ffi/distflash.ts";
import { cString, unwrap } from "../../ffi/unwrap.ts";

export type { BackendName };

/**
 * A device address (void* on the C side), carried as a bigint: Deno passes bigints to usize
 * parameters on its fast path (numbers there cost ~20x more per call).
 */
export type DevicePtr = bigint;
/** A stream handle; 0n is the default stream. */
export type Stream = bigint;
/** An event handle. */
export type Event = bigint;

/** What the backend reports about one device (the host CPU on the cpu backend). */
export interface DeviceProps {
  /** The device's index, as passed to props() and setDevice(). */
  index: number;
  /** The device's name (the GPU model, or "host CPU (N cores)"). */
  name: string;
  /** Total memory, bytes (host memory on the cpu backend). */
  totalBytes: number;
  /** Free memory; only known for the current device (0 for the others). */
  freeBytes: number;
  /** CUDA compute capability, "major.minor" ("0.0" on the cpu backend). */
  computeCapability: string;
  /** Streaming multiprocessors (online cores on the cpu backend). */
  multiprocessors: number;
  /** PCI bus id (-1 on the cpu backend). */
  pciBusId: number;
}

/** A device allocation. `free()` returns it; using it afterwards is a thrown error, not a crash. */
export class DeviceBuffer {
  #freed = false;
  /** Wraps an allocation of `bytes` bytes at `ptr` on `device` (Device.alloc makes these). */
  constructor(readonly device: Device, readonly ptr: DevicePtr, readonly bytes: number) {}
  /** Whether free() has been called. */
  get freed(): boolean {
    return this.#freed;
  }
  /** The address `byteOffset` bytes in, checked against this buffer's size. */
  at(byteOffset: number, bytes = 0): DevicePtr {
    if (byteOffset < 0 || byteOffset + bytes > this.bytes) {
      throw new RangeError(`offset ${byteOffset}+${bytes} is outside a ${this.bytes}-byte buffer`);
    }
    return this.ptr + BigInt(byteOffset);
  }
  /** Returns the memory to the device; a second call does nothing. */
  free(): void {
    if (this.#freed) return;
    this.#freed = true;
    this.device.freeRaw(this.ptr);
  }
}

/**
 * A typed array that can be copied to or from device memory.
 *
 * @internal Not re-exported from mod.ts; Device.upload and Device.download list the types.
 */
type HostArray =
  | Float32Array
  | Float64Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | Uint8Array
  | BigInt64Array;

/** DISTFLASH_SERIALIZE_STREAMS=1: see Device.recordEvent. */
const SERIALIZE_STREAMS = (() => {
  try {
    return Deno.env.get("DISTFLASH_SERIALIZE_STREAMS") === "1";
  } catch {
    return false; // no --allow-env
  }
})();

/**
 * One native backend library (cpu or cuda), opened with {@link Device.open}: device queries,
 * memory, copies, streams and events. Each failing call throws a DistflashError.
 */
export class Device {
  /** The library's raw FFI symbols (ops call them directly, then pass the status to check). */
  readonly sym: DistflashSymbols;
  #closed = false;

  private constructor(
    readonly backend: BackendName,
    readonly libraryPath: string,
    private readonly lib: Deno.DynamicLibrary<
      typeof import("../../ffi/distflash.ts").DISTFLASH_SYMBOLS
    >,
  ) {
    this.sym = lib.symbols;
  }

  /** Opens the backend's native library (throws LibraryNotFoundError with the paths tried). */
  static open(backend: BackendName, options: LoaderOptions = {}): Device {
    const { lib, path } = openDistflash(backend, options);
    return new Device(backend, path, lib);
  }

  /** Throws a DistflashError carrying the C-side message unless status is DF_OK. */
  check(status: number, fn: string): void {
    unwrap(status, fn, () => cString(this.sym.df_last_error()));
  }

  /** The native library's most recent error message on this thread ("" before any). */
  lastError(): string {
    return cString(this.sym.df_last_error());
  }

  /** The library's build description: compiler, flags, architectures, git commit. */
  get buildInfo(): string {
    return cString(this.sym.df_build_info());
  }

  /** The C ABI version the library was built with (DF_ABI_VERSION). */
  get abiVersion(): number {
    return this.sym.df_abi_version();
  }

  /** Devices the backend sees (1 on the cpu backend; 0 when CUDA finds no GPU). */
  deviceCount(): number {
    const out = new Int32Array(1);
    this.check(this.sym.df_device_count(out), "df_device_count");
    return out[0];
  }

  /** The properties of device `index`. */
  props(index: number): DeviceProps {
    const raw = new Uint8Array(DEVICE_PROPS_LAYOUT.size);
    this.check(this.sym.df_device_props_get(index, raw), "df_device_props_get");
    const view = new DataView(raw.buffer);
    const nameEnd = raw.indexOf(0);
    const L = DEVICE_PROPS_LAYOUT;
    return {
      index,
      name: new TextDecoder().decode(raw.subarray(0, nameEnd < 0 ? 256 : nameEnd)),
      totalBytes: Number(view.getBigUint64(L.totalBytes, true)),
      freeBytes: Number(view.getBigUint64(L.freeBytes, true)),
      computeCapability: `${view.getInt32(L.ccMajor, true)}.${view.getInt32(L.ccMinor, true)}`,
      multiprocessors: view.getInt32(L.multiprocessors, true),
      pciBusId: view.getInt32(L.pciBusId, true),
    };
  }

  /** Makes device `index` the current one for this thread's later calls. */
  setDevice(index: number): void {
    this.check(this.sym.df_set_device(index), "df_set_device");
  }

  /** The CUDA driver version, encoded 1000 * major + 10 * minor (0 on the cpu backend). */
  driverVersion(): number {
    const out = new Int32Array(1);
    this.check(this.sym.df_driver_version(out), "df_driver_version");
    return out[0];
  }

  /** The CUDA runtime version, encoded 1000 * major + 10 * minor (0 on the cpu backend). */
  runtimeVersion(): number {
    const out = new Int32Array(1);
    this.check(this.sym.df_runtime_version(out), "df_runtime_version");
    return out[0];
  }

  /** Waits until all work on the current device has finished. */
  synchronize(): void {
    this.check(this.sym.df_device_synchronize(), "df_device_synchronize");
  }

  /** Free and total memory of the current device, bytes. */
  memInfo(): { free: number; total: number } {
    const free = new BigUint64Array(1), total = new BigUint64Array(1);
    this.check(this.sym.df_mem_info(free, total), "df_mem_info");
    return { free: Number(free[0]), total: Number(total[0]) };
  }

  /** The allocations the library holds now (count and bytes), for leak checks. */
  liveAllocations(): { count: number; bytes: number } {
    const count = new BigUint64Array(1), bytes = new BigUint64Array(1);
    this.check(this.sym.df_live_allocations(count, bytes), "df_live_allocations");
    return { count: Number(count[0]), bytes: Number(bytes[0]) };
  }

  /** Allocates device memory. */
  alloc(bytes: number): DeviceBuffer {
    const out = new BigUint64Array(1);
    this.check(this.sym.df_malloc(out, BigInt(Math.max(0, Math.floor(bytes)))), "df_malloc");
    return new DeviceBuffer(this, out[0], bytes);
  }

  /** Frees a raw device address (DeviceBuffer.free is the usual way). */
  freeRaw(ptr: DevicePtr): void {
    this.check(this.sym.df_free(ptr), "df_free");
  }

  /**
   * Copies a host array (Float32Array, Float64Array, Uint16Array, Int32Array, Uint32Array,
   * Uint8Array or BigInt64Array) to device memory at `dst`.
   */
  upload(dst: DevicePtr, src: HostArray, stream: Stream = 0n): void {
    const bytes = new Uint8Array(src.buffer, src.byteOffset, src.byteLength);
    this.check(this.sym.df_memcpy_h2d(dst, bytes, BigInt(src.byteLength), stream), "df_memcpy_h2d");
  }

  /** Copies device memory at `src` into a host array (waits for the stream). */
  download<T extends HostArray>(dst: T, src: DevicePtr, stream: Stream = 0n): T {
    const bytes = new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength);
    this.check(this.sym.df_memcpy_d2h(bytes, src, BigInt(dst.byteLength), stream), "df_memcpy_d2h");
    return dst;
  }

  /**
   * Queues a copy of device memory at `src` into `dst` on `stream` and returns at once: `dst` must
   * be page-locked (pinHost) and left alone until the stream has passed the copy (on the cpu
   * backend the copy is done on return).
   */
  downloadAsync(dst: HostArray, src: DevicePtr, stream: Stream = 0n): void {
    const bytes = new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength);
    this.check(
      this.sym.df_memcpy_d2h_async(bytes, src, BigInt(dst.byteLength), stream),
      "df_memcpy_d2h_async",
    );
  }

  /** Copies `bytes` bytes of device memory from `src` to `dst`, on `stream`. */
  copy(dst: DevicePtr, src: DevicePtr, bytes: number, stream: Stream = 0n): void {
    this.check(this.sym.df_memcpy_d2d(dst, src, BigInt(bytes), stream), "df_memcpy_d2d");
  }

  /**
   * Copies `rows` rows of `width` bytes between device matrices with row pitches `dstPitch` and
   * `srcPitch` (bytes), on `stream`: e.g. a group of heads out of [T, heads, head_dim].
   */
  copy2d(
    dst: DevicePtr,
    dstPitch: number,
    src: DevicePtr,
    srcPitch: number,
    width: number,
    rows: number,
    stream: Stream = 0n,
  ): void {
    this.check(
      this.sym.df_memcpy_2d(
        dst,
        BigInt(dstPitch),
        src,
        BigInt(srcPitch),
        BigInt(width),
        BigInt(rows),
        stream,
      ),
      "df_memcpy_2d",
    );
  }

  /** Sets `bytes` bytes at `ptr` to the byte `value`, on `stream`. */
  memset(ptr: DevicePtr, value: number, bytes: number, stream: Stream = 0n): void {
    this.check(this.sym.df_memset(ptr, value, BigInt(bytes), stream), "df_memset");
  }

  /**
   * Page-locks host memory at `host` (an address from another library, e.g. a CPU-backend
   * allocation) for fast asynchronous copies; undo with unpinHost before freeing it. No-op on cpu.
   */
  pinHost(host: bigint, bytes: number): void {
    this.check(this.sym.df_host_register(host, BigInt(bytes)), "df_host_register");
  }

  /** Undoes pinHost. */
  unpinHost(host: bigint): void {
    this.check(this.sym.df_host_unregister(host), "df_host_unregister");
  }

  /** Creates a stream (destroy it with destroyStream). */
  createStream(): Stream {
    const out = new BigUint64Array(1);
    this.check(this.sym.df_stream_create(out), "df_stream_create");
    return out[0];
  }

  /** Destroys a stream made by createStream. */
  destroyStream(stream: Stream): void {
    this.check(this.sym.df_stream_destroy(stream), "df_stream_destroy");
  }

  /** Waits until all work queued on `stream` has finished. */
  syncStream(stream: Stream = 0n): void {
    this.check(this.sym.df_stream_synchronize(stream), "df_stream_synchronize");
  }

  /** Creates an event (destroy it with destroyEvent). */
  createEvent(): Event {
    const out = new BigUint64Array(1);
    this.check(this.sym.df_event_create(out), "df_event_create");
    return out[0];
  }

  /** Destroys an event made by createEvent. */
  destroyEvent(event: Event): void {
    this.check(this.sym.df_event_destroy(event), "df_event_destroy");
  }

  /** Records `event` on `stream`: it completes when the work queued before it does. */
  recordEvent(event: Event, stream: Stream = 0n): void {
    this.check(this.sym.df_event_record(event, stream), "df_event_record");
    // Diagnostics: DISTFLASH_SERIALIZE_STREAMS=1 drains every stream at each ordering point, so a
    // result that changes with it points at a missing stream dependency.
    if (SERIALIZE_STREAMS) this.synchronize();
  }

  /** Makes `stream` wait for work recorded in `event` (on any stream). */
  waitEvent(stream: Stream, event: Event): void {
    this.check(this.sym.df_stream_wait_event(stream, event), "df_stream_wait_event");
  }

  /** Waits until `event` has completed. */
  syncEvent(event: Event): void {
    this.check(this.sym.df_event_synchronize(event), "df_event_synchronize");
  }

  /** Milliseconds between two recorded events. */
  elapsedMs(start: Event, end: Event): number {
    const out = new Float32Array(1);
    this.check(this.sym.df_event_elapsed_ms(out, start, end), "df_event_elapsed_ms");
    return out[0];
  }

  /** Closes the library. Buffers must be freed first. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.lib.close();
  }
}
