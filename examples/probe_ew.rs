use plumb::gpu::{Kernel, ShaderSource};
use plumb::*;
use std::time::Instant;

const SRC4: &str = r#"
struct Params { n: u32, a: f32, b: f32, _pad: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> y: array<vec4<f32>>;
override WG: u32 = 256u;
override PER: u32 = 1u;
@compute @workgroup_size(WG)
fn vec4k(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n4 = p.n / 4u;
    for (var j = 0u; j < PER; j++) {
        let i = gid.x * PER + j;
        if (i < n4) { out[i] = p.a * x[i] + p.b * y[i]; }
    }
}
@compute @workgroup_size(WG)
fn vec4s(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n4 = p.n / 4u;
    let stride = nwg.x * WG;
    for (var i = gid.x; i < n4; i += stride) {
        out[i] = p.a * x[i] + p.b * y[i];
    }
}
"#;
const SRC: &str = r#"
struct Params { n: u32, a: f32, b: f32, _pad: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> y: array<f32>;
override WG: u32 = 256u;
override PER: u32 = 1u;
@compute @workgroup_size(WG)
fn scalar(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.n) { return; }
    out[i] = p.a * x[i] + p.b * y[i];
}
"#;

fn main() {
    let gpu = Gpu::new().unwrap();
    let src: &'static ShaderSource = Box::leak(Box::new(ShaderSource { path: "probe.wgsl", source: SRC }));
    let src4: &'static ShaderSource = Box::leak(Box::new(ShaderSource { path: "probe4.wgsl", source: SRC4 }));
    let n: usize = std::env::var("N").map(|v| v.parse().unwrap()).unwrap_or(131072);
    let r: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let x = Tensor::from_f32(&gpu, &r, &[n]).unwrap();
    let y = Tensor::from_f32(&gpu, &r, &[n]).unwrap();
    let o = Tensor::from_f32(&gpu, &r, &[n]).unwrap();
    #[repr(C)]
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    struct P { n: u32, a: f32, b: f32, _p: u32 }
    let p = P { n: n as u32, a: 1.0, b: 2.0, _p: 0 };
    let cases: Vec<(&str, f64, f64, u32)> = vec![
        ("scalar", 256.0, 1.0, (n / 256) as u32),
        ("scalar", 64.0, 1.0, (n / 64) as u32),
        ("vec4k", 256.0, 1.0, (n / 4 / 256) as u32),
        ("vec4k", 64.0, 1.0, (n / 4 / 64) as u32),
        ("vec4k", 64.0, 4.0, (n / 16 / 64) as u32),
        ("vec4k", 64.0, 16.0, (n / 64 / 64) as u32),
        ("vec4s", 64.0, 1.0, 16),
        ("vec4s", 64.0, 1.0, 64),
        ("vec4s", 8.0, 1.0, 64),
        ("vec4s", 32.0, 1.0, 32),
    ];
    for (entry, wg, per, groups) in cases {
        let consts = [("WG", wg), ("PER", per)];
        let k = Kernel::new(if entry == "scalar" { src } else { src4 }, if entry == "scalar" { "scalar" } else if entry == "vec4k" { "vec4k" } else { "vec4s" }).with(&consts);
        let run = || {
            for _ in 0..50 {
                gpu.dispatch(&k, bytemuck::bytes_of(&p), &if entry == "scalar" { [o.binding(), x.binding(), y.binding()] } else { [o.binding_vec4(), x.binding_vec4(), y.binding_vec4()] }, [groups, 1, 1]).unwrap();
            }
            o.view(0, &[1]).unwrap().scalar().unwrap();
        };
        run();
        let t = Instant::now();
        run();
        println!("{entry} wg {wg} per {per} groups {groups}: {:.3} ms/dispatch", t.elapsed().as_secs_f64() * 1e3 / 50.0);
    }
}
