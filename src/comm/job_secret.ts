/**
 * The job secret: the shared value every request to the rendezvous store must carry, so a process
 * that is not part of the job can neither read nor overwrite keys. Separate from the store because
 * the launcher makes and hands out secrets without ever opening a store, and the rules for a
 * secret (where it comes from, how long it must be, how it is compared) are one concern.
 *
 * @module
 */
import { RendezvousError } from "./comm.ts";

/** The shortest job secret accepted (characters). */
export const MIN_SECRET_LENGTH = 16;

/**
 * The job's rendezvous secret: DISTFLASH_JOB_SECRET, else the first line of the file named by
 * DISTFLASH_JOB_SECRET_FILE (for Slurm: a file in the shared job folder), else undefined.
 * Throws when the value is shorter than MIN_SECRET_LENGTH or the file cannot be read.
 */
export function jobSecret(env: Record<string, string | undefined>): string | undefined {
  let secret = env.DISTFLASH_JOB_SECRET?.trim();
  let from = "DISTFLASH_JOB_SECRET";
  if (!secret && env.DISTFLASH_JOB_SECRET_FILE) {
    from = `DISTFLASH_JOB_SECRET_FILE=${env.DISTFLASH_JOB_SECRET_FILE}`;
    try {
      secret = Deno.readTextFileSync(env.DISTFLASH_JOB_SECRET_FILE).split("\n")[0].trim();
    } catch (error) {
      throw new RendezvousError(`${from}: cannot read it: ${(error as Error).message}`);
    }
  }
  if (!secret) return undefined;
  if (secret.length < MIN_SECRET_LENGTH) {
    throw new RendezvousError(
      `${from}: the job secret must have at least ${MIN_SECRET_LENGTH} characters ` +
        "(e.g. the output of `openssl rand -hex 16`)",
    );
  }
  return secret;
}

/** A fresh random job secret (32 hex digits). */
export function newJobSecret(): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(16)),
    (b) => b.toString(16).padStart(2, "0"),
  )
    .join("");
}

/** Equality of two strings in a time that does not depend on where they differ. */
export function sameSecret(a: unknown, b: string): boolean {
  if (typeof a !== "string" || a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < b.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}
