// Properties of the .npy token-file writer and reader (src/io/npy.ts) over generated inputs. The
// writer's bytes are decoded by a decoder written here from numpy.lib.format's definition (magic,
// version, little-endian header length, a dict literal padded with spaces and ending in a newline
// so that the data starts 64-byte aligned, then exactly the elements), sharing no code with
// src/io. Files the test lays out itself (versions 1.0 to 3.0, any key order and spacing) read
// back; big-endian, fortran-order, other dtypes and other ranks are refused as npy.ts promises;
// every cut of a file is refused with an Error naming it.

import { assert, assertEquals } from "./assert.ts";
import { fc, runs } from "./_properties.ts";
import { join } from "node:path";
import { readNpyInfo, readNpyTokens, readNpyWindow, writeNpy } from "../src/io/npy.ts";

const TMP = await Deno.makeTempDir({ prefix: "distflash-properties-npy-" });
addEventListener("unload", () => Deno.removeSync(TMP, { recursive: true }));
let fileNo = 0;
const tmpFile = () => join(TMP, `f${fileNo++}.npy`);

/** Expects `fn` to reject with an Error (not a non-Error) naming `path`; returns its message. */
async function refused(fn: () => Promise<unknown>, path: string, what: string): Promise<string> {
  try {
    await fn();
  } catch (e) {
    assert(e instanceof Error, `${what}: threw a non-Error ${String(e)}`);
    assert(e.message.includes(path), `${what}: the message does not name ${path}: ${e.message}`);
    return e.message;
  }
  throw new Error(`${what}: was accepted`);
}

// ---------------------------------------------------------------------------------------------
// Generators: token arrays of every dtype the writer takes, with values that fit int32

type Kind = "<u2" | "<i4" | "<u4" | "<i8";
type Typed = Uint16Array | Int32Array | Uint32Array | BigInt64Array;

interface Tokens {
  kind: Kind;
  values: number[];
}

const ITEM: Record<Kind, number> = { "<u2": 2, "<i4": 4, "<u4": 4, "<i8": 8 };
const I32_MIN = -(2 ** 31), I32_MAX = 2 ** 31 - 1;

/** Values each dtype can hold that are int32 token ids, edges included. */
const valueOf: Record<Kind, fc.Arbitrary<number>> = {
  "<u2": fc.oneof(fc.constantFrom(0, 1, 255, 256, 65535), fc.integer({ min: 0, max: 65535 })),
  "<i4": fc.oneof(fc.constantFrom(0, -1, I32_MIN, I32_MAX), fc.integer()),
  "<u4": fc.oneof(fc.constantFrom(0, 65536, I32_MAX), fc.integer({ min: 0, max: I32_MAX })),
  "<i8": fc.oneof(fc.constantFrom(0, -1, I32_MIN, I32_MAX), fc.integer()),
};

/** Lengths: empty, small, and around where the header's digit count changes. */
const lengthArb = fc.oneof(
  fc.constantFrom(0, 1, 9, 10, 99, 100),
  fc.nat(40),
);

const tokens: fc.Arbitrary<Tokens> = fc.constantFrom<Kind>("<u2", "<i4", "<u4", "<i8").chain((
  kind,
) =>
  lengthArb.chain((n) =>
    fc.array(valueOf[kind], { minLength: n, maxLength: n }).map((values) => ({ kind, values }))
  )
);

function typed(t: Tokens): Typed {
  switch (t.kind) {
    case "<u2":
      return Uint16Array.from(t.values);
    case "<i4":
      return Int32Array.from(t.values);
    case "<u4":
      return Uint32Array.from(t.values);
    case "<i8":
      return BigInt64Array.from(t.values.map(BigInt));
  }
}

// ---------------------------------------------------------------------------------------------
// An independent decoder and encoder of the format

/** Decodes a 1-D little-endian .npy file written by the writer, checking every layout rule. */
function decodeNpy(bytes: Uint8Array): { kind: Kind; values: number[] } {
  const magic = [0x93, ...new TextEncoder().encode("NUMPY")];
  magic.forEach((b, k) => assertEquals(bytes[k], b, `magic byte ${k}`));
  assertEquals([bytes[6], bytes[7]], [1, 0], "format version 1.0");
  const headerLen = bytes[8] + 256 * bytes[9];
  const dataStart = 10 + headerLen;
  assertEquals(dataStart % 64, 0, `data starts at ${dataStart}, not 64-byte aligned`);
  let header = "";
  for (let k = 10; k < dataStart; k++) header += String.fromCharCode(bytes[k]);
  assertEquals(header[header.length - 1], "\n", "the header ends in a newline");
  const m =
    /^\{'descr': '(<u2|<i4|<u4|<i8)', 'fortran_order': False, 'shape': \((\d+),\), \}( *)\n$/
      .exec(header);
  assert(m !== null, `header ${JSON.stringify(header)} is not the dict numpy writes`);
  // Padding: only as many spaces as alignment needs (fewer than 64).
  assert(m[3].length < 64, `${m[3].length} spaces of padding`);
  const kind = m[1] as Kind;
  const n = Number(m[2]);
  assertEquals(bytes.length, dataStart + n * ITEM[kind], "file size = header + elements");
  const view = new DataView(bytes.buffer, bytes.byteOffset + dataStart);
  const values: number[] = [];
  for (let i = 0; i < n; i++) {
    const at = i * ITEM[kind];
    if (kind === "<u2") values.push(view.getUint16(at, true));
    else if (kind === "<i4") values.push(view.getInt32(at, true));
    else if (kind === "<u4") values.push(view.getUint32(at, true));
    else values.push(Number(view.getBigInt64(at, true)));
  }
  return { kind, values };
}

