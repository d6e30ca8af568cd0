// LayerNorm parameter-gradient partials for CPU adapters, the math of layernorm_backward.wgsl's
// param_grad_partial four columns at a time, dout and x read from texture copies (see
// layernorm_texture.wgsl). Thread (block b, column group c) sums its block's rows in order:
//   dst[b, 4c..4c+3]             = sum over rows of dout * (x - mean) * rstd
//   dst[db_offset + b*C + 4c..]  = sum over rows of dout

struct Params {
    rows: u32,
    cols: u32,
    rows_per_block: u32,
    // log2 of the textures' width in texels
    shift: u32,
    // where the dbias partials start in dst, in vec4s
    db_offset4: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var dout_tex: texture_2d<f32>;
@group(0) @binding(2) var x_tex: texture_2d<f32>;
@group(0) @binding(3) var<storage, read> mean: array<f32>;
@group(0) @binding(4) var<storage, read> rstd: array<f32>;
@group(0) @binding(5) var<storage, read_write> dst: array<vec4<f32>>;

fn texel(t: texture_2d<f32>, i: u32) -> vec4<f32> {
    return textureLoad(t, vec2<u32>(i & ((1u << p.shift) - 1u), i >> p.shift), 0);
}

@compute @workgroup_size(64)
fn param_grad_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    let c4 = p.cols / 4u;
    let blocks = (p.rows + p.rows_per_block - 1u) / p.rows_per_block;
    if (i >= blocks * c4) { return; }
    let c = i % c4;
    let r0 = (i / c4) * p.rows_per_block;
    let r1 = min(r0 + p.rows_per_block, p.rows);
    // accumulate: the block's rows in order
    var dw = vec4<f32>(0.0);
    var db = vec4<f32>(0.0);
    for (var row = r0; row < r1; row++) {
        let k = row * c4 + c;
        let d = texel(dout_tex, k);
        dw += d * (texel(x_tex, k) - mean[row]) * rstd[row];
        db += d;
    }
    // store
    dst[i] = dw;
    dst[p.db_offset4 + i] = db;
}
