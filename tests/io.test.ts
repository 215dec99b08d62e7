// Tests of src/io (dtype conversions, safetensors, npy) and src/model/config.ts.
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  bf16BitsToF32,
  bf16ToF32,
  f16BitsToF32,
  f16ToF32,
  f32Bits,
  f32FromBits,
  f32ToBf16,
  f32ToBf16Bits,
  f32ToF16,
  f32ToF16Bits,
  toFloat32,
} from "../src/io/dtype.ts";
import {
  INDEX_FILE_NAME,
  SafetensorsFile,
  SafetensorsModel,
  SINGLE_FILE_NAME,
  type TensorToWrite,
  writeSafetensors,
  writeShardedSafetensors,
} from "../src/io/safetensors.ts";
import {
  NpyTokenFile,
  readNpyInfo,
  readNpyTokens,
  readNpyWindow,
  writeNpy,
} from "../src/io/npy.ts";
import { type ModelConfig, paramCount, parameterShapes, ropeInvFreq } from "../src/model/config.ts";
import { parseHfConfig, toHfConfig } from "../src/model/hf_config.ts";
import { presetConfig, PRESETS } from "../src/model/presets.ts";

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "distflash-io-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

// ---------------------------------------------------------------------------------------------
// dtype conversions. Expected bit patterns are worked out by hand from the IEEE layouts:
// bf16 = top 16 bits of float32 (1 sign, 8 exponent, 7 mantissa); f16 = 1 sign, 5 exponent (bias
// 15), 10 mantissa.

Deno.test("bf16: exact known values", () => {
  assert.equal(f32ToBf16Bits(1.0), 0x3f80);
  assert.equal(f32ToBf16Bits(-2.0), 0xc000);
  assert.equal(f32ToBf16Bits(0), 0x0000);
  assert.equal(f32ToBf16Bits(-0), 0x8000);
  // pi = 0x40490FDB in float32: the dropped half 0x0FDB is below 0x8000, so it truncates.
  assert.equal(f32ToBf16Bits(Math.PI), 0x4049);
  assert.equal(bf16BitsToF32(0x4049), 3.140625);
  assert.equal(bf16BitsToF32(0x3f80), 1);
  assert.equal(bf16BitsToF32(0x0001), 2 ** -133); // smallest subnormal: 2^-149 * 2^16
  assert.equal(f32ToBf16Bits(Infinity), 0x7f80);
  assert.equal(f32ToBf16Bits(-Infinity), 0xff80);
});

Deno.test("bf16: round to nearest even", () => {
  const fromBits = (b: number) => f32FromBits(b);
  // 1 + 2^-8 = 0x3F808000 lies exactly between 0x3F80 and 0x3F81: ties to the even 0x3F80.
  assert.equal(f32ToBf16Bits(1 + 2 ** -8), 0x3f80);
  // 1 + 3 * 2^-8 = 0x3F818000 lies between 0x3F81 and 0x3F82: ties to the even 0x3F82.
  assert.equal(f32ToBf16Bits(1 + 3 * 2 ** -8), 0x3f82);
  assert.equal(f32ToBf16Bits(fromBits(0x3f808001)), 0x3f81); // just above half: up
  assert.equal(f32ToBf16Bits(fromBits(0x3f807fff)), 0x3f80); // just below half: down
  // The largest float32 rounds up to infinity (carry into the exponent).
  assert.equal(f32ToBf16Bits(fromBits(0x7f7fffff)), 0x7f80);
});

Deno.test("bf16: NaN preserved, arrays agree with scalars", () => {
  const src = new Float32Array(8);
  const bits = new Uint32Array(src.buffer);
  bits.set([0x7fc00000, 0x7f800001, 0xffc00000, 0x3f808000, 0x3f818000, 0x7f800000, 0, 0xbf800000]);
  const out = f32ToBf16(src);
  assert.equal(out[0], 0x7fc0);
  assert.equal(out[1], 0x7fc0); // signalling NaN with only low payload bits stays NaN (not Inf)
  assert.equal(out[2], 0xffc0);
  assert.deepEqual([...out.subarray(3)], [0x3f80, 0x3f82, 0x7f80, 0, 0xbf80]);
  const back = bf16ToF32(out);
  assert.ok(Number.isNaN(back[0]) && Number.isNaN(back[1]) && Number.isNaN(back[2]));
  assert.deepEqual([...back.subarray(3)], [1, 1 + 2 ** -6, Infinity, 0, -1]);
  // Every non-NaN bf16 value survives bf16 -> f32 -> bf16.
  const all = new Uint16Array(65536).map((_, i) => i);
  const again = f32ToBf16(bf16ToF32(all));
  for (let i = 0; i < 65536; i++) {
    if ((i & 0x7fff) > 0x7f80) assert.ok((again[i] & 0x7fff) > 0x7f80, `NaN ${i}`);
    else if (again[i] !== i) assert.fail(`bf16 ${i.toString(16)} -> ${again[i].toString(16)}`);
  }
});

