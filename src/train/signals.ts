/**
 * Ctrl-C or SIGTERM (what Slurm and Kubernetes send before a kill) during training: finish the
 * step, save a checkpoint on every rank, stop; a second signal quits at once. The ranks decide
 * together at each step boundary, so a signal to one rank stops them all at the same step.
 *
 * One Ctrl-C can arrive more than once: the terminal sends SIGINT to its whole process group
 * (`deno task`, the launcher and every rank) and `deno task` and the launcher forward it to their
 * children as well. A signal repeated within SIGNAL_REPEAT_MS of the first is therefore the same
 * one; only a signal after a pause a human takes quits at once.
 */
import type { Communicator } from "../comm/comm.ts";
import type { Device, DeviceBuffer } from "../runtime/device.ts";
import { allReduceNumber } from "./ranks.ts";
import { SIGNAL_REPEAT_MS, signalName, type StopSignal } from "../launch/stop_signal.ts";

/** The stop signals' listeners of one run, from construction until `remove`. */
export class StopSignals {
  #received: StopSignal | null = null;
  #receivedAt = -Infinity;
  readonly #listeners = new Map<Deno.Signal, () => void>();

  /** Listens to SIGINT and SIGTERM, saying on `log` what a signal does. */
  constructor(log: (line: string) => void) {
    for (const signal of ["SIGINT", "SIGTERM"] as const) {
      const quitCode = signal === "SIGINT" ? 130 : 143;
      const handler = () => {
        const now = performance.now();
        if (this.#received) {
          // The same Ctrl-C forwarded by `deno task` or the launcher: already being handled.
          if (now - this.#receivedAt < SIGNAL_REPEAT_MS) return;
          Deno.exit(quitCode);
        }
        this.#received = signal;
        this.#receivedAt = now;
        const again = signal === "SIGINT" ? "another Ctrl-C" : "another SIGTERM";
        log(
          `\n${signalName(signal)}: finishing this step and saving a checkpoint (${again}, ` +
            `after a pause of ${SIGNAL_REPEAT_MS / 1000} s, quits at once)`,
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
