// LayerNorm backward (llm.c's layernorm_backward), with norm = (x - mean) * rstd:
//   dnorm = dout * weight
//   dinp  = (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd        (per row)
//   param_grad_partial, per block b of rows_per_block rows, in one pass over dout and x:
//     dweight partials dst[b, c]                = sum over the block's rows r of dout[r, c] * norm[r, c]
//     dbias partials   dst[db_offset + b*C + c] = sum over the block's rows r of dout[r, c]
// The partials are summed by reduce's column sum, so the parameter gradients are deterministic
// without atomics.
// Row kernels in two variants: backward_thread (one thread per row: CPU adapters) and
// backward_group (one 256-thread workgroup per row: GPUs).

struct Params {
    rows: u32,
    cols: u32,
    rows_per_block: u32,
    // where the dbias partials start in dst (param_grad_partial)
    db_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// dinp for the row kernels, dweight and dbias partials for param_grad_partial.
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;
@group(0) @binding(3) var<storage, read> inp: array<f32>;
@group(0) @binding(4) var<storage, read> mean: array<f32>;
@group(0) @binding(5) var<storage, read> rstd: array<f32>;
@group(0) @binding(6) var<storage, read> weight: array<f32>;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(64)
fn backward_thread(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * 64u;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let m = mean[row];
    let r = rstd[row];
    // accumulate: mean(dnorm) and mean(dnorm * norm)
    var s1 = 0.0;
    var s2 = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        let dnorm = dout[base + c] * weight[c];
        s1 += dnorm;
        s2 += dnorm * (inp[base + c] - m) * r;
    }
    let mean1 = s1 / f32(p.cols);
    let mean2 = s2 / f32(p.cols);
    // store
    for (var c = 0u; c < p.cols; c++) {
        let dnorm = dout[base + c] * weight[c];
        let norm = (inp[base + c] - m) * r;
        dst[base + c] = (dnorm - mean1 - norm * mean2) * r;
    }
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
fn backward_group(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    let m = mean[row];
    let r = rstd[row];
    // accumulate: strided slices of the two row sums
    var s1 = 0.0;
    var s2 = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let dnorm = dout[base + c] * weight[c];
        s1 += dnorm;
        s2 += dnorm * (inp[base + c] - m) * r;
    }
    // reduce
    let mean1 = group_sum(s1, lid) / f32(p.cols);
    let mean2 = group_sum(s2, lid) / f32(p.cols);
    // store
    for (var c = lid; c < p.cols; c += WG) {
        let dnorm = dout[base + c] * weight[c];
        let norm = (inp[base + c] - m) * r;
        dst[base + c] = (dnorm - mean1 - norm * mean2) * r;
    }
}

@compute @workgroup_size(64)
fn param_grad_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    let blocks = (p.rows + p.rows_per_block - 1u) / p.rows_per_block;
    if (i >= blocks * p.cols) { return; }
    let c = i % p.cols;
    let r0 = (i / p.cols) * p.rows_per_block;
    let r1 = min(r0 + p.rows_per_block, p.rows);
    // accumulate: the block's rows in order
    var dw = 0.0;
    var db = 0.0;
    for (var row = r0; row < r1; row++) {
        let k = row * p.cols + c;
        let d = dout[k];
        dw += d * (inp[k] - mean[row]) * rstd[row];
        db += d;
    }
    // store
    dst[i] = dw;
    dst[p.db_offset + i] = db;
}
