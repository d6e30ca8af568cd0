//! The kernel registry and the pipeline cache.
//!
//! Every `.wgsl` file under `shaders/` is embedded with [`shader!`](crate::shader) by the op family
//! that uses it and listed in that family's `SHADERS`; [`all_shaders`] gathers them, and a test
//! fails if a file in `shaders/` is missing from it. Pipelines are cached by
//! (shader, entry point, override constants), never by tensor sizes: sizes travel in a uniform.

use super::Gpu;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One embedded WGSL file.
#[derive(Debug)]
pub struct ShaderSource {
    /// Path relative to `shaders/`, e.g. `"matmul/matmul_register.wgsl"`.
    pub path: &'static str,
    /// The WGSL text.
    pub source: &'static str,
}

/// Embed `shaders/<path>` as a [`ShaderSource`].
#[macro_export]
macro_rules! shader {
    ($path:literal) => {
        $crate::gpu::ShaderSource {
            path: $path,
            source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $path)),
        }
    };
}

/// Every shader plumb ships, across all op families.
pub fn all_shaders() -> Vec<&'static ShaderSource> {
    crate::ops::SHADER_FAMILIES.iter().flat_map(|f| f.iter().copied()).collect()
}

/// One compute entry point with its pipeline-override constants.
#[derive(Clone, Copy, Debug)]
pub struct Kernel<'a> {
    pub shader: &'static ShaderSource,
    pub entry: &'static str,
    /// WGSL `override` constants (tile sizes, flags). Part of the cache key.
    pub constants: &'a [(&'static str, f64)],
}

impl<'a> Kernel<'a> {
    /// A kernel without override constants.
    pub const fn new(shader: &'static ShaderSource, entry: &'static str) -> Kernel<'static> {
        Kernel { shader, entry, constants: &[] }
    }
    /// The same kernel with override constants.
    pub fn with(self, constants: &'a [(&'static str, f64)]) -> Kernel<'a> {
        Kernel { constants, ..self }
    }
}

pub(crate) struct CachedPipeline {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
}

#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<&'static str, Arc<wgpu::ShaderModule>>>,
    pipelines: Mutex<HashMap<String, Arc<CachedPipeline>>>,
}

fn key(k: &Kernel) -> String {
    let mut s = format!("{}#{}", k.shader.path, k.entry);
    for (n, v) in k.constants {
        s.push_str(&format!(";{n}={v}"));
    }
    s
}

impl Gpu {
    /// The compiled pipeline for `k`, compiling it on first use.
    pub(crate) fn pipeline(&self, k: &Kernel) -> Result<Arc<CachedPipeline>> {
        let cache = &self.0.pipelines;
        let key = key(k);
        if let Some(p) = cache.pipelines.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(p.clone());
        }
        let device = &self.0.device;
        let module = {
            let mut mods = cache.modules.lock().unwrap_or_else(|e| e.into_inner());
            match mods.get(k.shader.path) {
                Some(m) => m.clone(),
                None => {
                    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
                    let m = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(k.shader.path),
                        source: wgpu::ShaderSource::Wgsl(k.shader.source.into()),
                    });
                    if let Some(e) = pollster::block_on(scope.pop()) {
                        return Err(Error::Gpu { context: format!("shader {}", k.shader.path), msg: e.to_string() });
                    }
                    let m = Arc::new(m);
                    mods.insert(k.shader.path, m.clone());
                    m
                }
            }
        };
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&key),
            layout: None,
            module: &module,
            entry_point: Some(k.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: k.constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu { context: format!("pipeline {key}"), msg: e.to_string() });
        }
        let layout = pipeline.get_bind_group_layout(0);
        let p = Arc::new(CachedPipeline { pipeline, layout });
        cache.pipelines.lock().unwrap_or_else(|e| e.into_inner()).insert(key, p.clone());
        Ok(p)
    }

    /// Number of compiled pipelines (for tests that check caching).
    pub fn pipeline_count(&self) -> usize {
        self.0.pipelines.pipelines.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
