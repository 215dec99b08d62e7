/**
 * The documentation against the code: README's flag table holds every option of the option table
 * (src/train/option_table.ts) in its group with its Hugging Face name, `train --help` and
 * `plan --help` are grouped as that table is, and every file a document links to or names in
 * backticks exists in the repository.
 */
import { assert, assertEquals } from "./assert.ts";
import { runCli } from "./_util.ts";
import { flagName, TRAIN_SPECS } from "../src/train/option_table.ts";
import {
  flagRows,
  groupHeading,
  GROUPS,
  MEMORY_OPTIONS,
  OPTION_GROUP,
} from "../src/train/option_groups.ts";
import { dirname, join, normalize } from "node:path";
import { existsSync } from "node:fs";

const ROOT = new URL("..", import.meta.url).pathname;

/** The documents whose references must resolve. */
const DOCS = [
  "README.md",
  "DEVELOPERS.md",
  "BENCHMARKS.md",
  "tests/README.md",
  "tests/reference/README.md",
  "bench/NOTES.md",
];

/** One cell of a Markdown table row, unescaped and without its backticks. */
function cell(text: string): string {
  return text.trim().replaceAll("\\|", "|");
}

/** The rows of README's flag tables: the `### <group>` heading above each, flag, HF name. */
function readmeFlagRows(readme: string): { group: string; flag: string; hf: string }[] {
  const start = readme.indexOf("## Flags");
  assert(start >= 0, 'README has no "## Flags" section');
  const end = readme.indexOf("\n## ", start + 1);
  const section = readme.slice(start, end < 0 ? undefined : end);
  const rows: { group: string; flag: string; hf: string }[] = [];
  let group = "";
  for (const line of section.split("\n")) {
    const heading = /^### (.+)$/.exec(line);
    if (heading) group = heading[1].trim();
    const row = /^\|\s*`(--[a-z0-9-]+)`\s*\|((?:[^|\\]|\\.)*)\|/.exec(line);
    if (row) rows.push({ group, flag: row[1], hf: cell(row[2]).replaceAll("`", "") });
  }
  return rows;
}

Deno.test("docs: README's flag table has every option in its group with its HF name", async () => {
  const readme = await Deno.readTextFile(join(ROOT, "README.md"));
  const rows = readmeFlagRows(readme);
  const byFlag = new Map(rows.map((r) => [r.flag, r]));
  const title = (g: string) => GROUPS.find((x) => x.group === g)!.title;
  for (const want of flagRows()) {
    const got = byFlag.get(want.flag);
    assert(got, `README's flag table lacks ${want.flag} (deno run -A scripts/flag_table.ts)`);
    assertEquals(got.group, title(want.group), `${want.flag}: group`);
    assertEquals(got.hf, want.hf, `${want.flag}: HF name`);
  }
  const known = new Set(TRAIN_SPECS.map((s) => flagName(s.key)));
  for (const r of rows) {
    assert(known.has(r.flag), `README's flag table has ${r.flag}: no such option`);
  }
  assertEquals(rows.length, new Set(rows.map((r) => r.flag)).size, "a flag appears twice");
});

Deno.test("docs: every option has a group and the memory options are train options", () => {
  for (const spec of TRAIN_SPECS) assert(OPTION_GROUP[spec.key], spec.key);
  const keys = new Set<string>(TRAIN_SPECS.map((s) => s.key));
  for (const key of MEMORY_OPTIONS) assert(keys.has(key), key);
});

Deno.test("docs: train --help shows every group in order, each flag under its own, and examples", async () => {
  const r = await runCli(["train", "--help"]);
  assertEquals(r.code, 0, r.stderr);
  const out = r.stdout;
  let last = -1;
  for (const { group } of GROUPS) {
    const at = out.indexOf(`\n${groupHeading(group)}\n`);
    assert(at > last, `${groupHeading(group)} missing or out of order:\n${out}`);
    last = at;
  }
  // Each flag sits in the block of its group's heading.
  const blocks = out.split(/\n(?=[A-Z][A-Za-z ]+ options:\n)/);
  for (const spec of TRAIN_SPECS) {
    const heading = groupHeading(OPTION_GROUP[spec.key]);
    const block = blocks.find((b) => b.startsWith(heading));
    assert(block, heading);
    assert(
      new RegExp(`\\n  ${flagName(spec.key)} `).test(block),
      `${spec.key} not under ${heading}`,
    );
  }
  assert(/\nExamples:\n/.test(out), out);
  assertEquals(out.match(/\n {2}distflash train /g)?.length, 2, "two examples");
  assert(out.includes("--nproc-per-node 8"), "an example on 8 GPUs");
  assert(out.includes("--report-to tensorboard"), "an example with TensorBoard");
});

