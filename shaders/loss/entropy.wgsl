// Per-row entropy of softmax(logits): H = logsumexp - E[x] = log(s) - t / s with, relative to
// the running max m, s = sum exp(x - m) and t = sum exp(x - m) * (x - m). Forward only (a PPO
// metric). Variants as in row_softmax.wgsl: one thread per row (register) or one workgroup per
// row with a tree reduction (tiled).

struct Params {
    n: u32,
    v: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

const LOWEST: f32 = -3.4028235e38;
const RWG: u32 = 64u;
const WG: u32 = 256u;

var<workgroup> red: array<vec3<f32>, WG>;

// Re-express a (m, s, t) triple relative to a larger max `m`.
fn rebase(a: vec3<f32>, m: f32) -> vec3<f32> {
    let d = a.x - m;
    let e = exp(d);
    // an empty triple (s = 0) stays empty; avoids (-inf) * 0
    let t = select(0.0, e * (a.z + d * a.y), a.y > 0.0);
    return vec3<f32>(m, a.y * e, t);
}

fn combine(a: vec3<f32>, b: vec3<f32>) -> vec3<f32> {
    let m = max(a.x, b.x);
    let ra = rebase(a, m);
    let rb = rebase(b, m);
    return vec3<f32>(m, ra.y + rb.y, ra.z + rb.z);
}

// Add the elements in `x` to `acc`, rebased on the larger max first.
fn add4(acc: vec3<f32>, x: vec4<f32>) -> vec3<f32> {
    let d = x - vec4<f32>(acc.x);
    let e = exp(d);
    let ones = vec4<f32>(1.0);
    return vec3<f32>(acc.x, acc.y + dot(e, ones), acc.z + dot(e * d, ones));
}

// (m, s, t) over logits[base + j] for j = start, start + stride, ...; eight elements per
// iteration because llvmpipe stops an invocation after 65535 loop iterations in total.
fn scan_row(base: u32, start: u32, stride: u32) -> vec3<f32> {
    var acc = vec3<f32>(LOWEST, 0.0, 0.0);
    var j = start;
    for (; j + 7u * stride < p.v; j += 8u * stride) {
        let i = base + j;
        let a = vec4<f32>(logits[i], logits[i + stride], logits[i + 2u * stride], logits[i + 3u * stride]);
        let b = vec4<f32>(logits[i + 4u * stride], logits[i + 5u * stride], logits[i + 6u * stride], logits[i + 7u * stride]);
        let mn = max(acc.x, max(max(max(a.x, a.y), max(a.z, a.w)), max(max(b.x, b.y), max(b.z, b.w))));
        acc = add4(add4(rebase(acc, mn), a), b);
    }
    for (; j < p.v; j += stride) {
        let x = logits[base + j];
        let d = x - max(acc.x, x);
        acc = rebase(acc, max(acc.x, x));
        acc = vec3<f32>(acc.x, acc.y + exp(d), acc.z + exp(d) * d);
    }
    return acc;
}

fn entropy_of(a: vec3<f32>) -> f32 {
    return log(a.y) - a.z / a.y;
}

@compute @workgroup_size(RWG)
fn entropy_register(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * RWG;
    if (row >= p.n) { return; }
    out[row] = entropy_of(scan_row(row * p.v, 0u, 1u));
}

@compute @workgroup_size(WG)
fn entropy_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.n) { return; }   // uniform: depends on the workgroup only
    // accumulate a strided share of the row
    red[lid] = scan_row(row * p.v, lid, WG);
    workgroupBarrier();
    // tree reduction
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            red[lid] = combine(red[lid], red[lid + k]);
        }
        workgroupBarrier();
    }
    // store
    if (lid == 0u) {
        out[row] = entropy_of(red[0]);
    }
}
