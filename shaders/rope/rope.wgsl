// Rotary position embeddings, Hugging Face Llama convention (rotate_half): for x (B, T, H, D),
// each head vector's pairs (i, i + D/2), i < D/2, are rotated by the angle pos * inv_freq[i]:
//   out[i]       = x[i] cos - x[i + D/2] sin
//   out[i + D/2] = x[i + D/2] cos + x[i] sin
// with inv_freq[i] = theta^(-2i/D) (or read from a table, for scaled variants such as Llama 3's)
// and pos = offset + t, or offset + positions[b, t] when per-row positions are given.
// The backward pass is the inverse rotation: the same kernel with sign = -1 (sin negated).
// One thread per pair.

struct Params {
    batch: u32,
    seq: u32,
    heads: u32,
    dim: u32,
    offset: u32,
    // bit 0: positions are given; bit 1: inv_freq comes from the table.
    flags: u32,
    sign: f32,
    log2_theta: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
// (B, T) positions; any buffer when bit 0 of flags is clear (it is then not read).
@group(0) @binding(3) var<storage, read> positions: array<u32>;
// (D/2) inverse frequencies; any buffer when bit 1 of flags is clear (it is then not read).
@group(0) @binding(4) var<storage, read> inv_freq: array<f32>;

// 2 pi split in two for range reduction: TWO_PI_HI has few significant bits, so k * TWO_PI_HI
// is exact for the k that occur (|angle| < ~1e5), and the reduced angle keeps f32 accuracy.
const TWO_PI_HI: f32 = 6.28125;
const TWO_PI_LO: f32 = 0.0019353071795864769;
const INV_TWO_PI: f32 = 0.15915494309189535;

@compute @workgroup_size(256)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 256u;
    let half = p.dim / 2u;
    if (idx >= p.batch * p.seq * p.heads * half) { return; }
    // indices: pair i of head h of token (b, t)
    let i = idx % half;
    let bth = idx / half;
    let bt = bth / p.heads;
    let t = bt % p.seq;
    var pos = p.offset + t;
    if ((p.flags & 1u) != 0u) {
        pos = p.offset + positions[bt];
    }
    var freq: f32;
    if ((p.flags & 2u) != 0u) {
        freq = inv_freq[i];
    } else {
        freq = exp2(-f32(2u * i) / f32(p.dim) * p.log2_theta);
    }
    // angle, reduced to [-pi, pi] before sin and cos
    let angle = f32(pos) * freq;
    let k = round(angle * INV_TWO_PI);
    let r = (angle - k * TWO_PI_HI) - k * TWO_PI_LO;
    let c = cos(r);
    let s = p.sign * sin(r);
    // rotate and store
    let base = bth * p.dim;
    let x1 = x[base + i];
    let x2 = x[base + i + half];
    out[base + i] = x1 * c - x2 * s;
    out[base + i + half] = x2 * c + x1 * s;
}
