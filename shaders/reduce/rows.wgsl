// Reductions over the last dimension: out[r] = scale * sum(x[r, :]), and out[r] = max(x[r, :])
// with the first index of the maximum in argmax[r]. Row r is x[r*cols .. min((r+1)*cols, n)], so
// the last row may be short: sum_all uses that to sum a flat array block by block.
// Two variants of each: *_thread (one thread per row, no workgroup memory: CPU adapters) and
// *_group (one 256-thread workgroup per row, tree reduction in workgroup memory: GPUs).

struct Params {
    rows: u32,
    cols: u32,
    n: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> argmax: array<u32>;

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;
var<workgroup> part_val: array<f32, WG>;
var<workgroup> part_idx: array<u32, WG>;

fn row_end(start: u32) -> u32 {
    return min(start + p.cols, p.n);
}

@compute @workgroup_size(64)
fn sum_thread(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.x + gid.y * nwg.x * 64u;
    if (r >= p.rows) { return; }
    let start = r * p.cols;
    let end = row_end(start);
    // accumulate: four interleaved partial sums (shorter rounding chains, more parallelism)
    var acc = vec4<f32>(0.0);
    var i = start;
    while (i + 4u <= end) {
        acc += vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]);
        i += 4u;
    }
    var s = (acc.x + acc.y) + (acc.z + acc.w);
    while (i < end) {
        s += x[i];
        i += 1u;
    }
    // store
    out[r] = s * p.scale;
}

@compute @workgroup_size(256)
fn sum_group(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= p.rows) { return; }
    let start = r * p.cols;
    let end = row_end(start);
    // accumulate: each thread sums a strided slice of the row
    var s = 0.0;
    for (var i = start + lid; i < end; i += WG) {
        s += x[i];
    }
    // reduce: tree over the workgroup
    part_val[lid] = s;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) { part_val[lid] += part_val[lid + k]; }
        workgroupBarrier();
    }
    // store
    if (lid == 0u) { out[r] = part_val[0] * p.scale; }
}

@compute @workgroup_size(64)
fn max_thread(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.x + gid.y * nwg.x * 64u;
    if (r >= p.rows) { return; }
    let start = r * p.cols;
    let end = row_end(start);
    // accumulate: running maximum, first index wins ties
    var best = x[start];
    var at = 0u;
    for (var i = start + 1u; i < end; i++) {
        let v = x[i];
        if (v > best) {
            best = v;
            at = i - start;
        }
    }
    // store
    out[r] = best;
    argmax[r] = at;
}

// True when (v2, i2) should replace (v1, i1): larger value, or equal value at a smaller index.
fn better(v1: f32, i1: u32, v2: f32, i2: u32) -> bool {
    if (i2 == NONE) { return false; }
    if (i1 == NONE) { return true; }
    return v2 > v1 || (v2 == v1 && i2 < i1);
}

@compute @workgroup_size(256)
fn max_group(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= p.rows) { return; }
    let start = r * p.cols;
    let end = row_end(start);
    // accumulate: each thread scans a strided slice (NONE marks a thread that saw nothing)
    var best = 0.0;
    var at = NONE;
    for (var i = start + lid; i < end; i += WG) {
        let v = x[i];
        if (better(best, at, v, i - start)) {
            best = v;
            at = i - start;
        }
    }
    // reduce: tree over the workgroup
    part_val[lid] = best;
    part_idx[lid] = at;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k && better(part_val[lid], part_idx[lid], part_val[lid + k], part_idx[lid + k])) {
            part_val[lid] = part_val[lid + k];
            part_idx[lid] = part_idx[lid + k];
        }
        workgroupBarrier();
    }
    // store
    if (lid == 0u) {
        out[r] = part_val[0];
        argmax[r] = part_idx[0];
    }
}
