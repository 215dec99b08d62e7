/**
 * Prints README's flag table (one Markdown table per group) from the option table, for pasting
 * into README.md after a flag changes; tests/docs.test.ts fails until README matches.
 *
 *     deno run -A scripts/flag_table.ts
 */
import { flagTableMarkdown } from "../src/train/option_groups.ts";

console.log(flagTableMarkdown());
