// Cross-entropy weights: w_i = mask_i (or 1 without a mask), 0 where the target is >= V (an
// ignored row), and their sum. One workgroup: each thread sums a strided share, then a tree
// reduction in a fixed order, so the sum is the same bit for bit on every run.

struct Params {
    n: u32,   // rows
    v: u32,   // vocabulary: targets >= v are ignored
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> targets: array<u32>;
@group(0) @binding(2) var<storage, read_write> weights: array<f32>;
@group(0) @binding(3) var<storage, read_write> weight_sum: array<f32>;
@group(0) @binding(4) var<storage, read> mask: array<f32>;

const WG: u32 = 256u;

var<workgroup> part: array<f32, WG>;

// Sum the threads' partials and store the total.
fn reduce_store(lid: u32, acc: f32) {
    // store each thread's partial
    part[lid] = acc;
    workgroupBarrier();
    // tree reduction
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            part[lid] = part[lid] + part[lid + k];
        }
        workgroupBarrier();
    }
    // store the total
    if (lid == 0u) {
        weight_sum[0] = part[0];
    }
}

@compute @workgroup_size(WG)
fn weights_unmasked(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        let w = select(0.0, 1.0, targets[i] < p.v);
        weights[i] = w;
        acc += w;
    }
    reduce_store(lid, acc);
}

@compute @workgroup_size(WG)
fn weights_masked(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        let w = select(0.0, mask[i], targets[i] < p.v);
        weights[i] = w;
        acc += w;
    }
    reduce_store(lid, acc);
}
