// Fused attention for CPU adapters with 8-lane subgroups: the subgroup variants of
// forward.wgsl (forward), backward_dq.wgsl (backward_dq) and backward_dkv.wgsl (backward_dkv),
// with their inputs, outputs and math, keys (or query rows) taken eight at a time.
//
// Why: in the one-thread-per-row kernels every lane of an 8-lane SIMD vector fetches the same
// key texels (its neighbours' rows need the same keys), so each texel is gathered eight times.
// Here the 8 lanes of a subgroup are 8 neighbouring rows of one head; lane j fetches the texels
// of key (or query) row j of each block of eight and subgroupBroadcast hands them to the other
// lanes: one fetch per lane and chunk instead of eight. Rows are padded per head to whole
// subgroups (the padding lanes compute a copy of the last row and store nothing), and every
// loop bound is the subgroup's, so all lanes reach every broadcast. The host runs these only
// where subgroups are exactly 8 lanes of consecutive invocations (lavapipe) and q, k, v (and
// dout, row stats) are in textures (see textures.rs).
//
// One binding table for the three entry points; each binds only what it uses.

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
// Stands in for -infinity (as in forward.wgsl).
const NEG_BIG: f32 = -3.0e38;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var q_tex: texture_2d_array<f32>;
@group(0) @binding(2) var k_tex: texture_2d_array<f32>;
@group(0) @binding(3) var v_tex: texture_2d_array<f32>;
@group(0) @binding(4) var do_tex: texture_2d_array<f32>;
// (lse, D, -, -) of query row t of head h at texel (t, h) of layer b (backward_stats.wgsl).
@group(0) @binding(5) var st_tex: texture_2d_array<f32>;
@group(0) @binding(6) var<storage, read> key_mask: array<u32>;
// forward: out; backward_dq: dq; backward_dkv: dk
@group(0) @binding(7) var<storage, read_write> dst: array<vec4<f32>>;
// backward_dkv: dv
@group(0) @binding(8) var<storage, read_write> dv: array<vec4<f32>>;
// forward: lse
@group(0) @binding(9) var<storage, read_write> lse: array<f32>;

// Texel x of row `row` of layer b (x counts vec4s from the start of the token's row).
fn tex(t: texture_2d_array<f32>, b: u32, row: u32, x: u32) -> vec4<f32> {
    return textureLoad(t, vec2<u32>(x, row), b, 0);
}

// dot(y, the texel of lane j) for lanes 0-3 and 4-7.
fn dots_lo(y: vec4<f32>, v: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(dot(y, subgroupBroadcast(v, 0u)), dot(y, subgroupBroadcast(v, 1u)), dot(y, subgroupBroadcast(v, 2u)), dot(y, subgroupBroadcast(v, 3u)));
}
fn dots_hi(y: vec4<f32>, v: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(dot(y, subgroupBroadcast(v, 4u)), dot(y, subgroupBroadcast(v, 5u)), dot(y, subgroupBroadcast(v, 6u)), dot(y, subgroupBroadcast(v, 7u)));
}

// sum over lanes j of w_j * (the texel of lane j), with w = (lo, hi).
fn mix8(lo: vec4<f32>, hi: vec4<f32>, v: vec4<f32>) -> vec4<f32> {
    return lo.x * subgroupBroadcast(v, 0u) + lo.y * subgroupBroadcast(v, 1u) + lo.z * subgroupBroadcast(v, 2u) + lo.w * subgroupBroadcast(v, 3u)
        + hi.x * subgroupBroadcast(v, 4u) + hi.y * subgroupBroadcast(v, 5u) + hi.z * subgroupBroadcast(v, 6u) + hi.w * subgroupBroadcast(v, 7u);
}

// Bit j of `bits` for j = 0..3 (lo) or 4..7 (hi).
fn bits_lo(bits: u32) -> vec4<bool> {
    return ((vec4<u32>(bits) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u)) != vec4<u32>(0u);
}
fn bits_hi(bits: u32) -> vec4<bool> {
    return ((vec4<u32>(bits) >> vec4<u32>(4u, 5u, 6u, 7u)) & vec4<u32>(1u)) != vec4<u32>(0u);
}

// vec4 chunks per head row: a constant (unrolled) up to 32 dims, else from the uniform (see
// forward.wgsl).
fn chunks() -> u32 {
    return select(p.head_chunks, HEAD_DIM / 4u, HEAD_DIM <= 32u);
}

