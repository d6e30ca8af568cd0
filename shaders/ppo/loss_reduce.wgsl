// PPO and GRPO, sequence and batch level, from the per-token tables of ppo_tokens and
// grpo_tokens (STRIDE floats per token; columns 2..7 hold the masked terms to sum):
//   row_sums (one thread per sequence): out (rows, 6) = Σ over the sequence's tokens of
//     columns 2..7;
//   ppo_reduce (one workgroup): masked means over all tokens of the batch,
//     out = [pg + vf_coef vf, approxkl, pg clipfrac, pg, vf, value clipfrac, Σ m]
//     (Σ m is replaced by 1 when it is 0; backward divides by it);
//   grpo_reduce (one workgroup): the loss as per-sequence means (Σ m of a sequence replaced by
//     1 when 0) averaged over sequences; the KL and the clip ratios as token means over the
//     batch (TRL's masked_batch_mean): out = [loss, kl, clip low, clip high, clip region];
//   ppo_backward / grpo_backward (one thread per token): the stored derivatives times the
//     upstream gradient (a one-element GPU tensor) over the divisor of their mean.
// Batch reductions: a strided share per thread, then a tree in workgroup memory (fixed order).
//
// Bindings: row_sums and the reductions use 1, 2; grpo_backward 1..4; ppo_backward 1..5.

struct Params {
    rows: u32,
    cols: u32,
    vf_coef: f32,
    inv_rows: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read> totals: array<f32>;
@group(0) @binding(4) var<storage, read> upstream: array<f32>;
@group(0) @binding(5) var<storage, read_write> out2: array<f32>;

const WG: u32 = 64u;
const STRIDE: u32 = 8u;
const ROW: u32 = 6u;

var<workgroup> part_a: array<vec4<f32>, WG>;
var<workgroup> part_b: array<vec2<f32>, WG>;

// Tree-sum part_a[] and part_b[] into element 0; every thread must call it.
fn tree_sum(lid: u32) {
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            part_a[lid] += part_a[lid + k];
            part_b[lid] += part_b[lid + k];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(WG)
fn row_sums(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * WG;
    if (row >= p.rows) { return; }
    // accumulate the row's tokens
    var a = vec4<f32>(0.0);
    var b = vec2<f32>(0.0);
    for (var t = 0u; t < p.cols; t++) {
        let o = (row * p.cols + t) * STRIDE;
        a += vec4<f32>(src[o + 2u], src[o + 3u], src[o + 4u], src[o + 5u]);
        b += vec2<f32>(src[o + 6u], src[o + 7u]);
    }
    // store
    let r = row * ROW;
    out[r] = a.x;
    out[r + 1u] = a.y;
    out[r + 2u] = a.z;
    out[r + 3u] = a.w;
    out[r + 4u] = b.x;
    out[r + 5u] = b.y;
}

@compute @workgroup_size(WG)
fn ppo_reduce(@builtin(local_invocation_index) lid: u32) {
    // accumulate a strided share of the rows: (pg, vf, pg clipped, value clipped), (kl, m)
    var a = vec4<f32>(0.0);
    var b = vec2<f32>(0.0);
    for (var r = lid; r < p.rows; r += WG) {
        let o = r * ROW;
        a += vec4<f32>(src[o], src[o + 1u], src[o + 2u], src[o + 3u]);
        b += vec2<f32>(src[o + 4u], src[o + 5u]);
    }
    part_a[lid] = a;
    part_b[lid] = b;
    workgroupBarrier();
    tree_sum(lid);
    // store the masked means
    if (lid == 0u) {
        let c = select(part_b[0].y, 1.0, part_b[0].y == 0.0);
        let s = part_a[0] / c;
        out[0] = s.x + p.vf_coef * s.y;
        out[1] = part_b[0].x / c;
        out[2] = s.z;
        out[3] = s.x;
        out[4] = s.y;
        out[5] = s.w;
        out[6] = c;
    }
}

@compute @workgroup_size(WG)
fn grpo_reduce(@builtin(local_invocation_index) lid: u32) {
    // accumulate a strided share of the rows: (loss / n_b, kl, low, high), (m, 0)
    var a = vec4<f32>(0.0);
    var b = vec2<f32>(0.0);
    for (var r = lid; r < p.rows; r += WG) {
        let o = r * ROW;
        let n_b = select(src[o + 4u], 1.0, src[o + 4u] == 0.0);
        a += vec4<f32>(src[o] / n_b, src[o + 1u], src[o + 2u], src[o + 3u]);
        b += vec2<f32>(src[o + 4u], 0.0);
    }
    part_a[lid] = a;
    part_b[lid] = b;
    workgroupBarrier();
    tree_sum(lid);
    // store
    if (lid == 0u) {
        let c = select(part_b[0].x, 1.0, part_b[0].x == 0.0);
        let s = part_a[0];
        out[0] = s.x * p.inv_rows;
        out[1] = s.y / c;
        out[2] = s.z / c;
        out[3] = s.w / c;
        out[4] = (s.z + s.w) / c;
    }
}

// out = d loss / d logp, out2 = d loss / d values; totals = the stats of ppo_reduce
@compute @workgroup_size(WG)
fn ppo_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.rows * p.cols) { return; }
    let s = upstream[0] / totals[6];
    out[i] = s * src[i * STRIDE];
    out2[i] = s * p.vf_coef * src[i * STRIDE + 1u];
}

// out = d loss / d logp; totals = the row sums (Σ m of the token's sequence in column 4)
@compute @workgroup_size(WG)
fn grpo_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.rows * p.cols) { return; }
    let n_b = totals[(i / p.cols) * ROW + 4u];
    out[i] = upstream[0] * p.inv_rows * src[i * STRIDE] / select(n_b, 1.0, n_b == 0.0);
}
