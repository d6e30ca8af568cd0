// Copies a (B, rows, width) stretch of a buffer into an rgba32float array texture: texel
// (x, dst_row0 + y) of layer b = the four elements from b * bstride + (row0 + y) * tstride +
// src_off + 4x. The register attention kernels read sequences from such textures because
// CPU drivers fetch texels with vector gathers, far cheaper than their storage-buffer loads, and
// each key row is read once per query row. One thread per texel.

struct Params {
    batch: u32,
    rows: u32,
    width: u32,
    row0: u32,
    tstride: u32,
    bstride: u32,
    dst_row0: u32,
    src_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var dst: texture_storage_2d_array<rgba32float, write>;
@group(0) @binding(2) var<storage, read> src: array<vec4<f32>>;

@compute @workgroup_size(64)
fn pack(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.batch * p.rows * p.width) {
        return;
    }
    let x = i % p.width;
    let y = (i / p.width) % p.rows;
    let b = i / (p.width * p.rows);
    textureStore(dst, vec2<u32>(x, p.dst_row0 + y), b, src[(b * p.bstride + (p.row0 + y) * p.tstride + p.src_off) / 4u + x]);
}