// The query row of invocation i (forward, backward_dq). Rows of each head are padded to a
// multiple of 8, so a subgroup never spans two heads; b >= batch marks a subgroup past the end.
struct QueryRow {
    // the padded row index, and the row it computes (the last real one for padding lanes)
    row: u32,
    t: u32,
    h: u32,
    b: u32,
    // this row's keys end at s_end, the subgroup's at s_hi
    s_end: u32,
    s_hi: u32,
}

fn query_row(i: u32) -> QueryRow {
    let padded = (p.q_len + 7u) & ~7u;
    let bh = i / padded;
    let row = i % padded;
    let t = min(row, p.q_len - 1u);
    let last = min((row & ~7u) + 7u, p.q_len - 1u);
    var s_end = p.kv_len;
    var s_hi = p.kv_len;
    if (p.causal != 0u) {
        s_end = min(s_end, p.q_offset + t + 1u);
        s_hi = min(s_hi, p.q_offset + last + 1u);
    }
    return QueryRow(row, t, bh % p.n_head, bh / p.n_head, s_end, s_hi);
}

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let q = query_row(gid.x + gid.y * nwg.x * 64u);
    if (q.b >= p.batch) {
        return; // whole subgroups only
    }
    let row = q.row;
    let t = q.t;
    let h = q.h;
    let b = q.b;
    let kvh = h / (p.n_head / p.n_kv_head);
    let dc = chunks();
    let s_end = q.s_end;
    let s_hi = q.s_hi;

    // load: the query row, pre-scaled; zero the accumulator
    var qr: array<vec4<f32>, 32>;
    var acc: array<vec4<f32>, 32>;
    let qx = (p.q_off + h * HEAD_DIM) / 4u;
    for (var c = 0u; c < dc; c++) {
        qr[c] = tex(q_tex, b, t, qx + c) * p.scale;
    }
    var m = NEG_BIG;
    var l = 0.0;
    let kx = (p.k_off + kvh * HEAD_DIM) / 4u;
    let vx = (p.v_off + kvh * HEAD_DIM) / 4u;

    for (var s0 = 0u; s0 < s_hi; s0 += 8u) {
        // this lane fetches key s0 + lane (clamped; masked below)
        let s = s0 + lane;
        let sl = min(s, p.kv_len - 1u);
        let ok = s < p.kv_len && (p.has_mask == 0u || key_mask[b * p.mask_stride + sl] != 0u);
        let bits = subgroupBallot(ok).x;
        // accumulate: scores of the eight keys
        var lo = vec4<f32>(0.0);
        var hi = vec4<f32>(0.0);
        for (var c = 0u; c < dc; c++) {
            let kv = tex(k_tex, b, sl, kx + c);
            lo += dots_lo(qr[c], kv);
            hi += dots_hi(qr[c], kv);
        }
        // online softmax: mask (padding, causality for this row), new max, rescale, probabilities
        let first = vec4<u32>(s0) + vec4<u32>(0u, 1u, 2u, 3u);
        let vis_lo = bits_lo(bits) & (first < vec4<u32>(s_end));
        let vis_hi = bits_hi(bits) & (first + vec4<u32>(4u) < vec4<u32>(s_end));
        let sc_lo = select(vec4<f32>(NEG_BIG), lo, vis_lo);
        let sc_hi = select(vec4<f32>(NEG_BIG), hi, vis_hi);
        let mx = max(sc_lo, sc_hi);
        let m_new = max(m, max(max(mx.x, mx.y), max(mx.z, mx.w)));
        let cr = exp(m - m_new);
        let p_lo = select(vec4<f32>(0.0), exp(sc_lo - m_new), vis_lo);
        let p_hi = select(vec4<f32>(0.0), exp(sc_hi - m_new), vis_hi);
        l = l * cr + dot(p_lo + p_hi, vec4<f32>(1.0));
        m = m_new;
        // accumulate: acc = acc * rescale + P V
        for (var c = 0u; c < dc; c++) {
            acc[c] = acc[c] * cr + mix8(p_lo, p_hi, tex(v_tex, b, sl, vx + c));
        }
    }

    // store: normalise; a row that sees no key gets 0 output and lse = NEG_BIG
    if (row >= p.q_len) {
        return;
    }
    let ob = (p.o_off + b * p.o_bstride + t * p.o_tstride + h * HEAD_DIM) / 4u;
    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var c = 0u; c < dc; c++) {
        dst[ob + c] = acc[c] * inv;
    }
    lse[(b * p.n_head + h) * p.q_len + t] = select(NEG_BIG, m + log(l), l > 0.0);
}

