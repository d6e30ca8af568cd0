//! ggml's storage types as GGUF files hold them, and a CPU dequantize to f32 for each type plumb
//! reads (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K). The layouts follow ggml's `ggml-common.h`
//! block structs; `dequantize_row_*` in ggml's `ggml-quants.c` is the reference each function here
//! mirrors. The GPU keeps these blocks as they are (src/ops/quant.rs); this path is for loading
//! into f32 models and for tests.

use half::f16;

/// A ggml tensor type, numbered as in `enum ggml_type`.
#[allow(non_camel_case_types)] // ggml's own names: Q4_K, Q6_K
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4_K,
    Q6_K,
    BF16,
}

impl GgmlType {
    /// The type with ggml id `id`; `Err(name)` for a type plumb does not read (its ggml name, or
    /// the number when unknown).
    pub fn from_id(id: u32) -> Result<GgmlType, String> {
        Ok(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4_K,
            14 => GgmlType::Q6_K,
            30 => GgmlType::BF16,
            other => {
                let names = [
                    (6, "Q5_0"), (7, "Q5_1"), (9, "Q8_1"), (10, "Q2_K"), (11, "Q3_K"), (13, "Q5_K"), (15, "Q8_K"),
                    (16, "IQ2_XXS"), (17, "IQ2_XS"), (18, "IQ3_XXS"), (19, "IQ1_S"), (20, "IQ4_NL"), (21, "IQ3_S"),
                    (22, "IQ2_S"), (23, "IQ4_XS"), (24, "I8"), (25, "I16"), (26, "I32"), (27, "I64"), (28, "F64"),
                    (29, "IQ1_M"), (34, "TQ1_0"), (35, "TQ2_0"), (39, "MXFP4"),
                ];
                return Err(names.iter().find(|(i, _)| *i == other).map(|(_, n)| n.to_string()).unwrap_or(format!("#{other}")));
            }
        })
    }

    /// ggml's id of this type.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_K => 12,
            GgmlType::Q6_K => 14,
            GgmlType::BF16 => 30,
        }
    }

    /// Elements per block (1 for the float types).
    pub fn block_elems(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q4_K | GgmlType::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,  // f16 d, 16 bytes of nibbles
            GgmlType::Q4_1 => 20,  // f16 d, f16 m, 16 bytes of nibbles
            GgmlType::Q8_0 => 34,  // f16 d, 32 i8
            GgmlType::Q4_K => 144, // f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
            GgmlType::Q6_K => 210, // 128 bytes low nibbles, 64 bytes high 2 bits, 16 i8 scales, f16 d
        }
    }

    /// Bytes of `n` elements; None when `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        n.is_multiple_of(self.block_elems()).then(|| n / self.block_elems() * self.block_bytes())
    }

    /// ggml's name: "F32", "Q4_1", ...
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::BF16 => "BF16",
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantize `data` (whole blocks of `ty`) to f32, appending to `out`. `data.len()` must be a
/// multiple of the block size (the reader checks this).
pub fn dequantize_into(ty: GgmlType, data: &[u8], out: &mut Vec<f32>) {
    let bb = ty.block_bytes();
    debug_assert!(data.len().is_multiple_of(bb));
    out.reserve(data.len() / bb * ty.block_elems());
    for blk in data.chunks_exact(bb) {
        match ty {
            GgmlType::F32 => out.push(f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]])),
            GgmlType::F16 => out.push(f16_at(blk, 0)),
            GgmlType::BF16 => out.push(half::bf16::from_le_bytes([blk[0], blk[1]]).to_f32()),
            GgmlType::Q8_0 => {
                let d = f16_at(blk, 0);
                out.extend(blk[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
            GgmlType::Q4_0 => {
                let (d, qs) = (f16_at(blk, 0), &blk[2..18]);
                out.extend(qs.iter().map(|&q| ((q & 0xF) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
            GgmlType::Q4_1 => {
                let (d, m, qs) = (f16_at(blk, 0), f16_at(blk, 2), &blk[4..20]);
                out.extend(qs.iter().map(|&q| (q & 0xF) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
            GgmlType::Q4_K => dequantize_q4_k(blk, out),
            GgmlType::Q6_K => dequantize_q6_k(blk, out),
        }
    }
}

/// Dequantize to a new vector.
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Vec<f32> {
    let mut out = Vec::new();
    dequantize_into(ty, data, &mut out);
    out
}

/// Scale and min `j` (0..8) of a Q4_K block's 12 packed bytes: 6 bits each (ggml's
/// `get_scale_min_k4`).
pub fn q4_k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// One Q4_K super-block: 8 sub-blocks of 32, each `d·scale·q - dmin·min`.
fn dequantize_q4_k(blk: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
    let (scales, qs) = (&blk[4..16], &blk[16..144]);
    for chunk in 0..4 {
        let q = &qs[chunk * 32..chunk * 32 + 32];
        let (s1, m1) = q4_k_scale_min(2 * chunk, scales);
        let (s2, m2) = q4_k_scale_min(2 * chunk + 1, scales);
        let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
        out.extend(q.iter().map(|&b| d1 * (b & 0xF) as f32 - m1));
        out.extend(q.iter().map(|&b| d2 * (b >> 4) as f32 - m2));
    }
}

/// One Q6_K super-block: 16 sub-blocks of 16, each `d·scale·(q - 32)` with 6-bit q split into
/// 4 low bits (`ql`) and 2 high bits (`qh`).
fn dequantize_q6_k(blk: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(blk, 208);
    let start = out.len();
    out.resize(start + 256, 0.0);
    let y = &mut out[start..];
    for half in 0..2 {
        let ql = &blk[half * 64..half * 64 + 64];
        let qh = &blk[128 + half * 32..128 + half * 32 + 32];
        let sc = &blk[192 + half * 8..192 + half * 8 + 8];
        let y = &mut y[half * 128..half * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}
