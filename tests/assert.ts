/** Minimal assertions (JSR's @std/assert cannot be installed here), over node:assert. */
import nodeAssert from "node:assert/strict";

export function assert(condition: unknown, message?: string): asserts condition {
  nodeAssert.ok(condition, message);
}

export function assertEquals<T>(actual: T, expected: T, message?: string): void {
  nodeAssert.deepStrictEqual(actual, expected, message);
}

export function assertLess(actual: number, limit: number, message?: string): void {
  if (!(actual < limit)) throw new Error(`${message ?? "value"}: ${actual} is not < ${limit}`);
}

export function assertThrows<E extends Error = Error>(
  fn: () => unknown,
  type?: new (...a: never[]) => E,
): E {
  try {
    fn();
  } catch (error) {
    if (type && !(error instanceof type)) {
      throw new Error(
        `expected ${type.name}, got ${(error as Error)?.constructor?.name}: ${error}`,
      );
    }
    return error as E;
  }
  throw new Error("expected the function to throw");
}

export async function assertRejects<E extends Error = Error>(
  fn: () => Promise<unknown>,
  type?: new (...a: never[]) => E,
): Promise<E> {
  try {
    await fn();
  } catch (error) {
    if (type && !(error instanceof type)) {
      throw new Error(
        `expected ${type.name}, got ${(error as Error)?.constructor?.name}: ${error}`,
      );
    }
    return error as E;
  }
  throw new Error("expected the promise to reject");
}
