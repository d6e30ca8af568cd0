// Fill an operand texture from a buffer inside the compute pass: texel (i mod W, i / W) = vec4
// number i of the source (from vec4 `offset` on), W = 2^shift. For small operands on CPU
// adapters, where a buffer-to-texture copy would end the open compute pass (~60 us on lavapipe,
// more than packing a few thousand texels here costs). One thread per texel.

struct Params {
    // vec4s to pack
    n: u32,
    // log2 of the texture's width in texels
    shift: u32,
    // first vec4 of the source
    offset: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var dst: texture_storage_2d<rgba32float, write>;
@group(0) @binding(2) var<storage, read> src: array<vec4<f32>>;

@compute @workgroup_size(64)
fn pack(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= p.n) { return; }
    textureStore(dst, vec2<u32>(i & ((1u << p.shift) - 1u), i >> p.shift), src[p.offset + i]);
}
