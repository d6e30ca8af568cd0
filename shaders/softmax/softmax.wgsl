// Softmax over the last dimension, numerically stable (the row maximum is subtracted first):
//   forward:  y = exp(x - max(x)) / sum(exp(x - max(x)))
//   backward: dx = y * (dy - sum(dy * y))
// Rows may be of any length (1 to a vocabulary and beyond).
// Two variants of each: *_thread (one thread per row, no workgroup memory: CPU adapters) and
// *_group (one 256-thread workgroup per row, tree reductions in workgroup memory: GPUs).

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// y for the forward pass, dx for the backward pass.
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
// x for the forward pass, y for the backward pass.
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(64)
fn forward_thread(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * 64u;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    // accumulate: the row maximum
    var m = src[base];
    for (var c = 1u; c < p.cols; c++) {
        m = max(m, src[base + c]);
    }
    // accumulate: the sum of exponentials, four interleaved partial sums
    var acc = vec4<f32>(0.0);
    var c = 0u;
    while (c + 4u <= p.cols) {
        let i = base + c;
        acc += exp(vec4<f32>(src[i], src[i + 1u], src[i + 2u], src[i + 3u]) - m);
        c += 4u;
    }
    var s = (acc.x + acc.y) + (acc.z + acc.w);
    while (c < p.cols) {
        s += exp(src[base + c] - m);
        c += 1u;
    }
    // store
    let inv = 1.0 / s;
    for (var k = 0u; k < p.cols; k++) {
        dst[base + k] = exp(src[base + k] - m) * inv;
    }
}

// Reduce v over the workgroup with max (is_max) or sum; every thread gets the result. Call in
// uniform control flow.
fn group_reduce(v: f32, lid: u32, is_max: bool) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            let other = partial[lid + k];
            partial[lid] = select(partial[lid] + other, max(partial[lid], other), is_max);
        }
        workgroupBarrier();
    }
    let total = partial[0];
    // barrier: everyone has read the result before partial is reused
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn forward_group(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    // accumulate + reduce: the row maximum (every thread starts from element 0, always present)
    var m = src[base];
    for (var c = lid; c < p.cols; c += WG) {
        m = max(m, src[base + c]);
    }
    m = group_reduce(m, lid, true);
    // accumulate + reduce: the sum of exponentials
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        s += exp(src[base + c] - m);
    }
    let inv = 1.0 / group_reduce(s, lid, false);
    // store
    for (var c = lid; c < p.cols; c += WG) {
        dst[base + c] = exp(src[base + c] - m) * inv;
    }
}

@compute @workgroup_size(64)
fn backward_thread(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * 64u;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    // accumulate: sum(dy * y), four interleaved partial sums
    var acc = vec4<f32>(0.0);
    var c = 0u;
    while (c + 4u <= p.cols) {
        let i = base + c;
        acc += vec4<f32>(dy[i], dy[i + 1u], dy[i + 2u], dy[i + 3u]) * vec4<f32>(src[i], src[i + 1u], src[i + 2u], src[i + 3u]);
        c += 4u;
    }
    var dot = (acc.x + acc.y) + (acc.z + acc.w);
    while (c < p.cols) {
        dot += dy[base + c] * src[base + c];
        c += 1u;
    }
    // store
    for (var k = 0u; k < p.cols; k++) {
        dst[base + k] = src[base + k] * (dy[base + k] - dot);
    }
}

@compute @workgroup_size(256)
fn backward_group(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    // accumulate + reduce: sum(dy * y)
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        s += dy[base + c] * src[base + c];
    }
    let dot = group_reduce(s, lid, false);
    // store
    for (var c = lid; c < p.cols; c += WG) {
        dst[base + c] = src[base + c] * (dy[base + c] - dot);
    }
}
