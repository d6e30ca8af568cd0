// Elementwise products on f32 arrays: out = a*x, out = x*y. (fill, axpby and add_assign, which
// the tape and tensors need, are the engine core's: shaders/core/linear.wgsl, same layout.)
// One thread per element; the linear index spans a 2-D grid so huge arrays fit the dispatch limit.

struct Params {
    n: u32,
    a: f32,
    b: f32,
    // unused here (the texture shift of shaders/core/linear.wgsl's layout)
    shift: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> y: array<f32>;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// out[i] = a * x[i]
@compute @workgroup_size(256)
fn scale(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    out[i] = p.a * x[i];
}

// out[i] = x[i] * y[i]
@compute @workgroup_size(256)
fn mul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    out[i] = x[i] * y[i];
}