@compute @workgroup_size(64)
fn backward_dq(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let q = query_row(gid.x + gid.y * nwg.x * 64u);
    if (q.b >= p.batch) {
        return; // whole subgroups only
    }
    let row = q.row;
    let t = q.t;
    let h = q.h;
    let b = q.b;
    let kvh = h / (p.n_head / p.n_kv_head);
    let dc = chunks();
    let s_end = q.s_end;
    let s_hi = q.s_hi;

    // load: scaled q row, dout row, (lse, D); zero dq
    var qr: array<vec4<f32>, 32>;
    var dor: array<vec4<f32>, 32>;
    var kr: array<vec4<f32>, 32>;
    var acc: array<vec4<f32>, 32>;
    let qx = (p.q_off + h * HEAD_DIM) / 4u;
    let ox = (p.o_off + h * HEAD_DIM) / 4u;
    for (var c = 0u; c < dc; c++) {
        qr[c] = tex(q_tex, b, t, qx + c) * p.scale;
        dor[c] = tex(do_tex, b, t, ox + c);
    }
    let st = textureLoad(st_tex, vec2<u32>(t, h), b, 0).xy;
    let kx = (p.k_off + kvh * HEAD_DIM) / 4u;
    let vx = (p.v_off + kvh * HEAD_DIM) / 4u;

    for (var s0 = 0u; s0 < s_hi; s0 += 8u) {
        let s = s0 + lane;
        let sl = min(s, p.kv_len - 1u);
        let ok = s < p.kv_len && (p.has_mask == 0u || key_mask[b * p.mask_stride + sl] != 0u);
        let bits = subgroupBallot(ok).x;
        // accumulate: scores and dP of the eight keys (this lane's key texels kept for dq)
        var sc_lo = vec4<f32>(0.0);
        var sc_hi = vec4<f32>(0.0);
        var dp_lo = vec4<f32>(0.0);
        var dp_hi = vec4<f32>(0.0);
        for (var c = 0u; c < dc; c++) {
            kr[c] = tex(k_tex, b, sl, kx + c);
            let vv = tex(v_tex, b, sl, vx + c);
            sc_lo += dots_lo(qr[c], kr[c]);
            sc_hi += dots_hi(qr[c], kr[c]);
            dp_lo += dots_lo(dor[c], vv);
            dp_hi += dots_hi(dor[c], vv);
        }
        // P from the saved lse (0 where masked), dS = P (dP - D)
        let first = vec4<u32>(s0) + vec4<u32>(0u, 1u, 2u, 3u);
        let vis_lo = bits_lo(bits) & (first < vec4<u32>(s_end));
        let vis_hi = bits_hi(bits) & (first + vec4<u32>(4u) < vec4<u32>(s_end));
        let ds_lo = select(vec4<f32>(0.0), exp(sc_lo - st.x), vis_lo) * (dp_lo - st.y);
        let ds_hi = select(vec4<f32>(0.0), exp(sc_hi - st.x), vis_hi) * (dp_hi - st.y);
        // accumulate: dq += dS k
        for (var c = 0u; c < dc; c++) {
            acc[c] += mix8(ds_lo, ds_hi, kr[c]);
        }
    }

    // store: dq = scale * sum dS k, in q's layout
    if (row >= p.q_len) {
        return;
    }
    let gb = (p.q_off + b * p.q_bstride + t * p.q_tstride + h * HEAD_DIM) / 4u;
    for (var c = 0u; c < dc; c++) {
        dst[gb + c] = acc[c] * p.scale;
    }
}

