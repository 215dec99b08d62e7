// First-run papercuts: which Python `bench` uses for its PyTorch peer.

import { assert, assertEquals } from "./assert.ts";
import { join } from "node:path";
import { findPython } from "../cli/bench.ts";

Deno.test("bench: DISTFLASH_PYTHON names the Python of the PyTorch baseline", async () => {
  const dir = await Deno.makeTempDir();
  const before = Deno.env.get("DISTFLASH_PYTHON");
  try {
    // A stand-in that "imports torch" (exits 0), and one that cannot.
    const good = join(dir, "python-with-torch"), bad = join(dir, "python-without-torch");
    await Deno.writeTextFile(good, "#!/bin/sh\nexit 0\n", { mode: 0o755 });
    await Deno.writeTextFile(bad, "#!/bin/sh\nexit 1\n", { mode: 0o755 });
    Deno.env.set("DISTFLASH_PYTHON", good);
    assertEquals(await findPython(), { python: good });
    Deno.env.set("DISTFLASH_PYTHON", bad);
    const no = await findPython();
    assert(
      "skipped" in no && no.skipped.includes(`${bad} cannot import torch`),
      JSON.stringify(no),
    );
    Deno.env.set("DISTFLASH_PYTHON", join(dir, "missing"));
    const none = await findPython();
    assert("skipped" in none && none.skipped.includes("missing not found"), JSON.stringify(none));
  } finally {
    if (before === undefined) Deno.env.delete("DISTFLASH_PYTHON");
    else Deno.env.set("DISTFLASH_PYTHON", before);
    await Deno.remove(dir, { recursive: true });
  }
});
