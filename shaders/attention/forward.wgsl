// Fused multi-head attention, forward, register variant: one thread per (batch, query head,
// query row), no workgroup memory, no barriers. The thread keeps its pre-scaled q row and its
// output accumulator in private vec4 arrays and streams keys four at a time through an online
// softmax, so no T x S score matrix exists.
//
// Where q, k and v come from. On lavapipe a storage-buffer load is a loop over the SIMD lanes
// (~25 cycles per lane and component) while a texel fetch is a vector gather, about fifteen times
// cheaper (measured), and every key row here is read by every query row. So with FROM_TEXTURE the
// sequences are read from rgba32float array textures that mirror their buffers (texel (x, t, b) =
// elements 4x..4x+3 of token t of batch b, filled by pack.wgsl); otherwise from the buffers as
// vec4. Positions are (offset, token stride, batch stride) in elements, all multiples of 4, so
// one buffer can be q, k and v (GPT-2's fused qkv) and a KV cache longer than kv_len can be read.

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
// Stands in for -infinity: the running max before any visible key, and the lse of a row that sees none.
const NEG_BIG: f32 = -3.0e38;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var q_tex: texture_2d_array<f32>;
@group(0) @binding(2) var k_tex: texture_2d_array<f32>;
@group(0) @binding(3) var v_tex: texture_2d_array<f32>;
@group(0) @binding(4) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> key_mask: array<u32>;
@group(0) @binding(8) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> lse: array<f32>;

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
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
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

    // load: the query row, pre-scaled; zero the accumulator
    var qr: array<vec4<f32>, 32>;
    var acc: array<vec4<f32>, 32>;
    let qx = (p.q_off + h * HEAD_DIM) / 4u;
    for (var c = 0u; c < dc; c++) {
        qr[c] = load_q(b, t, qx + c) * p.scale;
    }
    var m = NEG_BIG;
    var l = 0.0;
    let kx = (p.k_off + kvh * HEAD_DIM) / 4u;
    let vx = (p.v_off + kvh * HEAD_DIM) / 4u;

    for (var s0 = 0u; s0 < s_end; s0 += 4u) {
        // accumulate: scores of four keys (clamped to the last key; the extra ones are masked)
        let s1 = min(s0 + 1u, s_max);
        let s2 = min(s0 + 2u, s_max);
        let s3 = min(s0 + 3u, s_max);
        var sc = vec4<f32>(0.0);
        for (var c = 0u; c < dc; c++) {
            let y = qr[c];
            sc += vec4<f32>(dot(y, load_k(b, s0, kx + c)), dot(y, load_k(b, s1, kx + c)), dot(y, load_k(b, s2, kx + c)), dot(y, load_k(b, s3, kx + c)));
        }
        // online softmax: mask, new running max, rescale factor, probabilities
        let keys = vec4<u32>(s0, s0 + 1u, s0 + 2u, s0 + 3u);
        let vis = vec4<bool>(key_ok(b, s0), key_ok(b, s0 + 1u), key_ok(b, s0 + 2u), key_ok(b, s0 + 3u)) & (keys < vec4<u32>(s_end));
        let s = select(vec4<f32>(NEG_BIG), sc, vis);
        let m_new = max(m, max(max(s.x, s.y), max(s.z, s.w)));
        let cr = exp(m - m_new);
        let pr = select(vec4<f32>(0.0), exp(s - m_new), vis);
        l = l * cr + (pr.x + pr.y + pr.z + pr.w);
        m = m_new;
        // accumulate: acc = acc * rescale + P V
        for (var c = 0u; c < dc; c++) {
            acc[c] = acc[c] * cr + pr.x * load_v(b, s0, vx + c) + pr.y * load_v(b, s1, vx + c) + pr.z * load_v(b, s2, vx + c) + pr.w * load_v(b, s3, vx + c);
        }
    }

    // store: normalise; a row that sees no key gets 0 output and lse = NEG_BIG
    let ob = (p.o_off + b * p.o_bstride + t * p.o_tstride + h * HEAD_DIM) / 4u;
    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var c = 0u; c < dc; c++) {
        out[ob + c] = acc[c] * inv;
    }
    lse[(b * p.n_head + h) * p.q_len + t] = select(NEG_BIG, m + log(l), l > 0.0);
}
