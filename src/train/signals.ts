/**
 * Ctrl-C or SIGTERM (what Slurm and Kubernetes send before a kill) during training: finish the
 * step, save a checkpoint on every rank, stop; a second signal quits at once. The ranks decide
 * together at each step boundary, so a signal to one rank stops them all at the same step. Ranks
 * under the launcher leave SIGINT (the terminal's Ctrl-C reaches them too) to the launcher,
 * which forwards it as SIGTERM.
 */
import type { Communicator } from "../comm/comm.ts";
import type { Device, DeviceBuffer } from "../runtime/device.ts";
import { allReduceNumber } from "./ranks.ts";

/** A signal that stops a run. */
export type StopSignal = "SIGINT" | "SIGTERM";

/** The stop signals' listeners of one run, from construction until `remove`. */
export class StopSignals {
  #received: StopSignal | null = null;
  readonly #listeners = new Map<Deno.Signal, () => void>();

  /** Listens to SIGINT and SIGTERM, saying on `log` what a signal does. */
  constructor(log: (line: string) => void) {
    const launched = Deno.env.get("DISTFLASH_LAUNCHED") === "1";
    for (const signal of ["SIGINT", "SIGTERM"] as const) {
      const quitCode = signal === "SIGINT" ? 130 : 143;
      const handler = launched && signal === "SIGINT" ? () => {} : () => {
        if (this.#received) Deno.exit(quitCode);
        this.#received = signal;
        log(
          `\n${signal}: finishing this step and saving a checkpoint (another ${signal} quits at once)`,
        );
      };
      Deno.addSignalListener(signal, handler);
      this.#listeners.set(signal, handler);
    }
  }

  /**
   * The stop decision of all ranks at a step boundary (a collective: every rank calls it at
   * every step): the signal to stop for, SIGTERM winning, or null to go on.
   */
  async decide(
    world: Communicator | null,
    scratch: DeviceBuffer,
    device: Device,
  ): Promise<StopSignal | null> {
    // 1 per rank that saw SIGINT, 1000 per SIGTERM.
    let stop = this.#received === null ? 0 : this.#received === "SIGINT" ? 1 : 1000;
    if (world) stop = await allReduceNumber(world, scratch, device, stop);
    return stop === 0 ? null : stop >= 1000 ? "SIGTERM" : "SIGINT";
  }

  /** Stops listening. */
  remove(): void {
    for (const [signal, handler] of this.#listeners) Deno.removeSignalListener(signal, handler);
    this.#listeners.clear();
  }
}
