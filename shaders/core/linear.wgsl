// The engine core's linear kernels on f32 arrays: fill, out = a*x + b*y, out += a*x. The tape
// seeds and accumulates gradients with them and tensors and parameter stores are zeroed with
// them, so they live beside the runtime (src/gpu/linear.rs), not in an op family.
// One thread per element; the linear index spans a 2-D grid so huge arrays fit the dispatch limit.
// For CPU adapters, axpby and add_assign also come texture-fed (`*_texture`): one thread per
// vec4, inputs read from texture copies (see gpu/texture.rs: there a buffer load costs a loop
// over the SIMD lanes, a texel fetch a gather).

struct Params {
    // elements, or vec4s for the texture-fed entries
    n: u32,
    a: f32,
    b: f32,
    // texture-fed entries: log2 of the textures' width in texels (0 for the others)
    shift: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> y: array<f32>;
// The texture-fed entries: vec4 number i of the first (second) input is texel (i mod W, i / W).
@group(0) @binding(4) var x_tex: texture_2d<f32>;
@group(0) @binding(5) var y_tex: texture_2d<f32>;
@group(0) @binding(6) var<storage, read_write> out4: array<vec4<f32>>;

fn texel(t: texture_2d<f32>, i: u32) -> vec4<f32> {
    return textureLoad(t, vec2<u32>(i & ((1u << p.shift) - 1u), i >> p.shift), 0);
}

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// out[i] = a
@compute @workgroup_size(256)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    out[i] = p.a;
}

// out[i] += a * x[i]
@compute @workgroup_size(256)
fn add_assign(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    out[i] = out[i] + p.a * x[i];
}

// out[i] = a * x[i] + b * y[i]
@compute @workgroup_size(256)
fn axpby(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    out[i] = p.a * x[i] + p.b * y[i];
}

// out = a * x + b * y, per vec4
@compute @workgroup_size(256)
fn axpby_texture(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    out4[i] = p.a * texel(x_tex, i) + p.b * texel(y_tex, i);
}

// out += a * x, per vec4: the first texture holds out's old values, the second x
@compute @workgroup_size(256)
fn add_assign_texture(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    out4[i] = texel(x_tex, i) + p.a * texel(y_tex, i);
}