Deno.test("f16: exact known values and rounding", () => {
  assert.equal(f32ToF16Bits(1.0), 0x3c00);
  assert.equal(f32ToF16Bits(-2.0), 0xc000);
  assert.equal(f32ToF16Bits(-0), 0x8000);
  assert.equal(f32ToF16Bits(0.1), 0x2e66); // 0.1 ~ 1.6 * 2^-4: mantissa 0.6 * 1024 = 614.4 -> 0x266
  assert.equal(f32ToF16Bits(65504), 0x7bff); // largest finite half
  assert.equal(f32ToF16Bits(65519), 0x7bff); // below the midpoint 65520
  assert.equal(f32ToF16Bits(65520), 0x7c00); // midpoint: ties to even, which is infinity
  assert.equal(f32ToF16Bits(1e6), 0x7c00);
  assert.equal(f32ToF16Bits(2 ** -14), 0x0400); // smallest normal
  assert.equal(f32ToF16Bits(2 ** -24), 0x0001); // smallest subnormal
  assert.equal(f32ToF16Bits(2 ** -25), 0x0000); // half of it: ties to even (0)
  assert.equal(f32ToF16Bits(3 * 2 ** -26), 0x0001); // 0.75 units: up
  assert.equal(f32ToF16Bits(3 * 2 ** -25), 0x0002); // 1.5 units: ties to even (2)
  assert.equal(f32ToF16Bits(5 * 2 ** -25), 0x0002); // 2.5 units: ties to even (2)
  assert.equal(f32ToF16Bits(1 + 2 ** -11), 0x3c00); // tie between 0x3C00 and 0x3C01
  assert.equal(f32ToF16Bits(1 + 3 * 2 ** -11), 0x3c02); // tie between 0x3C01 and 0x3C02
  assert.equal(f32ToF16Bits(Infinity), 0x7c00);
  assert.equal(f32ToF16Bits(-Infinity), 0xfc00);
  assert.equal(f32ToF16Bits(NaN) & 0x7e00, 0x7e00);
  assert.equal(f16BitsToF32(0x3555), 0.333251953125); // (1 + 0x155/1024) * 2^-2
  assert.equal(f16BitsToF32(0x0001), 2 ** -24);
  assert.equal(f16BitsToF32(0x03ff), 1023 * 2 ** -24);
  assert.equal(f16BitsToF32(0x7bff), 65504);
  assert.equal(f16BitsToF32(0xfc00), -Infinity);
  assert.ok(Number.isNaN(f16BitsToF32(0x7e00)));
  assert.ok(Number.isNaN(f16BitsToF32(0x7c01)));
});

Deno.test("f16: every half value round-trips; arrays agree with scalars", () => {
  const all = new Uint16Array(65536).map((_, i) => i);
  const f = f16ToF32(all);
  const back = f32ToF16(f);
  for (let i = 0; i < 65536; i++) {
    const isNaN = (i & 0x7c00) === 0x7c00 && (i & 0x3ff) !== 0;
    if (isNaN) {
      assert.ok(Number.isNaN(f[i]));
      assert.ok((back[i] & 0x7c00) === 0x7c00 && (back[i] & 0x3ff) !== 0);
    } else if (back[i] !== i) assert.fail(`f16 ${i.toString(16)} -> ${back[i].toString(16)}`);
  }
  const xs = new Float32Array([0.1, 65520, 3 * 2 ** -25, -1e-8, 1 + 3 * 2 ** -11, 7.25, -65504]);
  const arr = f32ToF16(xs);
  xs.forEach((x, i) => assert.equal(arr[i], f32ToF16Bits(x), `element ${i}`));
  assert.equal(f32Bits(1), 0x3f800000);
});

// ---------------------------------------------------------------------------------------------
// safetensors

function sampleTensors(): TensorToWrite[] {
  const w = new Float32Array([1, -2.5, 3.25, 1e-3, 7, 8]);
  return [
    { name: "a.weight", dtype: "F32", shape: [2, 3], data: w },
    { name: "b.bf16", dtype: "BF16", shape: [3], data: f32ToBf16(new Float32Array([1, -2, 0.5])) },
    { name: "c.i64", dtype: "I64", shape: [2], data: new BigInt64Array([-5n, 1n << 40n]) },
    { name: "d.u8", dtype: "U8", shape: [5], data: new Uint8Array([1, 2, 3, 4, 5]) },
    { name: "e.scalar", dtype: "F64", shape: [], data: new Float64Array([Math.E]) },
    { name: "f.empty", dtype: "F32", shape: [0, 4], data: new Float32Array(0) },
    // Produced lazily, just before it is written:
    { name: "g.f16", dtype: "F16", shape: [2], data: () => f32ToF16(new Float32Array([0.5, -8])) },
  ];
}

