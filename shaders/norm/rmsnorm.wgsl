// RMSNorm forward over the last dimension (Llama), per row of C values:
//   rstd = 1 / sqrt(sum(x^2) / C + eps),  out = x * rstd * weight.
// rstd is saved per row for the backward pass.
// Two variants: forward_thread (one thread per row, no workgroup memory: CPU adapters) and
// forward_group (one 256-thread workgroup per row, tree reduction in workgroup memory: GPUs).

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(3) var<storage, read> inp: array<f32>;
@group(0) @binding(4) var<storage, read> weight: array<f32>;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(64)
fn forward_thread(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * 64u;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    // accumulate: the mean square
    var s = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        let v = inp[base + c];
        s += v * v;
    }
    let r = 1.0 / sqrt(s / f32(p.cols) + p.eps);
    // store
    for (var c = 0u; c < p.cols; c++) {
        out[base + c] = inp[base + c] * r * weight[c];
    }
    rstd[row] = r;
}

@compute @workgroup_size(256)
fn forward_group(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    // accumulate: a strided slice of the sum of squares
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let v = inp[base + c];
        s += v * v;
    }
    // reduce: tree over the workgroup
    partial[lid] = s;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) { partial[lid] += partial[lid + k]; }
        workgroupBarrier();
    }
    let r = 1.0 / sqrt(partial[0] / f32(p.cols) + p.eps);
    // store
    for (var c = lid; c < p.cols; c += WG) {
        out[base + c] = inp[base + c] * r * weight[c];
    }
    if (lid == 0u) { rstd[row] = r; }
}
