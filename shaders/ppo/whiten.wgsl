// Masked whitening (TRL's masked_whiten), in two deterministic passes:
//   whiten_stats (one workgroup): mean = Σ m x / Σ m, then, centred in a second sweep,
//     var = Σ m (x - mean)² / (Σ m - 1) (unbiased; Σ m - 1 is replaced by 1 when Σ m <= 1),
//     written to out = [mean, var, Σ m];
//   whiten_apply (one thread per element): out = (x - mean) / sqrt(var + 1e-8), plus the mean
//     again when shift_mean is 0; 0 where the mask is 0.
// Reductions: a strided share per thread, then a tree in workgroup memory (fixed order).

struct Params {
    n: u32,
    shift_mean: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read> stats: array<f32>;

const WG: u32 = 256u;

var<workgroup> part: array<vec2<f32>, WG>;
var<workgroup> shared_mean: f32;

// Tree-sum part[] into part[0]; every thread must call it.
fn tree_sum(lid: u32) {
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            part[lid] += part[lid + k];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(WG)
fn whiten_stats(@builtin(local_invocation_index) lid: u32) {
    // accumulate Σ m x and Σ m over a strided share
    var s = vec2<f32>(0.0);
    for (var i = lid; i < p.n; i += WG) {
        let m = mask[i];
        if (m != 0.0) {
            s += vec2<f32>(m * x[i], m);
        }
    }
    part[lid] = s;
    workgroupBarrier();
    tree_sum(lid);
    if (lid == 0u) {
        let c = part[0].y;
        shared_mean = select(part[0].x / c, 0.0, c == 0.0);
    }
    workgroupBarrier();
    // accumulate Σ m (x - mean)², reading the count before part[] is reused
    let mean = shared_mean;
    let count = part[0].y;
    workgroupBarrier();
    var q = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        let m = mask[i];
        if (m != 0.0) {
            let d = x[i] - mean;
            q += m * d * d;
        }
    }
    part[lid] = vec2<f32>(q, 0.0);
    workgroupBarrier();
    tree_sum(lid);
    // store
    if (lid == 0u) {
        out[0] = mean;
        out[1] = part[0].x / select(1.0, count - 1.0, count > 1.0);
        out[2] = count;
    }
}

@compute @workgroup_size(WG)
fn whiten_apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    let mean = stats[0];
    var y = (x[i] - mean) * inverseSqrt(stats[1] + 1e-8);
    if (p.shift_mean == 0u) {
        y += mean;
    }
    out[i] = select(y, 0.0, mask[i] == 0.0);
}