async function expectedBytes(t: TensorToWrite): Promise<Uint8Array> {
  const v = typeof t.data === "function" ? await t.data() : t.data;
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength).slice();
}

Deno.test("safetensors: single-file round trip", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "x.safetensors");
    const tensors = sampleTensors();
    await writeSafetensors(path, tensors, { note: "hello" });
    assert.deepEqual(await listDir(dir), ["x.safetensors"]); // no temporary left behind
    const raw = await Deno.readFile(path);
    const n = Number(new DataView(raw.buffer).getBigUint64(0, true));
    assert.equal((8 + n) % 8, 0, "data must start 8-byte aligned");
    const f = await SafetensorsFile.open(path);
    try {
      assert.deepEqual(f.metadata, { format: "pt", note: "hello" });
      assert.deepEqual(f.names(), tensors.map((t) => t.name));
      for (const t of tensors) {
        const info = f.info(t.name);
        assert.equal(info.dtype, t.dtype);
        assert.deepEqual(info.shape, t.shape);
        assert.deepEqual(await f.readBytes(t.name), await expectedBytes(t));
      }
      assert.deepEqual([...await f.readFloat32("a.weight")], [
        1,
        -2.5,
        3.25,
        Math.fround(1e-3),
        7,
        8,
      ]);
      assert.deepEqual([...await f.readFloat32("b.bf16")], [1, -2, 0.5]);
      assert.deepEqual([...await f.readFloat32("g.f16")], [0.5, -8]);
      assert.deepEqual([...await f.readFloat32("e.scalar")], [Math.fround(Math.E)]);
      assert.deepEqual([...await f.readFloat32("c.i64")], [-5, 2 ** 40]);
      assert.equal((await f.readFloat32("f.empty")).length, 0);
      // Concurrent reads on one handle are serialized correctly.
      const all = await Promise.all(tensors.map((t) => f.readBytes(t.name)));
      for (let i = 0; i < tensors.length; i++) {
        assert.deepEqual(all[i], await expectedBytes(tensors[i]));
      }
      assert.deepEqual(await f.readRange("d.u8", 1, 3), new Uint8Array([2, 3, 4]));
      await assert.rejects(() => f.readBytes("nope"), /no tensor named "nope"/);
    } finally {
      f.close();
    }
    // A folder with model.safetensors opens as a model.
    await Deno.rename(path, join(dir, SINGLE_FILE_NAME));
    const m = await SafetensorsModel.open(dir);
    try {
      assert.equal(m.sharded, false);
      assert.deepEqual(m.names(), tensors.map((t) => t.name));
    } finally {
      m.close();
    }
  });
});

Deno.test("safetensors: sharded folder round trip, then rewrite as one file", async () => {
  await withTempDir(async (dir) => {
    const tensors: TensorToWrite[] = [];
    for (let i = 0; i < 5; i++) {
      const d = new Float32Array(10 + i).map((_, k) => i * 100 + k);
      tensors.push({ name: `layers.${i}.w`, dtype: "F32", shape: [10 + i], data: d });
    }
    // 10..14 floats = 40, 44, 48, 52, 56 bytes; at most 100 bytes per shard: [0,1] [2,3] [4].
    const written = await writeShardedSafetensors(dir, tensors, 100);
    assert.deepEqual(written, [
      "model-00001-of-00003.safetensors",
      "model-00002-of-00003.safetensors",
      "model-00003-of-00003.safetensors",
      INDEX_FILE_NAME,
    ]);
    assert.deepEqual(await listDir(dir), [...written].sort());
    const index = JSON.parse(await Deno.readTextFile(join(dir, INDEX_FILE_NAME)));
    assert.equal(index.metadata.total_size, (10 + 11 + 12 + 13 + 14) * 4);
    assert.equal(index.metadata.total_parameters, 10 + 11 + 12 + 13 + 14);
    assert.deepEqual(index.weight_map, {
      "layers.0.w": "model-00001-of-00003.safetensors",
      "layers.1.w": "model-00001-of-00003.safetensors",
      "layers.2.w": "model-00002-of-00003.safetensors",
      "layers.3.w": "model-00002-of-00003.safetensors",
      "layers.4.w": "model-00003-of-00003.safetensors",
    });
    const m = await SafetensorsModel.open(dir);
    try {
      assert.equal(m.sharded, true);
      assert.equal(m.files.length, 3);
      assert.deepEqual(m.names(), tensors.map((t) => t.name));
      for (const t of tensors) {
        assert.deepEqual(await m.readBytes(t.name), await expectedBytes(t));
        assert.deepEqual(await m.readFloat32(t.name), t.data);
      }
    } finally {
      m.close();
    }
    // Rewriting with room for everything leaves a single model.safetensors and nothing stale.
    assert.deepEqual(await writeShardedSafetensors(dir, tensors, 1 << 20), [SINGLE_FILE_NAME]);
    assert.deepEqual(await listDir(dir), [SINGLE_FILE_NAME]);
    const m2 = await SafetensorsModel.open(dir);
    try {
      for (const t of tensors) assert.deepEqual(await m2.readBytes(t.name), await expectedBytes(t));
    } finally {
      m2.close();
    }
  });
});

