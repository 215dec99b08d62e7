/**
 * What the GPU calls run, checked where there is no GPU, so a GPU call never finds them broken:
 * every scripts/gpu_*.sh parses (bash -n), each `cli/main.ts <command>` line in them uses only
 * flags that command's --help lists, each baseline they run directly only flags it declares, each
 * `deno test` file they name exists; the PyTorch
 * baselines (bench/*.py) and the fixture scripts parse (python3's ast), and every `--flag=` the
 * CLI passes a baseline is one its argparse declares.
 */
import { assert, assertEquals } from "./assert.ts";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const dec = new TextDecoder();
const scripts = readdirSync(join(root, "scripts")).filter((f) => /^gpu_.*\.sh$/.test(f)).sort();

function run(cmd: string, args: string[]): { code: number; out: string } {
  const r = new Deno.Command(cmd, { args, cwd: root, stdout: "piped", stderr: "piped" })
    .outputSync();
  return { code: r.code, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
}

/** The script's lines with backslash continuations joined. */
function logicalLines(path: string): string[] {
  return readFileSync(path, "utf8").replace(/\\\n\s*/g, " ").split("\n");
}

Deno.test("gpu scripts: each parses (bash -n)", () => {
  assert(scripts.length >= 5, scripts.join(", "));
  for (const s of scripts) {
    const r = run("bash", ["-n", join("scripts", s)]);
    assertEquals(r.code, 0, `${s}: ${r.out}`);
  }
});

Deno.test("gpu scripts: the CLI flags they pass exist, the test files they run exist", () => {
  const helps = new Map<string, string>();
  const help = (command: string) => {
    if (!helps.has(command)) {
      const r = run(Deno.execPath(), ["run", "-A", "cli/main.ts", ...command.split(" "), "--help"]);
      assertEquals(r.code, 0, `${command} --help: ${r.out}`);
      helps.set(command, r.out);
    }
    return helps.get(command)!;
  };
  let checked = 0;
  for (const s of scripts) {
    for (const line of logicalLines(join(root, "scripts", s))) {
      const m = /cli\/main\.ts ((?:bench (?:attn|train))|train|plan|info)\b(.*)$/.exec(line);
      if (m) {
        const text = help(m[1]);
        for (const flag of m[2].match(/(?<=\s)--[a-z][a-z0-9-]*/g) ?? []) {
          assert(text.includes(flag), `${s}: ${m[1]} has no ${flag} (in: ${line.trim()})`);
          checked++;
        }
      }
      // A baseline run directly: its flags (--x=... or --x ...) are ones it declares.
      const py = /bench\/([\w.]+\.py)(.*)$/.exec(line);
      if (py) {
        const declared = argparseFlags(join(root, "bench", py[1]));
        for (const flag of py[2].match(/(?<=\s)--[a-z][a-z0-9-]*/g) ?? []) {
          assert(declared.includes(flag), `${s}: ${py[1]} declares no ${flag}`);
        }
      }
      for (const file of line.match(/tests\/[\w.-]+\.test\.ts/g) ?? []) {
        assert(existsSync(join(root, file)), `${s}: ${file} does not exist`);
      }
    }
  }
  assert(checked > 50, `only ${checked} flags found`);
});

/** The long options an argparse script declares (add_argument("--x", ...)), by python3's ast. */
function argparseFlags(path: string): string[] {
  const code = `
import ast, json, sys
tree = ast.parse(open(sys.argv[1]).read())
flags = [a.value for n in ast.walk(tree) if isinstance(n, ast.Call)
         and getattr(n.func, "attr", "") == "add_argument"
         for a in n.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")]
print(json.dumps(flags))`;
  const r = run("python3", ["-c", code, path]);
  assertEquals(r.code, 0, `${path}: ${r.out}`);
  return JSON.parse(r.out);
}

Deno.test("baselines: bench/*.py and the fixture scripts parse; the CLI passes only flags they declare", () => {
  const pythons = [
    ...readdirSync(join(root, "bench")).filter((f) => f.endsWith(".py")).map((f) => `bench/${f}`),
    ...readdirSync(join(root, "tests/reference")).filter((f) => f.endsWith(".py"))
      .map((f) => `tests/reference/${f}`),
  ];
  for (const p of pythons) {
    const r = run("python3", ["-c", "import ast, sys; ast.parse(open(sys.argv[1]).read())", p]);
    assertEquals(r.code, 0, `${p}: ${r.out}`);
  }
  // cli/bench.ts: each runBaseline([... join(benchDir, "X.py"), `--flag=...`, ...]).
  const bench = readFileSync(join(root, "cli/bench.ts"), "utf8");
  let calls = 0;
  for (const m of bench.matchAll(/join\(benchDir, "([\w.]+\.py)"\),([\s\S]*?)\]\)/g)) {
    const declared = argparseFlags(join(root, "bench", m[1]));
    for (const f of m[2].match(/`(--[a-z][a-z-]*)=/g) ?? []) {
      const flag = f.slice(1, -1);
      assert(
        declared.includes(flag),
        `cli/bench.ts passes ${flag} to ${m[1]}, which declares ${declared}`,
      );
    }
    calls++;
  }
  assertEquals(
    calls,
    3,
    "the three baselines: torch_cp_attn.py, torch_attn.py, hf_fsdp_cp_train.py",
  );
});
