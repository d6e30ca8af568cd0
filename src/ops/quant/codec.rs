//! The stored types of frozen weights and their CPU codec: ggml's block layouts byte for byte
//! (ggml-common.h `block_q8_0`, `block_q4_0`, `block_q4_1`, `block_q4_K`, `block_q6_K`; decoders
//! after ggml-quants.c `dequantize_row_*` and `get_scale_min_k4`), so a GGUF tensor's bytes are
//! used as they are. `dequantize` is the reference the kernels are checked against; `quantize`
//! turns f32 weights (a safetensors base, tests) into blocks. The quantizers are the simple
//! round-to-nearest ones (ggml's `quantize_row_q4_0_ref`, `_q4_1_ref`, `_q8_0_ref`; for the
//! K-quants a min/max scale per sub-block instead of ggml's iterative `make_qkx2_quants` search,
//! so their error is somewhat larger than llama.cpp's files, never their layout).

use crate::error::{Error, Result};
use half::{bf16, f16};

/// How a frozen weight matrix is stored on the GPU. Rows (the input dimension) are split into
/// blocks of [`StoredType::block_elems`] elements of [`StoredType::block_bytes`] bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoredType {
    /// IEEE half: 2 bytes an element (decoded from u32 words, no SHADER_F16 needed).
    F16,
    /// bfloat16, the top half of an f32: 2 bytes an element.
    Bf16,
    /// 32 elements: f16 scale d, 32 i8; x = d·q. 34 bytes.
    Q8_0,
    /// 32 elements: f16 d, 16 bytes of nibbles; x = d·(q − 8). 18 bytes.
    Q4_0,
    /// 32 elements: f16 d, f16 m, 16 bytes of nibbles; x = d·q + m. 20 bytes.
    Q4_1,
    /// 256 elements in 8 sub-blocks of 32 with 6-bit scales and mins. 144 bytes.
    Q4K,
    /// 256 elements in 16 sub-blocks of 16 with i8 scales, 6-bit quants. 210 bytes.
    Q6K,
}

impl StoredType {
    /// Every stored type, in the shader's `KIND` order.
    pub const ALL: [StoredType; 7] =
        [StoredType::F16, StoredType::Bf16, StoredType::Q8_0, StoredType::Q4_0, StoredType::Q4_1, StoredType::Q4K, StoredType::Q6K];

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            StoredType::F16 | StoredType::Bf16 => 1,
            StoredType::Q8_0 | StoredType::Q4_0 | StoredType::Q4_1 => 32,
            StoredType::Q4K | StoredType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            StoredType::F16 | StoredType::Bf16 => 2,
            StoredType::Q8_0 => 34,
            StoredType::Q4_0 => 18,
            StoredType::Q4_1 => 20,
            StoredType::Q4K => 144,
            StoredType::Q6K => 210,
        }
    }

    /// The shader's `KIND` constant.
    pub fn kind_id(self) -> u32 {
        StoredType::ALL.iter().position(|&t| t == self).unwrap_or(0) as u32
    }

    /// ggml's `ggml_type` number (as GGUF tensor infos store it).
    pub fn ggml_type(self) -> u32 {
        match self {
            StoredType::F16 => 1,
            StoredType::Q4_0 => 2,
            StoredType::Q4_1 => 3,
            StoredType::Q8_0 => 8,
            StoredType::Q4K => 12,
            StoredType::Q6K => 14,
            StoredType::Bf16 => 30,
        }
    }

    /// The stored type of a `ggml_type` number, if plumb reads it.
    pub fn from_ggml_type(t: u32) -> Option<StoredType> {
        StoredType::ALL.into_iter().find(|s| s.ggml_type() == t)
    }

    /// Lower-case name as llama.cpp spells it: `f16`, `bf16`, `q8_0`, `q4_0`, `q4_1`, `q4_k`, `q6_k`.
    pub fn name(self) -> &'static str {
        match self {
            StoredType::F16 => "f16",
            StoredType::Bf16 => "bf16",
            StoredType::Q8_0 => "q8_0",
            StoredType::Q4_0 => "q4_0",
            StoredType::Q4_1 => "q4_1",
            StoredType::Q4K => "q4_k",
            StoredType::Q6K => "q6_k",
        }
    }

    /// Parse a [`StoredType::name`] (case-insensitive).
    pub fn from_name(s: &str) -> Result<StoredType> {
        let lower = s.to_ascii_lowercase();
        StoredType::ALL.into_iter().find(|t| t.name() == lower).ok_or_else(|| {
            let names: Vec<&str> = StoredType::ALL.iter().map(|t| t.name()).collect();
            Error::config("stored type", format!("`{s}` is not one of {}", names.join(", ")))
        })
    }

    /// Bytes of one stored row of `k` elements; an error unless `k` is a whole number of blocks.
    pub fn row_bytes(self, k: usize) -> Result<usize> {
        if !k.is_multiple_of(self.block_elems()) {
            return Err(Error::shape(
                "quant",
                format!("{} rows must be a multiple of {} elements, got {k}", self.name(), self.block_elems()),
            ));
        }
        Ok(k / self.block_elems() * self.block_bytes())
    }
}