Deno.test("safetensors: index naming a tensor its shard lacks is an error", async () => {
  await withTempDir(async (dir) => {
    const t: TensorToWrite = { name: "w", dtype: "F32", shape: [1], data: new Float32Array(1) };
    await writeSafetensors(join(dir, "model-00001-of-00001.safetensors"), [t]);
    await Deno.writeTextFile(
      join(dir, INDEX_FILE_NAME),
      JSON.stringify({
        weight_map: {
          w: "model-00001-of-00001.safetensors",
          v: "model-00001-of-00001.safetensors",
        },
      }),
    );
    await assert.rejects(
      () => SafetensorsModel.open(dir),
      /"v" in model-00001-of-00001.safetensors/,
    );
    await Deno.remove(join(dir, INDEX_FILE_NAME));
    await assert.rejects(
      () => SafetensorsModel.open(dir),
      /no model.safetensors or model.safetensors.index.json/,
    );
  });
});

/** A raw safetensors file with the given header object (or text) and data size. */
async function rawFile(path: string, header: unknown, dataBytes: number, lenOverride?: bigint) {
  const json = new TextEncoder().encode(
    typeof header === "string" ? header : JSON.stringify(header),
  );
  const out = new Uint8Array(8 + json.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, lenOverride ?? BigInt(json.length), true);
  out.set(json, 8);
  await Deno.writeFile(path, out);
}

Deno.test("safetensors: corrupt headers and offsets give clear errors", async () => {
  await withTempDir(async (dir) => {
    const p = join(dir, "bad.safetensors");
    const cases: [unknown, number, RegExp, bigint?][] = [
      [{ w: { dtype: "F32", shape: [2], data_offsets: [0, 8] } }, 4, /"w".*run past the end/],
      [
        { w: { dtype: "F32", shape: [3], data_offsets: [0, 8] } },
        8,
        /"w".*hold 8 bytes but F32 \[3\] needs 12/,
      ],
      [{ w: { dtype: "Q4", shape: [2], data_offsets: [0, 8] } }, 8, /"w": unsupported dtype "Q4"/],
      [{ w: { dtype: "F32", shape: [2.5], data_offsets: [0, 8] } }, 8, /"w": shape/],
      [{ w: { dtype: "F32", shape: [2], data_offsets: [8, 0] } }, 8, /"w".*end before begin/],
      [
        {
          a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
          b: { dtype: "F32", shape: [2], data_offsets: [4, 12] },
        },
        12,
        /"b".*overlaps/,
      ],
      [
        {
          a: { dtype: "F32", shape: [1], data_offsets: [0, 4] },
          b: { dtype: "F32", shape: [1], data_offsets: [8, 12] },
        },
        12,
        /"b".*leaves a gap/,
      ],
      [{ w: { dtype: "F32", shape: [1], data_offsets: [0, 4] } }, 8, /trailing bytes/],
      ["{not json", 0, /not valid JSON/],
      [{ __metadata__: { n: 3 } }, 0, /__metadata__.n must be a string/],
      [
        { w: { dtype: "F32", shape: [1], data_offsets: [0, 4] } },
        4,
        /header length .* runs past/,
        1000n,
      ],
      [{}, 0, /exceeds the 100000000-byte limit/, 1n << 40n],
    ];
    for (const [header, dataBytes, re, len] of cases) {
      await rawFile(p, header, dataBytes, len);
      await assert.rejects(() => SafetensorsFile.open(p), (e: Error) => {
        assert.match(e.message, re);
        assert.ok(e.message.includes(p), `error names the file: ${e.message}`);
        return true;
      });
    }
    await Deno.writeFile(p, new Uint8Array(3));
    await assert.rejects(() => SafetensorsFile.open(p), /too short/);
  });
});

