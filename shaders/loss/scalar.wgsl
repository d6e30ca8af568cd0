// Scalars that stay on the GPU: the sum of an array into one element (one workgroup, fixed
// order, no atomics), and an array scaled by a one-element tensor (the upstream gradient of a
// loss), so a backward pass never reads a value back to the host.

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> s: array<f32>;

const WG: u32 = 256u;

var<workgroup> part: array<f32, WG>;

// out[0] = sum(x)
@compute @workgroup_size(WG)
fn sum_all(@builtin(local_invocation_index) lid: u32) {
    // accumulate a strided share
    var acc = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        acc += x[i];
    }
    part[lid] = acc;
    workgroupBarrier();
    // tree reduction
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            part[lid] = part[lid] + part[lid + k];
        }
        workgroupBarrier();
    }
    // store
    if (lid == 0u) {
        out[0] = part[0];
    }
}

// out[i] = x[i] * s[0]
@compute @workgroup_size(WG)
fn scale_by_scalar(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) { return; }
    out[i] = x[i] * s[0];
}
