/**
 * What the launcher and the ranks agree on about stop signals (the launcher forwards them; the
 * ranks act on them, src/train/signals.ts): which signals stop a run, how they are named to
 * people, and when a repeated signal is the same one.
 */

/** A signal that stops a run. */
export type StopSignal = "SIGINT" | "SIGTERM";

/**
 * A stop signal arriving within this many milliseconds of the first is a copy of it (a forwarded
 * Ctrl-C), not a second request; a second one after this pause quits at once.
 */
export const SIGNAL_REPEAT_MS = 1500;

/** How a stop signal is named to people: Ctrl-C for SIGINT. */
export function signalName(signal: StopSignal): string {
  return signal === "SIGINT" ? "Ctrl-C (SIGINT)" : "SIGTERM";
}