Deno.test("safetensors: failed write leaves nothing behind", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "x.safetensors");
    const bad: TensorToWrite[] = [
      { name: "ok", dtype: "F32", shape: [1], data: new Float32Array(1) },
      { name: "short", dtype: "F32", shape: [4], data: () => new Float32Array(3) },
    ];
    await assert.rejects(
      () => writeSafetensors(path, bad),
      /"short": F32 \[4\] needs 16 bytes, data has 12/,
    );
    assert.deepEqual(await listDir(dir), []);
    const dup: TensorToWrite[] = [bad[0], bad[0]];
    await assert.rejects(() => writeSafetensors(path, dup), /duplicate tensor name ok/);
  });
});

// ---------------------------------------------------------------------------------------------
// npy

Deno.test("npy: round trip for every dtype, whole and windowed", async () => {
  await withTempDir(async (dir) => {
    const n = 1000;
    const ids = Int32Array.from({ length: n }, (_, i) => (i * 7919) % 65536);
    const inputs: [string, Int32Array | Uint16Array | Uint32Array | BigInt64Array][] = [
      ["int32", Int32Array.from(ids, (v, i) => (i === 5 ? 2147483647 : i === 6 ? -100 : v))],
      ["uint16", Uint16Array.from(ids)],
      ["uint32", Uint32Array.from(ids, (v, i) => (i === 5 ? 2147483647 : v))],
      ["int64", BigInt64Array.from(ids, (v, i) => BigInt(i === 6 ? -100 : v))],
    ];
    for (const [dtype, data] of inputs) {
      const p = join(dir, `${dtype}.npy`);
      await writeNpy(p, data);
      const expected = Int32Array.from(data as ArrayLike<number | bigint>, (v) => Number(v));
      const info = await readNpyInfo(p);
      assert.equal(info.dtype, dtype);
      assert.equal(info.length, n);
      assert.equal(info.dataOffset % 64, 0);
      assert.deepEqual(await readNpyTokens(p), expected);
      assert.deepEqual(await readNpyWindow(p, 3, 10), expected.subarray(3, 13));
      const f = await NpyTokenFile.open(p);
      try {
        assert.deepEqual(await f.read(n - 1, 1), expected.subarray(n - 1));
        assert.deepEqual(await f.read(0, 0), new Int32Array(0));
        const out = new Int32Array(20);
        await f.read(500, 20, out);
        assert.deepEqual(out, expected.subarray(500, 520));
        await assert.rejects(
          () => f.read(995, 10),
          /token window \[995, 1005\) outside \[0, 1000\)/,
        );
      } finally {
        f.close();
      }
    }
  });
});

/** A .npy file with a hand-written header (version major.0) followed by `data`. */
async function rawNpy(path: string, header: string, data: Uint8Array, major = 1) {
  const h = new TextEncoder().encode(header + "\n");
  const pre = major === 1 ? 10 : 12;
  const out = new Uint8Array(pre + h.length + data.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, major, 0]);
  if (major === 1) new DataView(out.buffer).setUint16(8, h.length, true);
  else new DataView(out.buffer).setUint32(8, h.length, true);
  out.set(h, pre);
  out.set(data, pre + h.length);
  await Deno.writeFile(path, out);
}

Deno.test("npy: versions 2 and 3, '|' byte order, other key orders", async () => {
  await withTempDir(async (dir) => {
    const data = new Uint8Array(new Uint16Array([1, 2, 65535]).buffer);
    const p = join(dir, "v.npy");
    await rawNpy(p, "{'shape': (3,), 'fortran_order': False, 'descr': '<u2'}", data, 2);
    assert.deepEqual(await readNpyTokens(p), new Int32Array([1, 2, 65535]));
    await rawNpy(p, "{'descr': '|u2', 'fortran_order': False, 'shape': (3,), }", data, 3);
    assert.deepEqual(await readNpyTokens(p), new Int32Array([1, 2, 65535]));
    assert.deepEqual((await readNpyInfo(p)).version, [3, 0]);
  });
});

