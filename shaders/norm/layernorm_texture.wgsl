// LayerNorm forward for CPU adapters, the math of layernorm.wgsl (two passes for the variance):
// one thread per row, x, weight and bias read from texture copies (see gpu/texture.rs: on
// lavapipe a texel fetch is a vector gather while each buffer load is built one lane and one
// component at a time), so a row costs its stores and little else. C is a multiple of 4;
// vec4 number i of a tensor is texel (i mod W, i / W), W = 2^shift for all three textures.

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    shift: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var x_tex: texture_2d<f32>;
@group(0) @binding(2) var w_tex: texture_2d<f32>;
@group(0) @binding(3) var b_tex: texture_2d<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> mean: array<f32>;
@group(0) @binding(6) var<storage, read_write> rstd: array<f32>;

fn texel(t: texture_2d<f32>, i: u32) -> vec4<f32> {
    return textureLoad(t, vec2<u32>(i & ((1u << p.shift) - 1u), i >> p.shift), 0);
}

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * 64u;
    if (row >= p.rows) { return; }
    let c4 = p.cols / 4u;
    let base = row * c4;
    let n = f32(p.cols);
    // accumulate: the mean, then the variance around it
    var s = vec4<f32>(0.0);
    for (var c = 0u; c < c4; c++) {
        s += texel(x_tex, base + c);
    }
    let m = dot(s, vec4<f32>(1.0)) / n;
    var v = vec4<f32>(0.0);
    for (var c = 0u; c < c4; c++) {
        let d = texel(x_tex, base + c) - m;
        v += d * d;
    }
    let r = 1.0 / sqrt(dot(v, vec4<f32>(1.0)) / n + p.eps);
    // store
    for (var c = 0u; c < c4; c++) {
        out[base + c] = (texel(x_tex, base + c) - m) * r * texel(w_tex, c) + texel(b_tex, c);
    }
    mean[row] = m;
    rstd[row] = r;
}
