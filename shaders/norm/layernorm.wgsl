// LayerNorm forward over the last dimension (llm.c's layernorm_forward), per row of C values:
//   mean = sum(x) / C,  rstd = 1 / sqrt(sum((x - mean)^2) / C + eps),
//   out  = (x - mean) * rstd * weight + bias.
// mean and rstd are saved per row for the backward pass. The variance is taken around the mean
// (two passes over the row), which stays accurate when |mean| >> std.
// Two variants: forward_thread (one thread per row, no workgroup memory: CPU adapters) and
// forward_group (one 256-thread workgroup per row, tree reductions in workgroup memory: GPUs).

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(4) var<storage, read> inp: array<f32>;
@group(0) @binding(5) var<storage, read> weight: array<f32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(64)
fn forward_thread(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * 64u;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let n = f32(p.cols);
    // accumulate: the mean
    var s = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        s += inp[base + c];
    }
    let m = s / n;
    // accumulate: the variance around the mean
    var v = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        let d = inp[base + c] - m;
        v += d * d;
    }
    let r = 1.0 / sqrt(v / n + p.eps);
    // store
    for (var c = 0u; c < p.cols; c++) {
        out[base + c] = (inp[base + c] - m) * r * weight[c] + bias[c];
    }
    mean[row] = m;
    rstd[row] = r;
}

// Sum of v over the workgroup; every thread gets the total. Call in uniform control flow.
fn group_sum(v: f32, lid: u32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) { partial[lid] += partial[lid + k]; }
        workgroupBarrier();
    }
    let total = partial[0];
    // barrier: everyone has read the total before partial is reused
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn forward_group(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let n = f32(p.cols);
    // accumulate + reduce: the mean
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        s += inp[base + c];
    }
    let m = group_sum(s, lid) / n;
    // accumulate + reduce: the variance around the mean
    var v = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let d = inp[base + c] - m;
        v += d * d;
    }
    let r = 1.0 / sqrt(group_sum(v, lid) / n + p.eps);
    // store
    for (var c = lid; c < p.cols; c += WG) {
        out[base + c] = (inp[base + c] - m) * r * weight[c] + bias[c];
    }
    if (lid == 0u) {
        mean[row] = m;
        rstd[row] = r;
    }
}
