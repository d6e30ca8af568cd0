// Attention backward, dk and dv, register variant. One thread per (batch, kv head, key row): it
// accumulates both gradients in private arrays while walking every query row that can see its
// key, for each query head sharing its kv head (grouped-query attention), rebuilding
// P = exp(scale q.k - lse) and dS = P (dout.v - D): dv += P dout, dk += dS q. No atomics: the
// thread owns its key row. Query rows stream four at a time. Its own k and v rows are re-read
// when needed rather than kept (fewer private arrays compile much faster on CPU drivers).
// Sequences come from textures (FROM_TEXTURE) or buffers, as in forward.wgsl.

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

override HEAD_DIM: u32 = 64u; // a multiple of 4, at most 128
override FROM_TEXTURE: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var q_tex: texture_2d_array<f32>;
@group(0) @binding(2) var k_tex: texture_2d_array<f32>;
@group(0) @binding(3) var v_tex: texture_2d_array<f32>;
@group(0) @binding(4) var do_tex: texture_2d_array<f32>;
@group(0) @binding(5) var st_tex: texture_2d_array<f32>;
@group(0) @binding(6) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> dout: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read> stats: array<vec2<f32>>;
@group(0) @binding(11) var<storage, read> key_mask: array<u32>;
@group(0) @binding(12) var<storage, read_write> dk: array<vec4<f32>>;
@group(0) @binding(13) var<storage, read_write> dv: array<vec4<f32>>;

// Texel x of token t of batch b (x counts vec4s from the start of the token's row).
fn load_q(b: u32, t: u32, x: u32) -> vec4<f32> {
    if (FROM_TEXTURE) {
        return textureLoad(q_tex, vec2<u32>(x, t), b, 0);
    }
    return q[(b * p.q_bstride + t * p.q_tstride) / 4u + x];
}
fn load_k(b: u32, s: u32, x: u32) -> vec4<f32> {
    if (FROM_TEXTURE) {
        return textureLoad(k_tex, vec2<u32>(x, s), b, 0);
    }
    return k[(b * p.k_bstride + s * p.k_tstride) / 4u + x];
}
fn load_v(b: u32, s: u32, x: u32) -> vec4<f32> {
    if (FROM_TEXTURE) {
        return textureLoad(v_tex, vec2<u32>(x, s), b, 0);
    }
    return v[(b * p.v_bstride + s * p.v_tstride) / 4u + x];
}

fn load_dout(b: u32, t: u32, x: u32) -> vec4<f32> {
    if (FROM_TEXTURE) {
        return textureLoad(do_tex, vec2<u32>(x, t), b, 0);
    }
    return dout[(b * p.o_bstride + t * p.o_tstride) / 4u + x];
}
// (lse, D) of query row t of head h.
fn load_stats(b: u32, h: u32, t: u32) -> vec2<f32> {
    if (FROM_TEXTURE) {
        return textureLoad(st_tex, vec2<u32>(t, h), b, 0).xy;
    }
    return stats[(b * p.n_head + h) * p.q_len + t];
}
// vec4 chunks per head row. Up to 32 dims the loops over them have a constant trip count, which
// CPU drivers unroll; past that the count comes from the uniform, which keeps them rolled: on
// lavapipe that compiles several times faster and runs no slower (measured at D = 64 and 128).
fn chunks() -> u32 {
    return select(p.head_chunks, HEAD_DIM / 4u, HEAD_DIM <= 32u);
}

@compute @workgroup_size(64)
fn backward_dkv(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.batch * p.n_kv_head * p.kv_len) {
        return;
    }
    let s = i % p.kv_len;
    let kvh = (i / p.kv_len) % p.n_kv_head;
    let b = i / (p.kv_len * p.n_kv_head);
    let group = p.n_head / p.n_kv_head;
    let dc = chunks();
    // A padded key gets no gradient; causally, only rows t >= s - q_offset see key s.
    let key_ok = p.has_mask == 0u || key_mask[b * p.mask_stride + s] != 0u;
    var t_begin = 0u;
    if (p.causal != 0u && s > p.q_offset) {
        t_begin = s - p.q_offset;
    }
    if (!key_ok) {
        t_begin = p.q_len;
    }
    let t_max = p.q_len - 1u;

    // load: nothing kept but the gradients, zeroed
    var gk: array<vec4<f32>, 32>;
    var gv: array<vec4<f32>, 32>;
    let kx = (p.k_off + kvh * HEAD_DIM) / 4u;
    let vx = (p.v_off + kvh * HEAD_DIM) / 4u;

    for (var hi = 0u; hi < group; hi++) {
        let h = kvh * group + hi;
        let qx = (p.q_off + h * HEAD_DIM) / 4u;
        let ox = (p.o_off + h * HEAD_DIM) / 4u;
        for (var t0 = t_begin; t0 < p.q_len; t0 += 4u) {
            // accumulate: scores and dP of four query rows (clamped; the extra ones are masked)
            let t1 = min(t0 + 1u, t_max);
            let t2 = min(t0 + 2u, t_max);
            let t3 = min(t0 + 3u, t_max);
            var sc = vec4<f32>(0.0);
            var dp = vec4<f32>(0.0);
            for (var c = 0u; c < dc; c++) {
                let y = load_k(b, s, kx + c);
                let z = load_v(b, s, vx + c);
                sc += vec4<f32>(dot(y, load_q(b, t0, qx + c)), dot(y, load_q(b, t1, qx + c)), dot(y, load_q(b, t2, qx + c)), dot(y, load_q(b, t3, qx + c)));
                dp += vec4<f32>(dot(z, load_dout(b, t0, ox + c)), dot(z, load_dout(b, t1, ox + c)), dot(z, load_dout(b, t2, ox + c)), dot(z, load_dout(b, t3, ox + c)));
            }
            // P from each row's lse (0 past the last row), dS = P (dP - D)
            let st0 = load_stats(b, h, t0);
            let st1 = load_stats(b, h, t1);
            let st2 = load_stats(b, h, t2);
            let st3 = load_stats(b, h, t3);
            let vis = vec4<u32>(t0, t0 + 1u, t0 + 2u, t0 + 3u) < vec4<u32>(p.q_len);
            let pr = select(vec4<f32>(0.0), exp(sc * p.scale - vec4<f32>(st0.x, st1.x, st2.x, st3.x)), vis);
            let ds = pr * (dp - vec4<f32>(st0.y, st1.y, st2.y, st3.y));
            // accumulate: dv += P dout, dk += dS q
            for (var c = 0u; c < dc; c++) {
                gv[c] += pr.x * load_dout(b, t0, ox + c) + pr.y * load_dout(b, t1, ox + c) + pr.z * load_dout(b, t2, ox + c) + pr.w * load_dout(b, t3, ox + c);
                gk[c] += ds.x * load_q(b, t0, qx + c) + ds.y * load_q(b, t1, qx + c) + ds.z * load_q(b, t2, qx + c) + ds.w * load_q(b, t3, qx + c);
            }
        }
    }

    // store: dk = scale * sum dS q, dv = sum P dout, in k's and v's layouts
    let gkb = (p.k_off + b * p.k_bstride + s * p.k_tstride + kvh * HEAD_DIM) / 4u;
    let gvb = (p.v_off + b * p.v_bstride + s * p.v_tstride + kvh * HEAD_DIM) / 4u;
    for (var c = 0u; c < dc; c++) {
        dk[gkb + c] = gk[c] * p.scale;
        dv[gvb + c] = gv[c];
    }
}
