// GELU, elementwise, forward and backward, in two forms:
//   tanh (GPT-2): y = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
//   erf (exact):  y = x Phi(x) = 0.5 x erfc(-x / sqrt(2))
// WGSL has no erf, so erfc comes from the Chebyshev fit of Numerical Recipes (erfcc, 2nd ed.
// section 6.2), whose fractional error is below 1.2e-7 everywhere; writing GELU with erfc
// instead of 1 + erf keeps that relative accuracy for negative x too.
// Two forms of each entry point: one thread per element reading the buffers, and for CPU
// adapters (`*_texture`) one thread per vec4 reading texture copies of the inputs (see
// gpu/texture.rs: there a buffer load costs a loop over the SIMD lanes, a texel fetch a gather).

struct Params {
    // elements, or vec4s for the texture-fed entries
    n: u32,
    // texture-fed entries: log2 of the textures' width in texels
    shift: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// y for the forward passes, dx for the backward passes.
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> dout: array<f32>;
// The texture-fed entries: vec4 number i of x (dout) is texel (i mod W, i / W), W = 2^shift.
@group(0) @binding(4) var x_tex: texture_2d<f32>;
@group(0) @binding(5) var dout_tex: texture_2d<f32>;
@group(0) @binding(6) var<storage, read_write> dst4: array<vec4<f32>>;

const SQRT_2_OVER_PI: f32 = 0.7978845608028654;
const INV_SQRT_2: f32 = 0.7071067811865476;
const INV_SQRT_2PI: f32 = 0.3989422804014327;
const GELU_C: f32 = 0.044715;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

fn texel(t: texture_2d<f32>, i: u32) -> vec4<f32> {
    return textureLoad(t, vec2<u32>(i & ((1u << p.shift) - 1u), i >> p.shift), 0);
}

// Complementary error function, fractional error < 1.2e-7 (Numerical Recipes' erfcc).
fn erfc(z: f32) -> f32 {
    let a = abs(z);
    let t = 1.0 / (1.0 + 0.5 * a);
    let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806
        + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let r = t * exp(-a * a + poly);
    return select(2.0 - r, r, z >= 0.0);
}

// tanh of the GELU argument, clamped: tanh is exactly +-1 in f32 beyond |u| = 10, and some
// backends compute tanh through exp and overflow to NaN for large |u|.
fn gelu_tanh_t(v: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (v + GELU_C * v * v * v);
    return tanh(clamp(u, -10.0, 10.0));
}

fn gelu_tanh(v: f32) -> f32 {
    return 0.5 * v * (1.0 + gelu_tanh_t(v));
}

fn gelu_tanh_grad(v: f32) -> f32 {
    let t = gelu_tanh_t(v);
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * v * v);
    // where tanh saturates the second term is zero (and du may overflow: 0 * inf = NaN)
    let sech2 = 1.0 - t * t;
    let tail = select(0.5 * v * sech2 * du, 0.0, sech2 == 0.0);
    return 0.5 * (1.0 + t) + tail;
}

fn gelu_erf(v: f32) -> f32 {
    return 0.5 * v * erfc(-v * INV_SQRT_2);
}

// d/dx x Phi(x) = Phi(x) + x phi(x)
fn gelu_erf_grad(v: f32) -> f32 {
    return 0.5 * erfc(-v * INV_SQRT_2) + v * INV_SQRT_2PI * exp(-0.5 * v * v);
}

@compute @workgroup_size(256)
fn forward_tanh(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    dst[i] = gelu_tanh(x[i]);
}

@compute @workgroup_size(256)
fn backward_tanh(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    dst[i] = dout[i] * gelu_tanh_grad(x[i]);
}

@compute @workgroup_size(256)
fn forward_erf(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    dst[i] = gelu_erf(x[i]);
}

@compute @workgroup_size(256)
fn backward_erf(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    dst[i] = dout[i] * gelu_erf_grad(x[i]);
}

@compute @workgroup_size(256)
fn forward_tanh_texture(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    let v = texel(x_tex, i);
    dst4[i] = vec4<f32>(gelu_tanh(v.x), gelu_tanh(v.y), gelu_tanh(v.z), gelu_tanh(v.w));
}

@compute @workgroup_size(256)
fn backward_tanh_texture(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    let v = texel(x_tex, i);
    dst4[i] = texel(dout_tex, i) * vec4<f32>(gelu_tanh_grad(v.x), gelu_tanh_grad(v.y), gelu_tanh_grad(v.z), gelu_tanh_grad(v.w));
}

@compute @workgroup_size(256)
fn forward_erf_texture(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    let v = texel(x_tex, i);
    dst4[i] = vec4<f32>(gelu_erf(v.x), gelu_erf(v.y), gelu_erf(v.z), gelu_erf(v.w));
}

@compute @workgroup_size(256)
fn backward_erf_texture(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n) { return; }
    let v = texel(x_tex, i);
    dst4[i] = texel(dout_tex, i) * vec4<f32>(gelu_erf_grad(v.x), gelu_erf_grad(v.y), gelu_erf_grad(v.z), gelu_erf_grad(v.w));
}
