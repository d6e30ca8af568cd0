// Global L2 norm of a flat array in two deterministic passes, no atomics:
//   partial_squares  a fixed grid of T threads; thread t sums the squares of the vec4s
//                    t, t + T, ... (neighbouring threads read neighbouring vec4s) into partial[t];
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
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;

const WG: u32 = 256u;

var<workgroup> part: array<f32, WG>;

@compute @workgroup_size(WG)
fn partial_squares(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if (t >= p.threads) { return; }
    // accumulate a grid-strided share of whole vec4s; the last one is masked past n
    var acc = vec4<f32>(0.0);
    let n4 = (p.n + 3u) / 4u;
    for (var i = t; i < n4; i += p.threads) {
        var g = x[i];
        if (i * 4u + 4u > p.n) {
            let j = vec4<u32>(0u, 1u, 2u, 3u) + vec4<u32>(i * 4u);
            g = select(vec4<f32>(0.0), g, j < vec4<u32>(p.n));
        }
        acc += g * g;
    }
    // store
    out[t] = acc.x + acc.y + acc.z + acc.w;
}

@compute @workgroup_size(WG)
fn finish_norm(@builtin(local_invocation_index) lid: u32) {
    // accumulate a strided share of the partials (p.n is a multiple of 4 here)
    var acc = vec4<f32>(0.0);
    for (var i = lid; i < p.n / 4u; i += WG) {
        acc += x[i];
    }
    part[lid] = acc.x + acc.y + acc.z + acc.w;
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
