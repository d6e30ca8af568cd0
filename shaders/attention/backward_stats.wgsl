// Attention backward, first pass: per query row, D = rowsum(out * dout), stored with the row's
// lse as (lse, D): in a texture (texel (t, h) of layer b) for the texture-fed kernels, else in a
// buffer of vec2 at (b * Hq + h) * T + t. One thread per (batch, query row, head), in the memory
// order of out.

struct Params {
    batch: u32,
    q_len: u32,
    kv_len: u32,
    n_head: u32,
    n_kv_head: u32,
    causal: u32,
    q_offset: u32,
    has_mask: u32,
    scale: f32,
    mask_stride: u32,
    q_off: u32,
    q_tstride: u32,
    q_bstride: u32,
    k_off: u32,
    k_tstride: u32,
    k_bstride: u32,
    v_off: u32,
    v_tstride: u32,
    v_bstride: u32,
    o_off: u32,
    o_tstride: u32,
    o_bstride: u32,
    // HEAD_DIM / 4 at run time: loops over it are not unrolled (see chunks()).
    head_chunks: u32,
    _pad: u32,
}

override HEAD_DIM: u32 = 64u;
override FROM_TEXTURE: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var stats_tex: texture_storage_2d_array<rgba32float, write>;
@group(0) @binding(2) var<storage, read> out: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> dout: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> lse: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats: array<vec2<f32>>;

@compute @workgroup_size(64)
fn row_stats(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.batch * p.q_len * p.n_head) {
        return;
    }
    let h = i % p.n_head;
    let t = (i / p.n_head) % p.q_len;
    let b = i / (p.n_head * p.q_len);
    // accumulate: dot(out row, dout row)
    let ob = (p.o_off + b * p.o_bstride + t * p.o_tstride + h * HEAD_DIM) / 4u;
    var delta = 0.0;
    for (var c = 0u; c < HEAD_DIM / 4u; c++) {
        delta += dot(out[ob + c], dout[ob + c]);
    }
    // store
    let si = (b * p.n_head + h) * p.q_len + t;
    if (FROM_TEXTURE) {
        textureStore(stats_tex, vec2<u32>(t, h), b, vec4<f32>(lse[si], delta, 0.0, 0.0));
    } else {
        stats[si] = vec2<f32>(lse[si], delta);
    }
}
