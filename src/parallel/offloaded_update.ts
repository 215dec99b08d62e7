/**
 * The pipelining of ZeRO-3's offloaded optimizer step (--offload-optimizer): the units' host
 * AdamW runs one after another in forward order, off the caller's path, and each unit's promise
 * says when its new weights are on their way up. This file owns that chain and its bookkeeping
 * (what is still in flight, settling, where a failure surfaces); what a unit's update does is the
 * sharded store's (src/parallel/zero3.ts).
 */

/** The units' host updates of the last optimizer step, chained in forward order. */
export class OffloadedUpdates {
  /** Per unit, its update (null: settled). */
  readonly #updates: (Promise<void> | null)[];
  #inFlight = 0;

  constructor(units: number) {
    this.#updates = Array.from({ length: units }, () => null);
  }

  /**
   * Starts `update(u)` for every unit u in order, each once the previous one has finished, and
   * returns at once. The next forward gathers unit u once its update has landed (see `of`), so
   * the host AdamW of later units overlaps the GPU work of earlier ones.
   */
  start(update: (unit: number) => Promise<void>): void {
    let previous: Promise<void> = Promise.resolve();
    this.#updates.forEach((_, u) => {
      const next = previous.then(() => update(u));
      this.#inFlight++;
      const landed = () => {
        this.#inFlight--;
      };
      next.then(landed, landed); // a failure surfaces where the unit is awaited
      this.#updates[u] = next;
      previous = next;
    });
  }

  /** Unit `unit`'s update of the last step (null when settled): await it before reading it. */
  of(unit: number): Promise<void> | null {
    return this.#updates[unit];
  }

  /** Throws when a host thread may still be working on the host buffers. */
  assertSettled(): void {
    if (this.#inFlight > 0) {
      throw new Error("internal: the offloaded optimizer's last update has not landed yet");
    }
  }

  /** Waits for every update; rethrows the first failure once all have finished. */
  async settle(): Promise<void> {
    const pending = this.#updates.filter((p) => p !== null);
    this.#updates.fill(null);
    // Every thread has finished with the host buffers once all have settled, failed or not.
    const results = await Promise.allSettled(pending);
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }
}