/** Raw element bytes, little-endian, of `values` as `descr`'s type (any byte-order mark). */
function elementBytes(descr: string, values: number[]): Uint8Array {
  const size = Number(descr.slice(2));
  const out = new Uint8Array(values.length * size);
  const view = new DataView(out.buffer);
  const type = descr[1];
  values.forEach((v, i) => {
    if (size === 2) view.setUint16(i * 2, v, true);
    else if (size === 4 && type === "u") view.setUint32(i * 4, v, true);
    else if (size === 4) view.setInt32(i * 4, v, true);
    else view.setBigInt64(i * 8, BigInt(v), true);
  });
  return out;
}

/** A .npy file laid out here: `version` 1, 2 or 3, the header dict text as given, padded. */
function encodeNpy(version: 1 | 2 | 3, dict: string, data: Uint8Array): Uint8Array {
  const pre = version === 1 ? 10 : 12;
  const text = new TextEncoder().encode(dict);
  const total = Math.ceil((pre + text.length + 1) / 64) * 64;
  const headerLen = total - pre;
  const out = new Uint8Array(total + data.length);
  out.set([0x93, ...new TextEncoder().encode("NUMPY"), version, 0]);
  const view = new DataView(out.buffer);
  if (version === 1) view.setUint16(8, headerLen, true);
  else view.setUint32(8, headerLen, true);
  out.fill(0x20, pre, total - 1);
  out.set(text, pre);
  out[total - 1] = 0x0a;
  out.set(data, total);
  return out;
}

/** The header dict with its three entries in `order`, `sp` as the spacing after separators. */
function dictText(
  entries: { descr: string; fortran: string; shape: string },
  order: number[],
  sp: string,
  trailingComma: boolean,
): string {
  const items = [
    `'descr':${sp}'${entries.descr}'`,
    `'fortran_order':${sp}${entries.fortran}`,
    `'shape':${sp}${entries.shape}`,
  ];
  const body = order.map((k) => items[k]).join(`,${sp}`);
  return `{${body}${trailingComma ? "," : ""}${sp}}`;
}

const headerStyle = fc.record({
  version: fc.constantFrom<1 | 2 | 3>(1, 2, 3),
  order: fc.shuffledSubarray([0, 1, 2], { minLength: 3, maxLength: 3 }),
  sp: fc.constantFrom("", " ", "  ", "\t"),
  trailingComma: fc.boolean(),
});

// ---------------------------------------------------------------------------------------------

Deno.test("npy properties: writeNpy -> read is exact for every dtype and length, zero included", async () => {
  await fc.assert(
    fc.asyncProperty(tokens, fc.nat(), fc.nat(), async (t, a, b) => {
      const path = tmpFile();
      await writeNpy(path, typed(t));
      const bytes = await Deno.readFile(path);
      assertEquals(decodeNpy(bytes), { kind: t.kind, values: t.values }, "independent decoder");
      assertEquals(Array.from(await readNpyTokens(path)), t.values, "readNpyTokens");
      const info = await readNpyInfo(path);
      assertEquals(info.descr, t.kind);
      assertEquals(info.length, t.values.length);
      assertEquals(info.itemSize, ITEM[t.kind]);
      assertEquals(info.version, [1, 0]);
      assertEquals(info.dataOffset % 64, 0);
      // Any window [start, start + n) reads exactly those tokens.
      const n = t.values.length;
      const start = n === 0 ? 0 : a % (n + 1);
      const len = b % (n - start + 1);
      assertEquals(
        Array.from(await readNpyWindow(path, start, len)),
        t.values.slice(start, start + len),
        `window [${start}, ${start + len})`,
      );
      await refused(() => readNpyWindow(path, start, n - start + 1), path, "a window past the end");
    }),
    runs(150),
  );
});

