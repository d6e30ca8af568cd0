// Attention backward, dk and dv, register variant. One thread per (batch, kv head, key row): it
// holds its k and v rows and both gradients in private arrays and walks every query row that can
// see its key, for each query head that shares its kv head (grouped-query attention), rebuilding
// P = exp(scale q.k - lse) and dS = P (dout.v - D). dv += P dout, dk += dS q. No atomics: the
// thread owns its key row. Query rows stream four at a time with uniform addresses.

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
@group(0) @binding(7) var<storage, read_write> dk: array<f32>;
@group(0) @binding(8) var<storage, read_write> dv: array<f32>;

// Whether query row t sees key s, for a key that passed the padding mask.
fn sees(s: u32, t: u32) -> bool {
    return t < p.q_len && (p.causal == 0u || s <= p.q_offset + t);
}

@compute @workgroup_size(WG)
fn backward_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let b = wid.z;
    let kvh = wid.y;
    let s_first = wid.x * WG;
    let s = s_first + li;
    let key = min(s, p.kv_len - 1u);
    let group = p.n_head / p.n_kv_head;
    var key_ok = s < p.kv_len;
    if (p.has_mask != 0u) {
        key_ok = key_ok && key_mask[b * p.mask_stride + key] != 0u;
    }
    // The first query row that sees any key of this workgroup: one bound for all threads.
    var t_begin = 0u;
    if (p.causal != 0u && s_first > p.q_offset) {
        t_begin = s_first - p.q_offset;
    }
    let t_max = p.q_len - 1u;

    // load: scaled k row, v row; zero dk, dv
    var kr: array<f32, MAX_D>;
    var vr: array<f32, MAX_D>;
    var gk: array<f32, MAX_D>;
    var gv: array<f32, MAX_D>;
    let kb = p.k_off + b * p.k_bstride + key * p.k_tstride + kvh * HEAD_DIM;
    let vb = p.v_off + b * p.v_bstride + key * p.v_tstride + kvh * HEAD_DIM;
    for (var d = 0u; d < HEAD_DIM; d++) {
        kr[d] = k[kb + d] * p.scale;
        vr[d] = v[vb + d];
        gk[d] = 0.0;
        gv[d] = 0.0;
    }

    // accumulate: every query head of the group, four query rows per step
    for (var hi = 0u; hi < group; hi++) {
        let h = kvh * group + hi;
        let qb = p.q_off + b * p.q_bstride + h * HEAD_DIM;
        let ob = p.o_off + b * p.o_bstride + h * HEAD_DIM;
        let sb = (b * p.n_head + h) * p.q_len;
        for (var t0 = t_begin; t0 < p.q_len; t0 += 4u) {
            let r0 = min(t0, t_max);
            let r1 = min(t0 + 1u, t_max);
            let r2 = min(t0 + 2u, t_max);
            let r3 = min(t0 + 3u, t_max);
            let q0 = qb + r0 * p.q_tstride;
            let q1 = qb + r1 * p.q_tstride;
            let q2 = qb + r2 * p.q_tstride;
            let q3 = qb + r3 * p.q_tstride;
            let o0 = ob + r0 * p.o_tstride;
            let o1 = ob + r1 * p.o_tstride;
            let o2 = ob + r2 * p.o_tstride;
            let o3 = ob + r3 * p.o_tstride;
            var sc = vec4<f32>(0.0);
            var dp = vec4<f32>(0.0);
            for (var d = 0u; d < HEAD_DIM; d++) {
                sc += kr[d] * vec4<f32>(q[q0 + d], q[q1 + d], q[q2 + d], q[q3 + d]);
                dp += vr[d] * vec4<f32>(dout[o0 + d], dout[o1 + d], dout[o2 + d], dout[o3 + d]);
            }
            let st0 = stats[sb + r0];
            let st1 = stats[sb + r1];
            let st2 = stats[sb + r2];
            let st3 = stats[sb + r3];
            let vis = vec4<bool>(sees(s, t0), sees(s, t0 + 1u), sees(s, t0 + 2u), sees(s, t0 + 3u)) & vec4<bool>(key_ok);
            let pr = select(vec4<f32>(0.0), exp(sc - vec4<f32>(st0.x, st1.x, st2.x, st3.x)), vis);
            let ds = pr * (dp - vec4<f32>(st0.y, st1.y, st2.y, st3.y));
            for (var d = 0u; d < HEAD_DIM; d++) {
                gv[d] += dot(pr, vec4<f32>(dout[o0 + d], dout[o1 + d], dout[o2 + d], dout[o3 + d]));
                gk[d] += dot(ds, vec4<f32>(q[q0 + d], q[q1 + d], q[q2 + d], q[q3 + d]));
            }
        }
    }

    // store: dk = scale * sum dS q, dv = sum P dout, in k's and v's layouts
    if (s >= p.kv_len) {
        return;
    }
    let gkb = p.k_off + b * p.k_bstride + s * p.k_tstride + kvh * HEAD_DIM;
    let gvb = p.v_off + b * p.v_bstride + s * p.v_tstride + kvh * HEAD_DIM;
    for (var d = 0u; d < HEAD_DIM; d++) {
        dk[gkb + d] = gk[d] * p.scale;
        dv[gvb + d] = gv[d];
    }
}
