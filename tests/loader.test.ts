/** The library loader: search order, clear errors, and the compiled binary's embedded layout. */
import { assert, assertEquals, assertThrows } from "./assert.ts";
import {
  distflashCandidates,
  LibraryNotFoundError,
  materialize,
  ncclCandidates,
  openDistflash,
  openNccl,
} from "../ffi/loader.ts";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const libDir = fileURLToPath(new URL("../lib", import.meta.url));

Deno.test("loader: DISTFLASH_LIB_DIR overrides the search and a missing library names the path", () => {
  const env = { DISTFLASH_LIB_DIR: "/no/such/dir" };
  assertEquals(distflashCandidates("cpu", { env }), ["/no/such/dir/libdistflash_cpu.so"]);
  const error = assertThrows(() => openDistflash("cpu", { env }), LibraryNotFoundError);
  assert(error.message.includes("/no/such/dir/libdistflash_cpu.so: no such file"), error.message);
});

Deno.test("loader: DISTFLASH_NCCL_PATH overrides the NCCL search; failure lists every path", () => {
  assertEquals(ncclCandidates({ env: { DISTFLASH_NCCL_PATH: "/x/libnccl.so.2" } }), [
    "/x/libnccl.so.2",
  ]);
  const error = assertThrows(
    () => openNccl({ env: { DISTFLASH_NCCL_PATH: "/x/libnccl.so.2" } }),
    LibraryNotFoundError,
  );
  assert(error.message.includes("NCCL") && error.message.includes("/x/libnccl.so.2"));
  assert(ncclCandidates({ env: {} })[0] === "libnccl.so.2", "system search comes first");
});

Deno.test("loader: a library inside an embedded root is copied out to the cache and opens", () => {
  // A `deno compile --include lib/` binary serves lib/ from a virtual folder; the loader copies
  // such files to a real cache folder. Reproduce that layout with a real folder marked embedded.
  const embedded = Deno.makeTempDirSync({ prefix: "deno-compile-distflash-" });
  const cache = Deno.makeTempDirSync();
  Deno.mkdirSync(join(embedded, "lib"));
  Deno.copyFileSync(join(libDir, "libdistflash_cpu.so"), join(embedded, "lib/libdistflash_cpu.so"));
  const options = {
    env: {},
    libDir: join(embedded, "lib"),
    embeddedRoot: embedded,
    cacheDir: cache,
  };
  const real = materialize(join(embedded, "lib/libdistflash_cpu.so"), options);
  assert(real.startsWith(cache), real);
  assertEquals(
    Deno.readFileSync(real).length,
    Deno.statSync(join(libDir, "libdistflash_cpu.so")).size,
  );
  const { lib, path } = openDistflash("cpu", options);
  assertEquals(path, real);
  assertEquals(lib.symbols.df_abi_version(), 1);
  lib.close();
  // A path outside the embedded root is used as it is.
  assertEquals(materialize("/usr/lib/x.so", options), "/usr/lib/x.so");
  Deno.removeSync(embedded, { recursive: true });
  Deno.removeSync(cache, { recursive: true });
});