Deno.test("docs: plan --help lists only the flags that change memory, and plan's own", async () => {
  const r = await runCli(["plan", "--help"]);
  assertEquals(r.code, 0, r.stderr);
  const out = r.stdout;
  for (const flag of ["--gpu ", "--gpu-memory", "--host-memory", "--doc-length", "--config"]) {
    assert(out.includes(flag), flag);
  }
  for (const spec of TRAIN_SPECS) {
    const shown = new RegExp(`\\n  ${flagName(spec.key)} `).test(out);
    assertEquals(shown, MEMORY_OPTIONS.has(spec.key), `${flagName(spec.key)} shown: ${shown}`);
  }
  for (const flag of ["--learning-rate", "--save-steps", "--report-to", "--data-path"]) {
    assert(!out.includes(flag), `${flag} in plan --help`);
  }
  assert(out.includes("--offload-gradients") && out.includes("--model-max-length"), out);
});

Deno.test("docs: plan still accepts train's other flags", async () => {
  const r = await runCli([
    "plan",
    "--model",
    "debug-tiny",
    "--model-max-length",
    "256",
    "--learning-rate",
    "1e-4",
    "--gpu-memory",
    "8",
  ]);
  assertEquals(r.code, 0, r.stderr);
  assert(r.stdout.includes("fits"), r.stdout);
});

/** Relative Markdown link targets and backticked repository paths of a document. */
function references(text: string): string[] {
  const refs: string[] = [];
  // Fenced code blocks are commands, not references.
  const prose = text.replace(/```[\s\S]*?```/g, "");
  for (const m of prose.matchAll(/\]\(([^)\s]+)\)/g)) {
    const target = m[1].split("#")[0];
    if (target === "" || /^[a-z]+:/.test(target)) continue; // an anchor, or a URL
    refs.push(target);
  }
  const roots = "src|scripts|tests|csrc|cli|ffi|bench|examples";
  const path = new RegExp("`((?:" + roots + ")/[^`\\s*{}<>]*)`", "g");
  for (const m of prose.matchAll(path)) {
    if (!m[1].endsWith("...")) refs.push(m[1]); // `src/...` names a folder's files in general
  }
  return refs;
}

Deno.test("docs: every relative link and backticked repository path exists", async () => {
  const missing: string[] = [];
  let count = 0;
  for (const doc of DOCS) {
    const file = join(ROOT, doc);
    if (!existsSync(file)) {
      missing.push(`${doc} itself`);
      continue;
    }
    const text = await Deno.readTextFile(file);
    for (const ref of references(text)) {
      count++;
      // A link is relative to its document; a backticked path is relative to the repository root
      // (or, in a document inside a folder, to that folder).
      const candidates = [normalize(join(ROOT, dirname(doc), ref)), normalize(join(ROOT, ref))];
      if (!candidates.some((c) => existsSync(c))) missing.push(`${doc}: ${ref}`);
    }
  }
  assertEquals(missing, []);
  assert(count > 40, `only ${count} references found: is the pattern still right?`);
});

Deno.test("docs: no document cites a file or tracker that is not in the repository", async () => {
  const found: string[] = [];
  for (const doc of DOCS) {
    const text = await Deno.readTextFile(join(ROOT, doc));
    text.split("\n").forEach((line, i) => {
      if (/DESIGN\.md|\.\.\/shared|\bissue \d+|#\d{2,}\b|\bthe [a-zA-Z0-9-]+ issue\b/.test(line)) {
        found.push(`${doc}:${i + 1}: ${line.trim()}`);
      }
    });
  }
  assertEquals(found, []);
});
