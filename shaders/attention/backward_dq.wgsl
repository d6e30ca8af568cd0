// Attention backward, dq, register variant. One thread per (batch, query head, query row), like
// the forward: it rebuilds each probability from the saved lse, P = exp(scale q.k - lse), takes
// dP = dout.v and dS = P (dP - D), and accumulates dq += dS k in a private array. No atomics: the
// thread owns its row. Keys stream four at a time with uniform addresses, as in forward.wgsl.

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

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> key_mask: array<u32>;
@group(0) @binding(5) var<storage, read> dout: array<f32>;
@group(0) @binding(6) var<storage, read> stats: array<vec2<f32>>;
@group(0) @binding(7) var<storage, read_write> dq: array<f32>;

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
fn backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let b = wid.z;
    let h = wid.y;
    let t_first = wid.x * WG;
    let t = t_first + li;
    let row = min(t, p.q_len - 1u);
    let t_last = min(t_first + WG, p.q_len) - 1u;
    let kvh = h / (p.n_head / p.n_kv_head);
    var s_end = p.kv_len;
    if (p.causal != 0u) {
        s_end = min(s_end, p.q_offset + t_last + 1u);
    }
    let s_max = p.kv_len - 1u;

    // load: scaled q row, dout row, (lse, D); zero dq
    var qr: array<f32, MAX_D>;
    var dor: array<f32, MAX_D>;
    var acc: array<f32, MAX_D>;
    let qb = p.q_off + b * p.q_bstride + row * p.q_tstride + h * HEAD_DIM;
    let ob = p.o_off + b * p.o_bstride + row * p.o_tstride + h * HEAD_DIM;
    for (var d = 0u; d < HEAD_DIM; d++) {
        qr[d] = q[qb + d] * p.scale;
        dor[d] = dout[ob + d];
        acc[d] = 0.0;
    }
    let st = stats[(b * p.n_head + h) * p.q_len + row];
    let kb = p.k_off + b * p.k_bstride + kvh * HEAD_DIM;
    let vb = p.v_off + b * p.v_bstride + kvh * HEAD_DIM;

    // accumulate: four keys per step; scores and dP, then dS, then dq += dS k
    for (var s0 = 0u; s0 < s_end; s0 += 4u) {
        let k0 = kb + min(s0, s_max) * p.k_tstride;
        let k1 = kb + min(s0 + 1u, s_max) * p.k_tstride;
        let k2 = kb + min(s0 + 2u, s_max) * p.k_tstride;
        let k3 = kb + min(s0 + 3u, s_max) * p.k_tstride;
        let v0 = vb + min(s0, s_max) * p.v_tstride;
        let v1 = vb + min(s0 + 1u, s_max) * p.v_tstride;
        let v2 = vb + min(s0 + 2u, s_max) * p.v_tstride;
        let v3 = vb + min(s0 + 3u, s_max) * p.v_tstride;
        var sc = vec4<f32>(0.0);
        var dp = vec4<f32>(0.0);
        for (var d = 0u; d < HEAD_DIM; d++) {
            sc += qr[d] * vec4<f32>(k[k0 + d], k[k1 + d], k[k2 + d], k[k3 + d]);
            dp += dor[d] * vec4<f32>(v[v0 + d], v[v1 + d], v[v2 + d], v[v3 + d]);
        }
        let vis = vec4<bool>(visible(b, s0, row), visible(b, s0 + 1u, row), visible(b, s0 + 2u, row), visible(b, s0 + 3u, row));
        let pr = select(vec4<f32>(0.0), exp(sc - st.x), vis);
        let ds = pr * (dp - st.y);
        for (var d = 0u; d < HEAD_DIM; d++) {
            acc[d] += dot(ds, vec4<f32>(k[k0 + d], k[k1 + d], k[k2 + d], k[k3 + d]));
        }
    }

    // store: dq = scale * sum dS k, in q's layout
    if (t >= p.q_len) {
        return;
    }
    let gb = p.q_off + b * p.q_bstride + t * p.q_tstride + h * HEAD_DIM;
    for (var d = 0u; d < HEAD_DIM; d++) {
        dq[gb + d] = acc[d] * p.scale;
    }
}