Deno.test("npy properties: files laid out here (versions 1.0-3.0, any key order and spacing) read back", async () => {
  await fc.assert(
    fc.asyncProperty(
      tokens,
      headerStyle,
      fc.boolean(),
      fc.boolean(),
      async (t, style, pipe, listShape) => {
        // '|' (not applicable) is accepted as a byte order like '<'; a shape list like a tuple.
        const descr = (pipe ? "|" : "<") + t.kind.slice(1);
        const n = t.values.length;
        const shape = listShape ? `[${n}]` : `(${n},)`;
        const dict = dictText(
          { descr, fortran: "False", shape },
          style.order,
          style.sp,
          style.trailingComma,
        );
        const path = tmpFile();
        await Deno.writeFile(
          path,
          encodeNpy(style.version, dict, elementBytes(t.kind, t.values)),
        );
        assertEquals(Array.from(await readNpyTokens(path)), t.values, dict);
        assertEquals((await readNpyInfo(path)).version, [style.version, 0]);
      },
    ),
    runs(150),
  );
});

Deno.test("npy properties: big-endian, fortran order, other dtypes and other ranks are refused", async () => {
  const refusal = fc.oneof(
    fc.record({
      why: fc.constant("big-endian"),
      descr: fc.constantFrom(">u2", ">i4", ">u4", ">i8"),
      fortran: fc.constant("False"),
      shape: fc.constant("(N,)"),
    }),
    fc.record({
      why: fc.constant("fortran order"),
      descr: fc.constantFrom("<u2", "<i4", "<u4", "<i8"),
      fortran: fc.constantFrom("True", "None", "1", "'False'"),
      shape: fc.constant("(N,)"),
    }),
    fc.record({
      why: fc.constant("another dtype"),
      descr: fc.constantFrom("<f4", "<f8", "<i2", "<u8", "|u1", "|i1", "|b1", "=i4", "<U4", "i4"),
      fortran: fc.constant("False"),
      shape: fc.constant("(N,)"),
    }),
    fc.record({
      why: fc.constant("another rank"),
      descr: fc.constantFrom("<u2", "<i4", "<u4", "<i8"),
      fortran: fc.constant("False"),
      shape: fc.constantFrom("()", "(N, 1)", "(1, N)", "(N, 1, 1)", "(-1,)", "('N',)"),
    }),
  );
  await fc.assert(
    fc.asyncProperty(refusal, headerStyle, fc.nat(8), async (r, style, n) => {
      const dict = dictText(
        { descr: r.descr, fortran: r.fortran, shape: r.shape.replaceAll("N", String(n)) },
        style.order,
        style.sp,
        style.trailingComma,
      );
      // Enough data bytes for any element size, so that only the header is at fault.
      const path = tmpFile();
      await Deno.writeFile(path, encodeNpy(style.version, dict, new Uint8Array(8 * (n + 1))));
      const msg = await refused(() => readNpyTokens(path), path, `${r.why}: ${dict}`);
      if (r.why === "fortran order") assert(msg.includes("fortran_order"), msg);
      if (r.why === "big-endian" || r.why === "another dtype") {
        assert(msg.includes("unsupported dtype"), msg);
      }
    }),
    runs(150),
  );
});

Deno.test("npy properties: values that do not fit an int32 token id are refused, naming the position", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom<Kind>("<u4", "<i8"),
      fc.nat(20),
      fc.nat(),
      fc.boolean(),
      async (kind, n, at, low) => {
        const pos = at % (n + 1);
        const path = tmpFile();
        if (kind === "<u4") {
          const data = new Uint32Array(n + 1);
          data[pos] = low ? 2 ** 31 : 2 ** 32 - 1;
          await writeNpy(path, data);
        } else {
          const data = new BigInt64Array(n + 1);
          data[pos] = low ? -(2n ** 31n) - 1n : 2n ** 31n;
          await writeNpy(path, data);
        }
        const msg = await refused(() => readNpyTokens(path), path, `${kind} at ${pos}`);
        assert(msg.includes(`token ${pos} `), msg);
      },
    ),
    runs(60),
  );
});

Deno.test("npy properties: a file cut at any byte is refused with an Error naming it", async () => {
  await fc.assert(
    fc.asyncProperty(
      tokens.filter((t) => t.values.length <= 24),
      fc.constantFrom<1 | 2 | 3>(1, 2, 3),
      async (t, version) => {
        const whole = version === 1
          ? await (async () => {
            const p = tmpFile();
            await writeNpy(p, typed(t));
            return await Deno.readFile(p);
          })()
          : encodeNpy(
            version,
            `{'descr': '${t.kind}', 'fortran_order': False, 'shape': (${t.values.length},), }`,
            elementBytes(t.kind, t.values),
          );
        const path = tmpFile();
        for (let cut = 0; cut < whole.length; cut++) {
          await Deno.writeFile(path, whole.subarray(0, cut));
          await refused(() => readNpyTokens(path), path, `cut at ${cut} of ${whole.length}`);
        }
        await Deno.writeFile(path, whole);
        assertEquals(Array.from(await readNpyTokens(path)), t.values, "the whole file");
      },
    ),
    runs(25),
  );
});
