// SiLU and SwiGLU (the Llama MLP), elementwise, forward and backward:
//   silu(x)         = x * sigmoid(x),        silu'(x) = s (1 + x (1 - s)),  s = sigmoid(x)
//   swiglu(gate, up) = silu(gate) * up,      dgate = dout * up * silu'(gate), dup = dout * silu(gate)
// One thread per element; the `_vec4` SwiGLU entries (lengths a multiple of 4) one per vec4,
// reading and writing the same buffers through the vec4 bindings 6-10.

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// The output: y (forwards), dx (silu backward) or dgate (swiglu backward).
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
// x (silu) or gate (swiglu).
@group(0) @binding(2) var<storage, read> a: array<f32>;
// dout (silu backward) or up (swiglu).
@group(0) @binding(3) var<storage, read> b: array<f32>;
// dout (swiglu backward).
@group(0) @binding(4) var<storage, read> c: array<f32>;
// dup (swiglu backward).
@group(0) @binding(5) var<storage, read_write> dst2: array<f32>;

// The same buffers as vec4s (each entry binds one view of a buffer, never both).
@group(0) @binding(6) var<storage, read_write> dst4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> c4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> dst2_4: array<vec4<f32>>;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// exp(-v) overflows to +inf for v < -88 and 1 / inf = 0, the right limit.
fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

fn silu_grad(v: f32) -> f32 {
    let s = sigmoid(v);
    return s * (1.0 + v * (1.0 - s));
}

fn sigmoid4(v: vec4<f32>) -> vec4<f32> {
    return 1.0 / (1.0 + exp(-v));
}

@compute @workgroup_size(256)
fn silu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    let v = a[i];
    dst[i] = v * sigmoid(v);
}

@compute @workgroup_size(256)
fn silu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    dst[i] = b[i] * silu_grad(a[i]);
}

@compute @workgroup_size(256)
fn swiglu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    let g = a[i];
    dst[i] = g * sigmoid(g) * b[i];
}

@compute @workgroup_size(256)
fn swiglu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    let g = a[i];
    let d = c[i];
    dst[i] = d * b[i] * silu_grad(g);
    dst2[i] = d * g * sigmoid(g);
}

// p.n counts vec4s here.
@compute @workgroup_size(256)
fn swiglu_forward_vec4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    let g = a4[i];
    dst4[i] = g * sigmoid4(g) * b4[i];
}

@compute @workgroup_size(256)
fn swiglu_backward_vec4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    let g = a4[i];
    let d = c4[i];
    let s = sigmoid4(g);
    dst4[i] = d * b4[i] * (s * (1.0 + g * (1.0 - s)));
    dst2_4[i] = d * g * s;
}