fn half_at(b: &[u8], o: usize) -> f32 {
    f16::from_le_bytes([b[o], b[o + 1]]).to_f32()
}

fn put_half(out: &mut Vec<u8>, v: f32) -> f32 {
    let h = f16::from_f32(v);
    out.extend(h.to_le_bytes());
    h.to_f32()
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` from the 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        let d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (d as f32, m as f32)
    }
}

/// Decode `rows` rows of `k` elements stored as `t`: ggml's `dequantize_row_*`.
pub fn dequantize(t: StoredType, bytes: &[u8], rows: usize, k: usize) -> Result<Vec<f32>> {
    let want = rows * t.row_bytes(k)?;
    if bytes.len() != want {
        return Err(Error::shape("quant", format!("{rows} x {k} {} needs {want} bytes, got {}", t.name(), bytes.len())));
    }
    let mut y = Vec::with_capacity(rows * k);
    for blk in bytes.chunks_exact(t.block_bytes()) {
        match t {
            StoredType::F16 => y.push(half_at(blk, 0)),
            StoredType::Bf16 => y.push(bf16::from_le_bytes([blk[0], blk[1]]).to_f32()),
            StoredType::Q8_0 => {
                let d = half_at(blk, 0);
                y.extend(blk[2..34].iter().map(|&q| d * (q as i8) as f32));
            }
            StoredType::Q4_0 => {
                let d = half_at(blk, 0);
                y.extend(blk[2..18].iter().map(|&q| d * ((q & 0xF) as f32 - 8.0)));
                y.extend(blk[2..18].iter().map(|&q| d * ((q >> 4) as f32 - 8.0)));
            }
            StoredType::Q4_1 => {
                let (d, m) = (half_at(blk, 0), half_at(blk, 2));
                y.extend(blk[4..20].iter().map(|&q| d * (q & 0xF) as f32 + m));
                y.extend(blk[4..20].iter().map(|&q| d * (q >> 4) as f32 + m));
            }
            StoredType::Q4K => {
                let (d, dmin) = (half_at(blk, 0), half_at(blk, 2));
                let (scales, qs) = (&blk[4..16], &blk[16..144]);
                for c in 0..4 {
                    let q = &qs[32 * c..32 * c + 32];
                    let (s1, m1) = scale_min_k4(2 * c, scales);
                    let (s2, m2) = scale_min_k4(2 * c + 1, scales);
                    y.extend(q.iter().map(|&b| d * s1 * (b & 0xF) as f32 - dmin * m1));
                    y.extend(q.iter().map(|&b| d * s2 * (b >> 4) as f32 - dmin * m2));
                }
            }
            StoredType::Q6K => {
                let d = half_at(blk, 208);
                let mut out = [0f32; 256];
                for h in 0..2 {
                    let (ql, qh, sc) = (&blk[64 * h..], &blk[128 + 32 * h..], &blk[192 + 8 * h..]);
                    for l in 0..32 {
                        let is = l / 16;
                        let q = |low: u8, shift: u32| ((low | (((qh[l] >> shift) & 3) << 4)) as i32 - 32) as f32;
                        let o = &mut out[128 * h..];
                        o[l] = d * (sc[is] as i8) as f32 * q(ql[l] & 0xF, 0);
                        o[l + 32] = d * (sc[is + 2] as i8) as f32 * q(ql[l + 32] & 0xF, 2);
                        o[l + 64] = d * (sc[is + 4] as i8) as f32 * q(ql[l] >> 4, 4);
                        o[l + 96] = d * (sc[is + 6] as i8) as f32 * q(ql[l + 32] >> 4, 6);
                    }
                }
                y.extend(out);
            }
        }
    }
    Ok(y)
}

/// Encode `rows` rows of `k` f32 values as `t` (see the module docs for the method).
pub fn quantize(t: StoredType, x: &[f32], rows: usize, k: usize) -> Result<Vec<u8>> {
    let row_bytes = t.row_bytes(k)?;
    if x.len() != rows * k {
        return Err(Error::shape("quant", format!("{rows} x {k} values expected, got {}", x.len())));
    }
    let mut out = Vec::with_capacity(rows * row_bytes);
    for blk in x.chunks_exact(t.block_elems()) {
        match t {
            StoredType::F16 => out.extend(f16::from_f32(blk[0]).to_le_bytes()),
            StoredType::Bf16 => out.extend(bf16::from_f32(blk[0]).to_le_bytes()),
            StoredType::Q8_0 => {
                // ggml's quantize_row_q8_0_ref: 1/d taken before d is rounded to f16
                let d = blk.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                put_half(&mut out, d);
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend(blk.iter().map(|v| (v * id).round().clamp(-127.0, 127.0) as i8 as u8));
            }
            StoredType::Q4_0 => {
                // ggml: the value of largest magnitude maps to -8.
                let max = blk.iter().fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                let d = max / -8.0;
                put_half(&mut out, d);
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(blk[j]) | (q(blk[j + 16]) << 4)));
            }
            StoredType::Q4_1 => {
                let (min, max) = blk.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                // ggml's quantize_row_q4_1_ref: the f32 d and min, before their f16 rounding
                let d = (max - min) / 15.0;
                put_half(&mut out, d);
                put_half(&mut out, min);
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let q = |v: f32| ((((v - min) * id + 0.5) as i8) as i32).min(15) as u8;
                out.extend((0..16).map(|j| q(blk[j]) | (q(blk[j + 16]) << 4)));
            }
            StoredType::Q4K => quantize_q4_k(blk, &mut out),
            StoredType::Q6K => quantize_q6_k(blk, &mut out),
        }
    }
    Ok(out)
}

/// One 256-element Q4_K block: per sub-block of 32 a scale (max − min)/15 and a min −min(0, x),
/// both 6-bit against the block's f16 d and dmin, packed as ggml's `quantize_row_q4_K_ref`.
fn quantize_q4_k(blk: &[f32], out: &mut Vec<u8>) {
    let mut s = [0f32; 8];
    let mut m = [0f32; 8];
    for (j, sub) in blk.chunks_exact(32).enumerate() {
        let (lo, hi) = sub.iter().fold((0f32, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        s[j] = (hi - lo) / 15.0;
        m[j] = -lo;
    }
    let d = put_half(out, s.iter().fold(0f32, |a, &v| a.max(v)) / 63.0);
    let dmin = put_half(out, m.iter().fold(0f32, |a, &v| a.max(v)) / 63.0);
    let q6 = |v: f32, by: f32| if by > 0.0 { (v / by).round().clamp(0.0, 63.0) as u8 } else { 0 };
    let ls: Vec<u8> = s.iter().map(|&v| q6(v, d)).collect();
    let lm: Vec<u8> = m.iter().map(|&v| q6(v, dmin)).collect();
    let mut scales = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            scales[j] = ls[j];
            scales[j + 4] = lm[j];
        } else {
            scales[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            scales[j - 4] |= (ls[j] >> 4) << 6;
            scales[j] |= (lm[j] >> 4) << 6;
        }
    }
    out.extend(scales);
    let mut q = [0u8; 256];
    for (j, sub) in blk.chunks_exact(32).enumerate() {
        let (sc, mn) = scale_min_k4(j, &scales);
        let (ds, dm) = (d * sc, dmin * mn);
        for (l, &v) in sub.iter().enumerate() {
            q[32 * j + l] = if ds > 0.0 { ((v + dm) / ds).round().clamp(0.0, 15.0) as u8 } else { 0 };
        }
    }
    for c in 0..4 {
        out.extend((0..32).map(|l| q[64 * c + l] | (q[64 * c + 32 + l] << 4)));
    }
}

/// One 256-element Q6_K block: per sub-block of 16 a scale amax/31 as an i8 against the block's
/// f16 d; quants in [0, 63] (q − 32), packed as ggml's `quantize_row_q6_K_ref`.
fn quantize_q6_k(blk: &[f32], out: &mut Vec<u8>) {
    let s: Vec<f32> = blk.chunks_exact(16).map(|g| g.iter().fold(0f32, |a, v| a.max(v.abs())) / 31.0).collect();
    let d = f16::from_f32(s.iter().fold(0f32, |a, &v| a.max(v)) / 127.0).to_f32();
    let sc: Vec<i8> = s.iter().map(|&v| if d > 0.0 { (v / d).round().clamp(0.0, 127.0) as i8 } else { 0 }).collect();
    let mut l = [0u8; 256];
    for (i, &v) in blk.iter().enumerate() {
        let eff = d * sc[i / 16] as f32;
        l[i] = if eff > 0.0 { ((v / eff).round().clamp(-32.0, 31.0) + 32.0) as u8 } else { 32 };
    }
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for h in 0..2 {
        let j = 128 * h;
        for i in 0..32 {
            let q = |o: usize| l[j + i + o];
            ql[64 * h + i] = (q(0) & 0xF) | ((q(64) & 0xF) << 4);
            ql[64 * h + i + 32] = (q(32) & 0xF) | ((q(96) & 0xF) << 4);
            qh[32 * h + i] = (q(0) >> 4) | ((q(32) >> 4) << 2) | ((q(64) >> 4) << 4) | ((q(96) >> 4) << 6);
        }
    }
    out.extend(ql);
    out.extend(qh);
    out.extend(sc.iter().map(|&v| v as u8));
    out.extend(f16::from_f32(d).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_within_its_step() {
        let k = 512;
        let x: Vec<f32> = (0..2 * k).map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * if i % 7 == 0 { 3.0 } else { 1.0 }).collect();
        for t in StoredType::ALL {
            let b = quantize(t, &x, 2, k).unwrap();
            assert_eq!(b.len(), 2 * t.row_bytes(k).unwrap(), "{t:?}");
            let y = dequantize(t, &b, 2, k).unwrap();
            let tol = match t {
                StoredType::F16 | StoredType::Bf16 => 0.02,
                StoredType::Q8_0 | StoredType::Q6K => 0.1,
                _ => 0.4,
            };
            let worst = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= tol, "{t:?}: worst error {worst}");
            assert!(worst > 0.0 || t == StoredType::F16, "{t:?} is lossless on these values?");
        }
    }

    #[test]
    fn ragged_rows_are_refused() {
        assert!(StoredType::Q4K.row_bytes(100).is_err());
        assert!(quantize(StoredType::Q8_0, &[0.0; 40], 1, 40).is_err());
        assert!(dequantize(StoredType::Q8_0, &[0; 33], 1, 32).is_err());
        assert_eq!(StoredType::from_name("Q4_K").unwrap(), StoredType::Q4K);
        assert!(StoredType::from_name("q5_1").is_err());
    }
}