Deno.test("npy: clear errors", async () => {
  await withTempDir(async (dir) => {
    const p = join(dir, "bad.npy");
    const four = new Uint8Array(16);
    const cases: [string, Uint8Array, RegExp][] = [
      ["{'descr': '<i4', 'fortran_order': True, 'shape': (4,), }", four, /fortran_order is True/],
      [
        "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 2), }",
        four,
        /expected a 1-D array.*ndim 2/,
      ],
      ["{'descr': '<i4', 'fortran_order': False, 'shape': (), }", four, /ndim 0/],
      [
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }",
        four,
        /unsupported dtype '<f4'; allowed: <u2 \(uint16\), <i4 \(int32\), <u4 \(uint32\), <i8 \(int64\)/,
      ],
      [
        "{'descr': '>u2', 'fortran_order': False, 'shape': (4,), }",
        four,
        /unsupported dtype '>u2'/,
      ],
      ["{'descr': '<i4', 'fortran_order': False, 'shape': (5,), }", four, /truncated/],
    ];
    for (const [header, data, re] of cases) {
      await rawNpy(p, header, data);
      await assert.rejects(() => readNpyTokens(p), (e: Error) => {
        assert.match(e.message, re);
        assert.ok(e.message.startsWith(p), e.message);
        return true;
      });
    }
    await Deno.writeFile(p, new TextEncoder().encode("PK\x03\x04 not numpy at all"));
    await assert.rejects(() => readNpyTokens(p), /bad.npy: not a .npy file \(wrong magic/);

    await writeNpy(p, new Uint32Array([1, 2, 2147483648]));
    await assert.rejects(
      () => readNpyTokens(p),
      /bad.npy: token 2 has uint32 value 2147483648 > 2\^31-1/,
    );
    assert.deepEqual(await readNpyWindow(p, 0, 2), new Int32Array([1, 2])); // the window avoids it
    await writeNpy(p, new BigInt64Array([0n, 1n << 31n]));
    await assert.rejects(() => readNpyTokens(p), /token 1 has int64 value 2147483648, outside/);
    await writeNpy(p, new BigInt64Array([-(1n << 31n) - 1n]));
    await assert.rejects(() => readNpyTokens(p), /int64 value -2147483649/);
  });
});

// ---------------------------------------------------------------------------------------------
// config

// As published with Meta-Llama-3.1-8B (transformers 4.43).
const LLAMA31_CLASSIC = {
  architectures: ["LlamaForCausalLM"],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 128000,
  eos_token_id: 128001,
  hidden_act: "silu",
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 14336,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: "llama",
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  pretraining_tp: 1,
  rms_norm_eps: 1e-05,
  rope_scaling: {
    factor: 8.0,
    low_freq_factor: 1.0,
    high_freq_factor: 4.0,
    original_max_position_embeddings: 8192,
    rope_type: "llama3",
  },
  rope_theta: 500000.0,
  tie_word_embeddings: false,
  torch_dtype: "bfloat16",
  transformers_version: "4.43.0.dev0",
  use_cache: true,
  vocab_size: 128256,
};

// The same model as transformers 5 saves it.
const LLAMA31_V5 = {
  architectures: ["LlamaForCausalLM"],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 128000,
  dtype: "bfloat16",
  eos_token_id: 128001,
  head_dim: 128,
  hidden_act: "silu",
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 14336,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: "llama",
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  pretraining_tp: 1,
  rms_norm_eps: 1e-05,
  rope_parameters: {
    factor: 8.0,
    high_freq_factor: 4.0,
    low_freq_factor: 1.0,
    original_max_position_embeddings: 8192,
    rope_theta: 500000.0,
    rope_type: "llama3",
  },
  tie_word_embeddings: false,
  transformers_version: "5.0.0",
  use_cache: true,
  vocab_size: 128256,
};

Deno.test("config: Llama-3.1 classic and transformers-5 configs parse the same", () => {
  const a = parseHfConfig(LLAMA31_CLASSIC, "classic/config.json");
  const b = parseHfConfig(LLAMA31_V5, "v5/config.json");
  const expected: ModelConfig = {
    vocabSize: 128256,
    hiddenSize: 4096,
    intermediateSize: 14336,
    numLayers: 32,
    numHeads: 32,
    numKvHeads: 8,
    headDim: 128,
    rmsNormEps: 1e-5,
    ropeTheta: 500000,
    ropeScaling: {
      type: "llama3",
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 8192,
    },
    maxPositionEmbeddings: 131072,
    tieWordEmbeddings: false,
    bosTokenId: 128000,
    eosTokenId: 128001,
  };
  assert.deepEqual(a, expected);
  assert.deepEqual(b, expected);
  // toHfConfig writes the classic form, which parses back to the same config.
  const hf = toHfConfig(a);
  assert.equal(hf.model_type, "llama");
  assert.deepEqual(hf.architectures, ["LlamaForCausalLM"]);
  assert.equal(hf.rope_theta, 500000);
  assert.equal((hf.rope_scaling as Record<string, unknown>).rope_type, "llama3");
  assert.equal(hf.torch_dtype, "bfloat16");
  assert.deepEqual(parseHfConfig(JSON.parse(JSON.stringify(hf)), "out"), expected);
});

