//! Every shader in `shaders/` parses, validates and translates with naga to SPIR-V (Vulkan), MSL
//! (Metal), HLSL (DX12) and GLSL ES 3.1 (GL), for every compute entry point with its override
//! constants at their defaults. This is how plumb proves Metal and DX12 without the hardware.
//! It runs on the CPU only: no adapter needed. It also fails if a .wgsl file is not registered.

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use std::path::Path;

fn collect(dir: &Path, base: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(&p, base, out);
        } else if p.extension().is_some_and(|x| x == "wgsl") {
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().replace('\\', "/"));
        }
    }
}

#[test]
fn every_shader_file_is_registered() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    files.sort();
    let registered: Vec<&str> = plumb::ops::all_shaders().iter().map(|s| s.path).collect();
    let missing: Vec<&String> = files.iter().filter(|f| !registered.contains(&f.as_str())).collect();
    assert!(missing.is_empty(), "shaders not registered in gpu::CORE_SHADERS or any op family's SHADERS: {missing:?}");
    let mut dup = registered.clone();
    dup.sort();
    dup.dedup();
    assert_eq!(dup.len(), registered.len(), "a shader is registered twice");
    assert!(!files.is_empty());
}

#[test]
fn every_shader_translates_to_all_backends() {
    let mut failures = Vec::new();
    let mut count = 0;
    for s in plumb::ops::all_shaders() {
        let module = match naga::front::wgsl::parse_str(s.source) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{}: parse: {}", s.path, e.emit_to_string(s.source)));
                continue;
            }
        };
        let uses_f16 = s.source.contains("enable f16");
        let uses_subgroups = s.source.contains("subgroup_invocation_id");
        let mut caps = if uses_f16 { Capabilities::SHADER_FLOAT16 } else { Capabilities::empty() };
        if uses_subgroups {
            caps |= Capabilities::SUBGROUP;
        }
        let mut validator = Validator::new(ValidationFlags::all(), caps);
        if uses_subgroups {
            validator
                .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
                .subgroup_operations(naga::valid::SubgroupOperationSet::all());
        }
        let info = match validator.validate(&module) {
            Ok(i) => i,
            Err(e) => {
                failures.push(format!("{}: validate: {}", s.path, e.emit_to_string(s.source)));
                continue;
            }
        };
        for ep in &module.entry_points {
            count += 1;
            let name = format!("{}#{}", s.path, ep.name);
            let constants = naga::back::PipelineConstants::default();
            let (m, i) = match naga::back::pipeline_constants::process_overrides(
                &module,
                &info,
                Some((ep.stage, &ep.name)),
                &constants,
            ) {
                Ok(x) => x,
                Err(e) => {
                    failures.push(format!("{name}: overrides: {e}"));
                    continue;
                }
            };
            let spv_opts = spv::Options::default();
            let spv_pipe = spv::PipelineOptions { shader_stage: ep.stage, entry_point: ep.name.clone() };
            if let Err(e) = spv::write_vec(&m, &i, &spv_opts, Some(&spv_pipe)) {
                failures.push(format!("{name}: SPIR-V: {e}"));
            }
            let msl_opts = msl::Options { lang_version: (2, 4), ..Default::default() };
            let msl_pipe = msl::PipelineOptions {
                entry_point: Some((ep.stage, ep.name.clone())),
                ..Default::default()
            };
            if let Err(e) = msl::write_string(&m, &i, &msl_opts, &msl_pipe) {
                failures.push(format!("{name}: MSL: {e}"));
            }
            let hlsl_opts = hlsl::Options { shader_model: hlsl::ShaderModel::V6_2, ..Default::default() };
            let hlsl_pipe = hlsl::PipelineOptions { entry_point: Some((ep.stage, ep.name.clone())) };
            let mut out = String::new();
            if let Err(e) = hlsl::Writer::new(&mut out, &hlsl_opts, &hlsl_pipe).write(&m, &i, None) {
                failures.push(format!("{name}: HLSL: {e}"));
            }
            // GL has no f16 and no subgroups in wgpu; such kernels are only used where
            // SHADER_F16 / SUBGROUP is reported.
            if !uses_f16 && !uses_subgroups {
                let glsl_opts = glsl::Options {
                    version: glsl::Version::Embedded { version: 310, is_webgl: false },
                    ..Default::default()
                };
                let glsl_pipe = glsl::PipelineOptions {
                    shader_stage: ep.stage,
                    entry_point: ep.name.clone(),
                    multiview: None,
                };
                let mut out = String::new();
                match glsl::Writer::new(&mut out, &m, &i, &glsl_opts, &glsl_pipe, Default::default()) {
                    Ok(mut w) => {
                        if let Err(e) = w.write() {
                            failures.push(format!("{name}: GLSL: {e}"));
                        }
                    }
                    Err(e) => failures.push(format!("{name}: GLSL: {e}")),
                }
            }
        }
    }
    println!("{count} entry points translated");
    assert!(count > 0);
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}
