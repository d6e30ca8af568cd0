// Fused multi-head attention, forward, register variant (CPU adapters such as lavapipe).
//
// One thread per (batch, query head, query row). Its scaled q row and its output accumulator live
// in private arrays; keys stream past four at a time with an online softmax, so no T x S score
// matrix ever exists. All threads of a workgroup share (batch, head) and walk the same keys, so
// every key, value and mask load has a uniform address (a broadcast); each row's causal limit is a
// select. q, k, v and out are addressed through (offset, token stride, batch stride), which lets
// one buffer be bound as q, k and v (GPT-2's fused qkv) and a KV cache longer than kv_len be read.

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
    _pad0: u32,
    _pad1: u32,
}

override HEAD_DIM: u32 = 64u;
override WG: u32 = 64u;
const MAX_D: u32 = 128u;
// Stands in for -infinity: the running max before any visible key, and the lse of a row that sees none.
const NEG_BIG: f32 = -3.0e38;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> key_mask: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;

// Whether query row t (of batch b) may attend to key s.
fn visible(b: u32, s: u32, t: u32) -> bool {
    var ok = s < p.kv_len;
    if (p.causal != 0u) {
        ok = ok && s <= p.q_offset + t;
    }
    if (p.has_mask != 0u) {
        ok = ok && key_mask[b * p.mask_stride + min(s, p.kv_len - 1u)] != 0u;
    }
    return ok;
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let b = wid.z;
    let h = wid.y;
    let t_first = wid.x * WG;
    let t = t_first + li;
    // Threads past the last row shadow it (uniform control flow) and store nothing.
    let row = min(t, p.q_len - 1u);
    let t_last = min(t_first + WG, p.q_len) - 1u;
    let kvh = h / (p.n_head / p.n_kv_head);
    // Keys any row of this workgroup can see: one bound for all threads.
    var s_end = p.kv_len;
    if (p.causal != 0u) {
        s_end = min(s_end, p.q_offset + t_last + 1u);
    }
    let s_max = p.kv_len - 1u;

    // load: the query row, pre-scaled; zero the accumulator
    var qr: array<f32, MAX_D>;
    var acc: array<f32, MAX_D>;
    let qb = p.q_off + b * p.q_bstride + row * p.q_tstride + h * HEAD_DIM;
    for (var d = 0u; d < HEAD_DIM; d++) {
        qr[d] = q[qb + d] * p.scale;
        acc[d] = 0.0;
    }
    var m = NEG_BIG;
    var l = 0.0;
    let kb = p.k_off + b * p.k_bstride + kvh * HEAD_DIM;
    let vb = p.v_off + b * p.v_bstride + kvh * HEAD_DIM;

    // accumulate: four keys per step; scores, new running max, rescale, add p * v
    for (var s0 = 0u; s0 < s_end; s0 += 4u) {
        let k0 = kb + min(s0, s_max) * p.k_tstride;
        let k1 = kb + min(s0 + 1u, s_max) * p.k_tstride;
        let k2 = kb + min(s0 + 2u, s_max) * p.k_tstride;
        let k3 = kb + min(s0 + 3u, s_max) * p.k_tstride;
        var sc = vec4<f32>(0.0);
        for (var d = 0u; d < HEAD_DIM; d++) {
            sc += qr[d] * vec4<f32>(k[k0 + d], k[k1 + d], k[k2 + d], k[k3 + d]);
        }
        let vis = vec4<bool>(visible(b, s0, row), visible(b, s0 + 1u, row), visible(b, s0 + 2u, row), visible(b, s0 + 3u, row));
        sc = select(vec4<f32>(NEG_BIG), sc, vis);
        let m_new = max(m, max(max(sc.x, sc.y), max(sc.z, sc.w)));
        let c = exp(m - m_new);
        let pr = select(vec4<f32>(0.0), exp(sc - m_new), vis);
        l = l * c + (pr.x + pr.y + pr.z + pr.w);
        m = m_new;
        let v0 = vb + min(s0, s_max) * p.v_tstride;
        let v1 = vb + min(s0 + 1u, s_max) * p.v_tstride;
        let v2 = vb + min(s0 + 2u, s_max) * p.v_tstride;
        let v3 = vb + min(s0 + 3u, s_max) * p.v_tstride;
        for (var d = 0u; d < HEAD_DIM; d++) {
            acc[d] = acc[d] * c + dot(pr, vec4<f32>(v[v0 + d], v[v1 + d], v[v2 + d], v[v3 + d]));
        }
    }

    // store: normalise; a row that sees no key gets 0 output and lse = NEG_BIG
    if (t >= p.q_len) {
        return;
    }
    let ob = p.o_off + b * p.o_bstride + t * p.o_tstride + h * HEAD_DIM;
    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var d = 0u; d < HEAD_DIM; d++) {
        out[ob + d] = acc[d] * inv;
    }
    lse[(b * p.n_head + h) * p.q_len + t] = select(NEG_BIG, m + log(l), l > 0.0);
}
