// KV cache append: copies new key and value rows (B, T_new, Hkv, D), each read through its own
// (offset, token stride, batch stride) so they may sit inside a fused qkv buffer, into the cache
// buffers (B, S_max, Hkv, D) at positions pos..pos+T_new. One thread per element.

struct Params {
    batch: u32,
    t_new: u32,
    row: u32,
    pos: u32,
    cache_bstride: u32,
    k_off: u32,
    k_tstride: u32,
    k_bstride: u32,
    v_off: u32,
    v_tstride: u32,
    v_bstride: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(2) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(3) var<storage, read> k_new: array<f32>;
@group(0) @binding(4) var<storage, read> v_new: array<f32>;

@compute @workgroup_size(256)
fn append(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.batch * p.t_new * p.row) {
        return;
    }
    let j = i % p.row;
    let t = (i / p.row) % p.t_new;
    let b = i / (p.row * p.t_new);
    let dst = b * p.cache_bstride + (p.pos + t) * p.row + j;
    k_cache[dst] = k_new[p.k_off + b * p.k_bstride + t * p.k_tstride + j];
    v_cache[dst] = v_new[p.v_off + b * p.v_bstride + t * p.v_tstride + j];
}
