// Fused multi-head attention, forward, workgroup-memory variant (real GPUs). Same algorithm as
// forward.wgsl (one thread per (batch, query head, query row), online softmax over four keys per
// step, no T x S matrix), but the workgroup first stages a tile of TILE_K key and value rows in
// workgroup memory, so each row is read from global memory once per workgroup rather than once
// per thread. Barriers sit in uniform control flow: every thread walks every tile.

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
override WG: u32 = 64u;
const MAX_D: u32 = 128u;
// 12 keys: both tiles plus the mask bits stay within WebGPU's default 16 KiB of workgroup memory.
const TILE_K: u32 = 12u;
const NEG_BIG: f32 = -3.0e38;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> key_mask: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;

var<workgroup> k_tile: array<f32, 1536>; // TILE_K * MAX_D
var<workgroup> v_tile: array<f32, 1536>;
var<workgroup> ok_tile: array<u32, 12>; // TILE_K: key inside kv_len and not padding

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
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
    let limit = select(0xffffffffu, p.q_offset + row, p.causal != 0u);

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

    for (var tile0 = 0u; tile0 < s_end; tile0 += TILE_K) {
        // load: the workgroup copies TILE_K key and value rows (clamped to kv_len) and their mask bits
        for (var i = li; i < TILE_K * HEAD_DIM; i += WG) {
            let s = min(tile0 + i / HEAD_DIM, s_max);
            let d = i % HEAD_DIM;
            k_tile[i] = k[kb + s * p.k_tstride + d];
            v_tile[i] = v[vb + s * p.v_tstride + d];
        }
        if (li < TILE_K) {
            let s = tile0 + li;
            var ok = s < p.kv_len;
            if (p.has_mask != 0u) {
                ok = ok && key_mask[b * p.mask_stride + min(s, s_max)] != 0u;
            }
            ok_tile[li] = u32(ok);
        }
        // barrier: the tile is complete
        workgroupBarrier();
        // accumulate: four keys per step; scores, new running max, rescale, add p * v
        for (var j = 0u; j < TILE_K; j += 4u) {
            let base = j * HEAD_DIM;
            var sc = vec4<f32>(0.0);
            for (var d = 0u; d < HEAD_DIM; d++) {
                sc += qr[d] * vec4<f32>(k_tile[base + d], k_tile[base + HEAD_DIM + d], k_tile[base + 2u * HEAD_DIM + d], k_tile[base + 3u * HEAD_DIM + d]);
            }
            let s = tile0 + j;
            let ok = vec4<u32>(ok_tile[j], ok_tile[j + 1u], ok_tile[j + 2u], ok_tile[j + 3u]) != vec4<u32>(0u);
            let vis = ok & (vec4<u32>(s, s + 1u, s + 2u, s + 3u) <= vec4<u32>(limit));
            sc = select(vec4<f32>(NEG_BIG), sc, vis);
            let m_new = max(m, max(max(sc.x, sc.y), max(sc.z, sc.w)));
            let c = exp(m - m_new);
            let pr = select(vec4<f32>(0.0), exp(sc - m_new), vis);
            l = l * c + (pr.x + pr.y + pr.z + pr.w);
            m = m_new;
            for (var d = 0u; d < HEAD_DIM; d++) {
                acc[d] = acc[d] * c + dot(pr, vec4<f32>(v_tile[base + d], v_tile[base + HEAD_DIM + d], v_tile[base + 2u * HEAD_DIM + d], v_tile[base + 3u * HEAD_DIM + d]));
            }
        }
        // barrier: everyone is done with the tile before it is overwritten
        workgroupBarrier();
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