Deno.test("config: Llama-2 defaults, old 'type' key, eos lists", () => {
  const llama2 = {
    architectures: ["LlamaForCausalLM"],
    bos_token_id: 1,
    eos_token_id: 2,
    hidden_act: "silu",
    hidden_size: 4096,
    intermediate_size: 11008,
    max_position_embeddings: 4096,
    model_type: "llama",
    num_attention_heads: 32,
    num_hidden_layers: 32,
    rms_norm_eps: 1e-05,
    rope_scaling: null,
    vocab_size: 32000,
  };
  assert.deepEqual(parseHfConfig(llama2, "l2"), presetConfig("llama-2-7b"));
  const linear = parseHfConfig({ ...llama2, rope_scaling: { type: "linear", factor: 4 } }, "x");
  assert.deepEqual(linear.ropeScaling, { type: "linear", factor: 4 });
  const eos = parseHfConfig({ ...llama2, eos_token_id: [128001, 128008, 128009] }, "x");
  assert.deepEqual(eos.eosTokenId, [128001, 128008, 128009]);
  const noType = { ...llama2, model_type: undefined };
  assert.equal(parseHfConfig(noType, "x").hiddenSize, 4096);
});

Deno.test("config: rejections name the file and key", () => {
  const base = { ...LLAMA31_CLASSIC };
  const bad: [Record<string, unknown>, RegExp][] = [
    [
      { rope_scaling: { rope_type: "yarn", factor: 4 } },
      /cfg.json: "rope_scaling.rope_type" is "yarn"/,
    ],
    [
      { rope_scaling: { type: "dynamic", factor: 2 } },
      /cfg.json: "rope_scaling.rope_type" is "dynamic"/,
    ],
    [
      { rope_scaling: undefined, rope_parameters: { rope_type: "yarn", rope_theta: 1e4 } },
      /cfg.json: "rope_parameters.rope_type" is "yarn".*supported: default, linear, llama3/,
    ],
    [
      { rope_scaling: { rope_type: "llama3", factor: 8 } },
      /cfg.json: missing required key "rope_scaling.low_freq_factor"/,
    ],
    [{ attention_bias: true }, /cfg.json: "attention_bias" is true/],
    [{ mlp_bias: true }, /cfg.json: "mlp_bias" is true/],
    [{ model_type: "gemma" }, /cfg.json: model_type "gemma" .*does not train this family/],
    [{ model_type: "mistral", sliding_window: -1 }, /cfg.json: "sliding_window" is -1/],
    [
      { num_attention_heads: 30 },
      /hidden_size \(4096\) is not divisible by num_attention_heads \(30\)/,
    ],
    [
      { num_key_value_heads: 5 },
      /num_attention_heads \(32\) is not a multiple of num_key_value_heads \(5\)/,
    ],
    [{ vocab_size: undefined }, /cfg.json: missing required key "vocab_size"/],
    [{ hidden_size: "4096" }, /cfg.json: "hidden_size" must be a positive integer/],
  ];
  for (const [patch, re] of bad) {
    assert.throws(() => parseHfConfig({ ...base, ...patch }, "cfg.json"), re);
  }
  // Heads not dividing hidden is fine when head_dim is given explicitly.
  const c = parseHfConfig({
    ...base,
    num_attention_heads: 24,
    num_key_value_heads: 8,
    head_dim: 128,
  }, "c");
  assert.equal(c.headDim, 128);
});

