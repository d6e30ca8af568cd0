// DPO, batch level: the mean of each per-pair column written by dpo_pairs (one workgroup,
// a strided share per thread, then a tree in workgroup memory: a fixed order, no atomics), and
// the backward pass, which scales the stored per-pair gradients by the upstream gradient of
// the loss (a one-element GPU tensor, never read back).
//
// Bindings: dpo_reduce uses 1 (the stats) and 2; dpo_backward uses 1 (d pc), 2, 3, 4 (d pr).

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
const STRIDE: u32 = 9u;

var<workgroup> part_a: array<vec4<f32>, WG>;
var<workgroup> part_b: array<vec4<f32>, WG>;

// out[0..7] = mean over pairs of columns 0, 3, 4, 5, 6, 7, 8: the loss, then the metrics
@compute @workgroup_size(WG)
fn dpo_reduce(@builtin(local_invocation_index) lid: u32) {
    // accumulate a strided share of the pairs
    var a = vec4<f32>(0.0);
    var b = vec4<f32>(0.0);
    for (var i = lid; i < p.n; i += WG) {
        let o = i * STRIDE;
        a += vec4<f32>(pairs[o], pairs[o + 3u], pairs[o + 4u], pairs[o + 5u]);
        b += vec4<f32>(pairs[o + 6u], pairs[o + 7u], pairs[o + 8u], 0.0);
    }
    part_a[lid] = a;
    part_b[lid] = b;
    workgroupBarrier();
    // tree reduction
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            part_a[lid] += part_a[lid + k];
            part_b[lid] += part_b[lid + k];
        }
        workgroupBarrier();
    }
    // store the means
    if (lid == 0u) {
        let ma = part_a[0] * p.inv_n;
        let mb = part_b[0] * p.inv_n;
        out[0] = ma.x;
        out[1] = ma.y;
        out[2] = ma.z;
        out[3] = ma.w;
        out[4] = mb.x;
        out[5] = mb.y;
        out[6] = mb.z;
    }
}

// out[i] = g * d loss / d pc_i, out2[i] = g * d loss / d pr_i
@compute @workgroup_size(WG)
fn dpo_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    let g = upstream[0];
    out[i] = g * pairs[i * STRIDE + 1u];
    out2[i] = g * pairs[i * STRIDE + 2u];
}
