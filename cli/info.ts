/** `distflash info`: what this machine offers distflash. */
import type { Command } from "npm:commander@^14.0.0";
import { formatInfo, gatherInfo } from "../src/runtime/info.ts";

export function registerInfo(program: Command): void {
  program
    .command("info")
    .description("show the backend, GPUs, driver, NCCL and build of this installation")
    .option("--json", "print one JSON object instead of text")
    .action((options: { json?: boolean }) => {
      const info = gatherInfo();
      console.log(options.json ? JSON.stringify(info, null, 2) : formatInfo(info));
    });
}
