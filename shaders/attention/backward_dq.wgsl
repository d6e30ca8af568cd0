// Attention backward, dq, register variant. One thread per (batch, query head, query row), like
// the forward: it rebuilds each probability from the saved lse, P = exp(scale q.k - lse), takes
// dP = dout.v and dS = P (dP - D), and accumulates dq += dS k in a private array; no atomics, the
// thread owns its row. Keys stream four at a time. Sequences come from textures (FROM_TEXTURE)
// or buffers, as in forward.wgsl.

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
@group(0) @binding(12) var<storage, read_write> dq: array<vec4<f32>>;

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

// Whether key s exists and is not padding (causality is checked per row).
fn key_ok(b: u32, s: u32) -> bool {
    return s < p.kv_len && (p.has_mask == 0u || key_mask[b * p.mask_stride + s] != 0u);
}

@compute @workgroup_size(64)
fn backward_dq(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.batch * p.n_head * p.q_len) {
        return;
    }
    let t = i % p.q_len;
    let h = (i / p.q_len) % p.n_head;
    let b = i / (p.q_len * p.n_head);
    let kvh = h / (p.n_head / p.n_kv_head);
    let dc = chunks();
    var s_end = p.kv_len;
    if (p.causal != 0u) {
        s_end = min(s_end, p.q_offset + t + 1u);
    }
    let s_max = p.kv_len - 1u;

    // load: scaled q row, dout row, (lse, D); zero dq
    var qr: array<vec4<f32>, 32>;
    var dor: array<vec4<f32>, 32>;
    var acc: array<vec4<f32>, 32>;
    let qx = (p.q_off + h * HEAD_DIM) / 4u;
    let ox = (p.o_off + h * HEAD_DIM) / 4u;
    for (var c = 0u; c < dc; c++) {
        qr[c] = load_q(b, t, qx + c) * p.scale;
        dor[c] = load_dout(b, t, ox + c);
    }
    let st = load_stats(b, h, t);
    let kx = (p.k_off + kvh * HEAD_DIM) / 4u;
    let vx = (p.v_off + kvh * HEAD_DIM) / 4u;

    for (var s0 = 0u; s0 < s_end; s0 += 4u) {
        // accumulate: scores and dP of four keys
        let s1 = min(s0 + 1u, s_max);
        let s2 = min(s0 + 2u, s_max);
        let s3 = min(s0 + 3u, s_max);
        var sc = vec4<f32>(0.0);
        var dp = vec4<f32>(0.0);
        for (var c = 0u; c < dc; c++) {
            let y = qr[c];
            let z = dor[c];
            sc += vec4<f32>(dot(y, load_k(b, s0, kx + c)), dot(y, load_k(b, s1, kx + c)), dot(y, load_k(b, s2, kx + c)), dot(y, load_k(b, s3, kx + c)));
            dp += vec4<f32>(dot(z, load_v(b, s0, vx + c)), dot(z, load_v(b, s1, vx + c)), dot(z, load_v(b, s2, vx + c)), dot(z, load_v(b, s3, vx + c)));
        }
        // P from the saved lse (0 where masked), dS = P (dP - D)
        let keys = vec4<u32>(s0, s0 + 1u, s0 + 2u, s0 + 3u);
        let vis = vec4<bool>(key_ok(b, s0), key_ok(b, s0 + 1u), key_ok(b, s0 + 2u), key_ok(b, s0 + 3u)) & (keys < vec4<u32>(s_end));
        let pr = select(vec4<f32>(0.0), exp(sc - st.x), vis);
        let ds = pr * (dp - st.y);
        // accumulate: dq += dS k
        for (var c = 0u; c < dc; c++) {
            acc[c] += ds.x * load_k(b, s0, kx + c) + ds.y * load_k(b, s1, kx + c) + ds.z * load_k(b, s2, kx + c) + ds.w * load_k(b, s3, kx + c);
        }
    }

    // store: dq = scale * sum dS k, in q's layout
    let gb = (p.q_off + b * p.q_bstride + t * p.q_tstride + h * HEAD_DIM) / 4u;
    for (var c = 0u; c < dc; c++) {
        dq[gb + c] = acc[c] * p.scale;
    }
}
