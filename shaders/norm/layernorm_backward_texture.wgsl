// LayerNorm backward dx for CPU adapters, the math of layernorm_backward.wgsl's backward_thread:
//   dnorm = dout * weight,  dx = (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd
// one thread per row, dout, x and weight read from texture copies (see layernorm_texture.wgsl).

struct Params {
    rows: u32,
    cols: u32,
    rows_per_block: u32,
    // log2 of the textures' width in texels
    shift: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var dout_tex: texture_2d<f32>;
@group(0) @binding(2) var x_tex: texture_2d<f32>;
@group(0) @binding(3) var w_tex: texture_2d<f32>;
@group(0) @binding(4) var<storage, read> mean: array<f32>;
@group(0) @binding(5) var<storage, read> rstd: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<vec4<f32>>;

fn texel(t: texture_2d<f32>, i: u32) -> vec4<f32> {
    return textureLoad(t, vec2<u32>(i & ((1u << p.shift) - 1u), i >> p.shift), 0);
}

@compute @workgroup_size(64)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * 64u;
    if (row >= p.rows) { return; }
    let c4 = p.cols / 4u;
    let base = row * c4;
    let m = mean[row];
    let r = rstd[row];
    // accumulate: mean(dnorm) and mean(dnorm * norm)
    var s1 = vec4<f32>(0.0);
    var s2 = vec4<f32>(0.0);
    for (var c = 0u; c < c4; c++) {
        let dnorm = texel(dout_tex, base + c) * texel(w_tex, c);
        s1 += dnorm;
        s2 += dnorm * (texel(x_tex, base + c) - m) * r;
    }
    let mean1 = dot(s1, vec4<f32>(1.0)) / f32(p.cols);
    let mean2 = dot(s2, vec4<f32>(1.0)) / f32(p.cols);
    // store
    for (var c = 0u; c < c4; c++) {
        let dnorm = texel(dout_tex, base + c) * texel(w_tex, c);
        let norm = (texel(x_tex, base + c) - m) * r;
        dx[base + c] = (dnorm - mean1 - norm * mean2) * r;
    }
}