@compute @workgroup_size(64)
fn backward_dkv(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    // key rows of each kv head padded to a multiple of 8
    let i = gid.x + gid.y * nwg.x * 64u;
    let padded = (p.kv_len + 7u) & ~7u;
    let bh = i / padded;
    if (bh >= p.batch * p.n_kv_head) {
        return; // whole subgroups only
    }
    let row = i % padded;
    let s = min(row, p.kv_len - 1u);
    let kvh = bh % p.n_kv_head;
    let b = bh / p.n_kv_head;
    let group = p.n_head / p.n_kv_head;
    let dc = chunks();
    // A padded key gets no gradient; causally only rows t >= s - q_offset see key s, and the
    // subgroup starts at its first key's first row.
    let key_ok = row < p.kv_len && (p.has_mask == 0u || key_mask[b * p.mask_stride + s] != 0u);
    let first_key = row & ~7u;
    var t_begin = 0u;
    if (p.causal != 0u && first_key > p.q_offset) {
        t_begin = first_key - p.q_offset;
    }

    // load: this key row and value row; zero the gradients
    var kr: array<vec4<f32>, 32>;
    var vr: array<vec4<f32>, 32>;
    var qa: array<vec4<f32>, 32>;
    var da: array<vec4<f32>, 32>;
    var gk: array<vec4<f32>, 32>;
    var gv: array<vec4<f32>, 32>;
    let kx = (p.k_off + kvh * HEAD_DIM) / 4u;
    let vx = (p.v_off + kvh * HEAD_DIM) / 4u;
    for (var c = 0u; c < dc; c++) {
        kr[c] = tex(k_tex, b, s, kx + c);
        vr[c] = tex(v_tex, b, s, vx + c);
    }

    for (var hi = 0u; hi < group; hi++) {
        let h = kvh * group + hi;
        let qx = (p.q_off + h * HEAD_DIM) / 4u;
        let ox = (p.o_off + h * HEAD_DIM) / 4u;
        for (var t0 = t_begin; t0 < p.q_len; t0 += 8u) {
            // this lane fetches query row t0 + lane (clamped; masked below)
            let tl = min(t0 + lane, p.q_len - 1u);
            let st = textureLoad(st_tex, vec2<u32>(tl, h), b, 0);
            // accumulate: scores and dP of the eight rows
            var sc_lo = vec4<f32>(0.0);
            var sc_hi = vec4<f32>(0.0);
            var dp_lo = vec4<f32>(0.0);
            var dp_hi = vec4<f32>(0.0);
            for (var c = 0u; c < dc; c++) {
                qa[c] = tex(q_tex, b, tl, qx + c);
                da[c] = tex(do_tex, b, tl, ox + c);
                sc_lo += dots_lo(kr[c], qa[c]);
                sc_hi += dots_hi(kr[c], qa[c]);
                dp_lo += dots_lo(vr[c], da[c]);
                dp_hi += dots_hi(vr[c], da[c]);
            }
            // each row's (lse, D) from its lane; visible: row exists and sees this key
            let lse_lo = vec4<f32>(subgroupBroadcast(st.x, 0u), subgroupBroadcast(st.x, 1u), subgroupBroadcast(st.x, 2u), subgroupBroadcast(st.x, 3u));
            let lse_hi = vec4<f32>(subgroupBroadcast(st.x, 4u), subgroupBroadcast(st.x, 5u), subgroupBroadcast(st.x, 6u), subgroupBroadcast(st.x, 7u));
            let d_lo = vec4<f32>(subgroupBroadcast(st.y, 0u), subgroupBroadcast(st.y, 1u), subgroupBroadcast(st.y, 2u), subgroupBroadcast(st.y, 3u));
            let d_hi = vec4<f32>(subgroupBroadcast(st.y, 4u), subgroupBroadcast(st.y, 5u), subgroupBroadcast(st.y, 6u), subgroupBroadcast(st.y, 7u));
            let rows_lo = vec4<u32>(t0) + vec4<u32>(0u, 1u, 2u, 3u);
            let rows_hi = rows_lo + vec4<u32>(4u);
            var vis_lo = rows_lo < vec4<u32>(p.q_len) & vec4<bool>(key_ok);
            var vis_hi = rows_hi < vec4<u32>(p.q_len) & vec4<bool>(key_ok);
            if (p.causal != 0u) {
                vis_lo &= vec4<u32>(s) <= vec4<u32>(p.q_offset) + rows_lo;
                vis_hi &= vec4<u32>(s) <= vec4<u32>(p.q_offset) + rows_hi;
            }
            let p_lo = select(vec4<f32>(0.0), exp(sc_lo * p.scale - lse_lo), vis_lo);
            let p_hi = select(vec4<f32>(0.0), exp(sc_hi * p.scale - lse_hi), vis_hi);
            let ds_lo = p_lo * (dp_lo - d_lo);
            let ds_hi = p_hi * (dp_hi - d_hi);
            // accumulate: dv += P dout, dk += dS q
            for (var c = 0u; c < dc; c++) {
                gv[c] += mix8(p_lo, p_hi, da[c]);
                gk[c] += mix8(ds_lo, ds_hi, qa[c]);
            }
        }
    }

    // store: dk = scale * sum dS q, dv = sum P dout, in k's and v's layouts
    if (row >= p.kv_len) {
        return;
    }
    let gkb = (p.k_off + b * p.k_bstride + s * p.k_tstride + kvh * HEAD_DIM) / 4u;
    let gvb = (p.v_off + b * p.v_bstride + s * p.v_tstride + kvh * HEAD_DIM) / 4u;
    for (var c = 0u; c < dc; c++) {
        dst[gkb + c] = gk[c] * p.scale;
        dv[gvb + c] = gv[c];
    }
}
