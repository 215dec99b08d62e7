/** `distflash demo`: the embedded default job. */
import type { Command } from "commander";
import { formatInfo, gatherInfo } from "../src/runtime/info.ts";
import { Device } from "../src/runtime/device.ts";
import { selfTest } from "../src/runtime/selftest.ts";

export function registerDemo(program: Command): void {
  program
    .command("demo")
    .description("print `info`, then run the first ops on every available backend and check them")
    .action(() => {
      const info = gatherInfo();
      console.log(formatInfo(info));
      const backends = info.gpus.length > 0 ? ["cpu", "cuda"] as const : ["cpu"] as const;
      let failed = false;
      for (const name of backends) {
        const device = Device.open(name);
        const result = selfTest(device);
        device.close();
        for (const c of result.checks) {
          console.log(
            `${result.backend} ${c.name}: ${c.ok ? "ok" : "FAILED"} (max error ${c.maxError})`,
          );
        }
        failed ||= !result.ok;
      }
      if (failed) Deno.exit(1);
    });
}
