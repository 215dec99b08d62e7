/** A quick end-to-end check of a backend: allocate, copy, run the first ops, compare on the host. */
import type { Device } from "./device.ts";
import { axpyF32, castBf16ToF32, castF32ToBf16 } from "./ops_basic.ts";
import { bf16BitsToF32, f32ToBf16Bits } from "../io/dtype.ts";

export interface SelfTestResult {
  backend: string;
  device: string;
  ok: boolean;
  checks: { name: string; maxError: number; ok: boolean }[];
}

export function selfTest(device: Device, n = 1 << 16): SelfTestResult {
  const x = new Float32Array(n), y = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    x[i] = Math.sin(i * 0.37) * 3;
    y[i] = Math.cos(i * 0.11);
  }
  const a = 0.75;
  const dx = device.alloc(4 * n), dy = device.alloc(4 * n), dh = device.alloc(2 * n);
  const checks: SelfTestResult["checks"] = [];
  try {
    device.upload(dx.ptr, x);
    device.upload(dy.ptr, y);
    axpyF32(device, dy.ptr, dx.ptr, a, n);
    const got = device.download(new Float32Array(n), dy.ptr);
    let err = 0;
    for (let i = 0; i < n; i++) {
      err = Math.max(err, Math.abs(got[i] - Math.fround(y[i] + a * x[i])));
    }
    checks.push({ name: "axpy_f32", maxError: err, ok: err <= 1e-6 });

    castF32ToBf16(device, dh.ptr, dx.ptr, n);
    const bits = device.download(new Uint16Array(n), dh.ptr);
    let mismatches = 0;
    for (let i = 0; i < n; i++) if (bits[i] !== f32ToBf16Bits(x[i])) mismatches++;
    checks.push({ name: "cast_f32_to_bf16", maxError: mismatches, ok: mismatches === 0 });

    castBf16ToF32(device, dy.ptr, dh.ptr, n);
    const back = device.download(new Float32Array(n), dy.ptr);
    let castErr = 0;
    for (let i = 0; i < n; i++) {
      castErr = Math.max(castErr, Math.abs(back[i] - bf16BitsToF32(bits[i])));
    }
    checks.push({ name: "cast_bf16_to_f32", maxError: castErr, ok: castErr === 0 });
  } finally {
    dx.free();
    dy.free();
    dh.free();
  }
  return {
    backend: device.backend,
    device: device.props(0).name,
    ok: checks.every((c) => c.ok),
    checks,
  };
}
