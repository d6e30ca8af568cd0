// Fused AdamW over the flat parameter buffer (PyTorch semantics), one thread per vec4 (the
// flat buffers are padded to whole 64-element slices, so their length is a multiple of 4):
//   g  = grad * clip            clip = min(1, max_norm / (norm + 1e-6)), norm read from the GPU
//   p *= 1 - lr * wd            decoupled weight decay, only for elements < decay_end
//   m  = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
//   p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
// The gradient buffer is only read. Padding between tensors is zero in p, g, m, v and stays so.
// For CPU adapters the `*_texture` entries read p, g, m and v from texture copies (see
// gpu/texture.rs: there a buffer load costs a loop over the SIMD lanes, a texel fetch a gather)
// and store p, m and v to the buffers: three costly accesses per vec4 instead of seven.

struct Params {
    n: u32,          // elements (a multiple of 4)
    decay_end: u32,  // a multiple of 64
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bias_correction1: f32,       // 1 - beta1^step
    bias_correction2_sqrt: f32,  // sqrt(1 - beta2^step)
    max_norm: f32,
    // texture-fed entries: log2 of the textures' width in texels
    shift: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> params: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> grads: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> m: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> v: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> norm: array<f32>;
// vec4 number i of p, g, m, v at texel (i mod W, i / W), W = 2^shift (texture-fed entries)
@group(0) @binding(6) var p_tex: texture_2d<f32>;
@group(0) @binding(7) var g_tex: texture_2d<f32>;
@group(0) @binding(8) var m_tex: texture_2d<f32>;
@group(0) @binding(9) var v_tex: texture_2d<f32>;

const WG: u32 = 256u;

fn update(i: u32, grad_scale: f32) {
    store(i, params[i], grads[i] * grad_scale, m[i], v[i]);
}

fn texel(t: texture_2d<f32>, i: u32) -> vec4<f32> {
    return textureLoad(t, vec2<u32>(i & ((1u << p.shift) - 1u), i >> p.shift), 0);
}

fn update_texture(i: u32, grad_scale: f32) {
    store(i, texel(p_tex, i), texel(g_tex, i) * grad_scale, texel(m_tex, i), texel(v_tex, i));
}

// The update of vec4 i from its parameters w, scaled gradient g and moments m0, v0.
fn store(i: u32, w0: vec4<f32>, g: vec4<f32>, m0: vec4<f32>, v0: vec4<f32>) {
    var w = w0;
    // decoupled weight decay
    if (i < p.decay_end / 4u) {
        w = w * (1.0 - p.lr * p.weight_decay);
    }
    // moments
    let mi = p.beta1 * m0 + (1.0 - p.beta1) * g;
    let vi = p.beta2 * v0 + (1.0 - p.beta2) * g * g;
    // store
    m[i] = mi;
    v[i] = vi;
    let denom = sqrt(vi) / p.bias_correction2_sqrt + vec4<f32>(p.eps);
    params[i] = w - (p.lr / p.bias_correction1) * mi / denom;
}

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

@compute @workgroup_size(WG)
fn adamw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n / 4u) { return; }
    update(i, 1.0);
}

@compute @workgroup_size(WG)
fn adamw_clip(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n / 4u) { return; }
    update(i, min(1.0, p.max_norm / (norm[0] + 1e-6)));
}

@compute @workgroup_size(WG)
fn adamw_texture(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n / 4u) { return; }
    update_texture(i, 1.0);
}

@compute @workgroup_size(WG)
fn adamw_clip_texture(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.n / 4u) { return; }
    update_texture(i, min(1.0, p.max_norm / (norm[0] + 1e-6)));
}
