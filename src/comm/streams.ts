/**
 * A communication stream beside the compute stream, ordered by events: the pattern of both
 * sequence-parallel attentions (DistAttn and the zigzag ring). On the CPU backend, where work is
 * synchronous, there is no second stream and ordering is a no-op.
 */
import type { Device, Event, Stream } from "../runtime/device.ts";

export class CommStreams {
  /** The communication stream (0n on the CPU backend, where it is not needed). */
  comm: Stream = 0n;
  #events: Event[] = [];

  constructor(readonly device: Device, readonly compute: Stream = 0n) {}

  allocate(): void {
    if (this.device.backend !== "cuda") return;
    this.comm = this.device.createStream();
    this.#events = [this.device.createEvent(), this.device.createEvent()];
  }

  free(): void {
    for (const e of this.#events) this.device.destroyEvent(e);
    this.#events = [];
    if (this.comm !== 0n) this.device.destroyStream(this.comm);
    this.comm = 0n;
  }

  /** Later compute waits for everything issued so far on the communication stream. */
  computeWaitsComm(): void {
    if (this.comm === 0n) return;
    this.device.recordEvent(this.#events[0], this.comm);
    this.device.waitEvent(this.compute, this.#events[0]);
  }

  /** Later communication waits for everything issued so far on the compute stream. */
  commWaitsCompute(): void {
    if (this.comm === 0n) return;
    this.device.recordEvent(this.#events[1], this.compute);
    this.device.waitEvent(this.comm, this.#events[1]);
  }
}