Deno.test("config: ropeInvFreq for llama3 scaling, hand-computed", () => {
  // headDim 8, theta 500000: inv_i = 500000^(-i/4) for i = 0..3, i.e.
  //   1, 0.0376060309, 0.00141421356 (= 1/sqrt(500000)), 5.3182959e-5.
  // factor 8, low 1, high 4, original 8192: lowWl = 8192, highWl = 2048; wavelen = 2pi / inv =
  //   6.28, 167.08, 4442.88, 118142.8. So i = 0, 1 are kept (wavelen < 2048); i = 3 is divided
  //   by 8 (> 8192); i = 2 is interpolated with s = (8192 / 4442.8829 - 1) / (4 - 1) = 0.2812826:
  //   (1 - s) * inv / 8 + s * inv = 0.00052484616.
  const cfg: ModelConfig = {
    ...presetConfig("debug-tiny"),
    hiddenSize: 32,
    numHeads: 4,
    numKvHeads: 4,
    headDim: 8,
    ropeTheta: 500000,
    ropeScaling: {
      type: "llama3",
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 8192,
    },
  };
  const expected = [1, 0.03760603093086393, 0.0005248461609929547, 6.647869871181235e-6];
  const got = ropeInvFreq(cfg);
  assert.equal(got.length, 4);
  for (let i = 0; i < 4; i++) {
    assert.ok(Math.abs(got[i] - expected[i]) <= 1e-14 * expected[i], `inv[${i}] ${got[i]}`);
  }
  // The float32-rounded variant agrees to float32 precision.
  const g32 = ropeInvFreq(cfg, { float32: true });
  for (let i = 0; i < 4; i++) {
    assert.ok(Math.abs(g32[i] - expected[i]) <= 1e-6 * expected[i], `f32 inv[${i}] ${g32[i]}`);
    assert.equal(g32[i], Math.fround(g32[i]));
  }
  // Default and linear: 10000^(-2i/d), divided by the factor for linear.
  const def = ropeInvFreq({ ...cfg, ropeTheta: 10000, ropeScaling: null });
  assert.deepEqual([...def].map((x) => +x.toPrecision(12)), [1, 0.1, 0.01, 0.001]);
  const lin = ropeInvFreq({ ...cfg, ropeTheta: 10000, ropeScaling: { type: "linear", factor: 4 } });
  assert.deepEqual([...lin].map((x) => +x.toPrecision(12)), [0.25, 0.025, 0.0025, 0.00025]);
});

Deno.test("config: presets, parameter counts and shapes", () => {
  assert.equal(paramCount(presetConfig("llama-2-7b")), 6_738_415_616);
  assert.equal(paramCount(presetConfig("llama-3-8b")), 8_030_261_248);
  assert.equal(paramCount(presetConfig("tinyllama-1.1b")), 1_100_048_384);
  assert.equal(paramCount(presetConfig("llama-2-13b")), 13_015_864_320);
  assert.deepEqual(presetConfig("Llama-2-7b"), presetConfig("llama-2-7b"));
  assert.deepEqual(presetConfig("TinyLlama-1.1B"), presetConfig("tinyllama-1.1b"));
  assert.throws(
    () => presetConfig("llama-9"),
    /unknown model preset "llama-9"; presets: llama-2-7b, .*debug-tiny/,
  );
  const c = presetConfig("llama-3-8b");
  c.numLayers = 1; // a fresh copy: presets are not modified
  assert.equal(PRESETS["llama-3-8b"].numLayers, 32);
  for (const name of Object.keys(PRESETS)) {
    // Every preset survives toHfConfig -> parseHfConfig.
    assert.deepEqual(parseHfConfig(toHfConfig(presetConfig(name)), name), presetConfig(name));
  }
  const tiny = presetConfig("debug-tiny");
  assert.deepEqual(
    [
      tiny.vocabSize,
      tiny.hiddenSize,
      tiny.intermediateSize,
      tiny.numLayers,
      tiny.numHeads,
      tiny.numKvHeads,
    ],
    [259, 64, 176, 2, 4, 2],
  );
  const shapes = parameterShapes(tiny);
  assert.equal(shapes.length, 1 + 2 * 9 + 2);
  assert.deepEqual(shapes.slice(0, 10), [
    { name: "model.embed_tokens.weight", shape: [259, 64] },
    { name: "model.layers.0.input_layernorm.weight", shape: [64] },
    { name: "model.layers.0.self_attn.q_proj.weight", shape: [64, 64] },
    { name: "model.layers.0.self_attn.k_proj.weight", shape: [32, 64] },
    { name: "model.layers.0.self_attn.v_proj.weight", shape: [32, 64] },
    { name: "model.layers.0.self_attn.o_proj.weight", shape: [64, 64] },
    { name: "model.layers.0.post_attention_layernorm.weight", shape: [64] },
    { name: "model.layers.0.mlp.gate_proj.weight", shape: [176, 64] },
    { name: "model.layers.0.mlp.up_proj.weight", shape: [176, 64] },
    { name: "model.layers.0.mlp.down_proj.weight", shape: [64, 176] },
  ]);
  assert.deepEqual(shapes.slice(-2), [
    { name: "model.norm.weight", shape: [64] },
    { name: "lm_head.weight", shape: [259, 64] },
  ]);
  const tied = parameterShapes({ ...tiny, tieWordEmbeddings: true });
  assert.equal(tied.at(-1)!.name, "model.norm.weight");
  assert.equal(paramCount({ ...tiny, tieWordEmbeddings: true }), paramCount(tiny) - 259 * 64);
  // toFloat32 of integer tensors (used when reading checkpoints with integer buffers).
  assert.deepEqual([...toFloat32("I32", new Uint8Array(new Int32Array([-3, 7]).buffer))], [-3, 7]);
});
