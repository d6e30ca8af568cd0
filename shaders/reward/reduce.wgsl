// Bradley-Terry, batch level: the loss and the metrics from the per-pair table of
// bt_pairs (one workgroup, a strided share per thread, then a tree in workgroup memory: a
// fixed order, no atomics), and the backward pass, which scales the stored gradients by the
// upstream gradient of the loss (a one-element GPU tensor, never read back).
//
// Bindings: bt_reduce uses 1 (the stats) and 2; bt_backward uses 1 (d rc), 2, 3, 4 (d rr).

struct Params {
    n: u32,
    inv_n: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> pairs: array<f32>;
@group(0) @binding(3) var<storage, read> upstream: array<f32>;
@group(0) @binding(4) var<storage, read_write> out2: array<f32>;

const WG: u32 = 64u;
const STRIDE: u32 = 5u;
const BIG: f32 = 3.0e38;

var<workgroup> part_sum: array<vec4<f32>, WG>;
var<workgroup> part_min: array<f32, WG>;
var<workgroup> part_max: array<f32, WG>;

// out = [loss, accuracy, margin, mean reward, min reward, max reward]
@compute @workgroup_size(WG)
fn bt_reduce(@builtin(local_invocation_index) lid: u32) {
    // accumulate a strided share: (loss, [rc > rr], rc - rr, rc + rr), min and max reward
    var s = vec4<f32>(0.0);
    var lo = BIG;
    var hi = -BIG;
    for (var i = lid; i < p.n; i += WG) {
        let o = i * STRIDE;
        let c = pairs[o + 3u];
        let r = pairs[o + 4u];
        s += vec4<f32>(pairs[o], select(0.0, 1.0, c > r), c - r, c + r);
        lo = min(lo, min(c, r));
        hi = max(hi, max(c, r));
    }
    part_sum[lid] = s;
    part_min[lid] = lo;
    part_max[lid] = hi;
    workgroupBarrier();
    // tree reduction
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            part_sum[lid] += part_sum[lid + k];
            part_min[lid] = min(part_min[lid], part_min[lid + k]);
            part_max[lid] = max(part_max[lid], part_max[lid + k]);
        }
        workgroupBarrier();
    }
    // store
    if (lid == 0u) {
        let m = part_sum[0] * p.inv_n;
        out[0] = m.x;
        out[1] = m.y;
        out[2] = m.z;
        out[3] = 0.5 * m.w;
        out[4] = part_min[0];
        out[5] = part_max[0];
    }
}

// out[i] = g * d loss / d rc_i, out2[i] = g * d loss / d rr_i
@compute @workgroup_size(WG)
fn bt_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    let g = upstream[0];
    out[i] = g * pairs[i * STRIDE + 1u];
    out2[i] = g * pairs[i * STRIDE + 2u];
}
