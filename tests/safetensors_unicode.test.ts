/**
 * safetensors with non-ASCII tensor names and metadata. The header length is a count of bytes
 * of UTF-8 JSON (the format's definition), checked here against a file laid out by hand, in both
 * directions: distflash reads the hand-made file, and the file distflash writes parses by hand.
 */
import { assertEquals } from "./assert.ts";
import { join } from "node:path";
import { SafetensorsFile, writeSafetensors } from "../src/io/safetensors.ts";

const NAME = "modèle.café.weight😀";
const META = { format: "pt", note: "café ü 😀 — 名前" };
const VALUES = [1.5, -2, 3.25, 0.125];

/** A safetensors file built from the format's definition: u64 LE byte length, JSON, data. */
function handMade(): Uint8Array {
  const header = JSON.stringify({
    __metadata__: META,
    [NAME]: { dtype: "F32", shape: [2, 2], data_offsets: [0, 16] },
  });
  const json = new TextEncoder().encode(header); // more bytes than header.length characters
  const out = new Uint8Array(8 + json.length + 16);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  VALUES.forEach((v, i) => view.setFloat32(8 + json.length + 4 * i, v, true));
  return out;
}

Deno.test("safetensors: non-ASCII names and metadata, read from a hand-made file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "hand.safetensors");
    await Deno.writeFile(path, handMade());
    const f = await SafetensorsFile.open(path);
    try {
      assertEquals(f.names(), [NAME]);
      assertEquals(f.metadata, META);
      assertEquals(Array.from(await f.readFloat32(NAME)), VALUES);
    } finally {
      f.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("safetensors: non-ASCII names and metadata, written and parsed by hand", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "out.safetensors");
    await writeSafetensors(
      path,
      [{ name: NAME, dtype: "F32", shape: [2, 2], data: new Float32Array(VALUES) }],
      META,
    );
    const bytes = await Deno.readFile(path);
    const view = new DataView(bytes.buffer);
    const n = Number(view.getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
    assertEquals(header.__metadata__, META);
    assertEquals(header[NAME].data_offsets, [0, 16]);
    assertEquals(bytes.length, 8 + n + 16, "the data follows the header's bytes");
    const data = Array.from({ length: 4 }, (_, i) => view.getFloat32(8 + n + 4 * i, true));
    assertEquals(data, VALUES);
    // And back through the reader.
    const f = await SafetensorsFile.open(path);
    try {
      assertEquals(f.metadata, META);
      assertEquals(Array.from(await f.readFloat32(NAME)), VALUES);
    } finally {
      f.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
