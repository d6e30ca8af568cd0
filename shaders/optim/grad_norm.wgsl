// Global L2 norm of a flat array in two deterministic passes, no atomics:
//   partial_squares  a fixed grid of T threads; thread t sums x[i]^2 for i = t, t + T, ...
//                    (neighbouring threads read neighbouring elements) into partial[t];
//   finish_norm      one workgroup sums the T partials (strided shares, then a tree) and
//                    stores sqrt(total) in out[0].
// For a given length the grid and the order of every addition are fixed.

struct Params {
    n: u32,        // elements to reduce (x's length)
    threads: u32,  // partial_squares: grid size T
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;

const WG: u32 = 256u;

var<workgroup> part: array<f32, WG>;

@compute @workgroup_size(WG)
fn partial_squares(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if (t >= p.threads) { return; }
    // accumulate a grid-strided share
    var acc = 0.0;
    for (var i = t; i < p.n; i += p.threads) {
        let g = x[i];
        acc += g * g;
    }
    // store
    out[t] = acc;
}

@compute @workgroup_size(WG)
fn finish_norm(@builtin(local_invocation_index) lid: u32) {
    // accumulate a strided share of the partials
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
    // store the norm
    if (lid == 0u) {
        out[0] = sqrt(part[0]);
    }
}
