//! The kernel registry and the pipeline cache.
//!
//! Every `.wgsl` file under `shaders/` is embedded with [`shader!`](crate::shader) by the code that
//! uses it: the core's own kernels (`shaders/core/`) are listed in [`CORE_SHADERS`], each op
//! family lists its own in its `SHADERS`, and `ops::all_shaders` gathers both (a test fails if a
//! file in `shaders/` is missing). The cache needs no registry: a [`Kernel`] carries its
//! source, so families add shaders without the core naming them. Pipelines are cached by
//! (shader, entry point, override constants), never by tensor sizes: sizes travel in a uniform.
//!
//! Compiling is the cold start: on lavapipe a large register-tiled matmul pipeline takes ~0.4 s
//! even with Mesa's shader cache warm. So an op that knows which kernels come next (a layer's
//! forward knows its backward's products) can [`Gpu::prefetch_pipeline`] them: they compile on
//! a background thread while the step goes on recording, and [`Gpu::pipeline`] waits for a
//! compile in flight instead of starting a second one.

use super::Gpu;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

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

/// The engine core's own shaders (`shaders/core/`); op families list theirs beside them.
pub static CORE_SHADERS: &[&ShaderSource] = &[&super::linear::LINEAR, &super::texture::TEXTURE_PACK];

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

/// A pipeline compiled or being compiled (by whichever thread asked first); errors as text.
type PipelineCell = Arc<OnceLock<std::result::Result<Arc<CachedPipeline>, String>>>;
/// A prefetch for the background compile thread.
type CompileJob = Box<dyn FnOnce(&Gpu) + Send>;

#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<&'static str, Arc<wgpu::ShaderModule>>>,
    pipelines: Mutex<HashMap<String, PipelineCell>>,
    /// The background compile thread's queue, started by the first prefetch.
    worker: Mutex<Option<std::sync::mpsc::Sender<CompileJob>>>,
}

fn key(k: &Kernel) -> String {
    let mut s = format!("{}#{}", k.shader.path, k.entry);
    for (n, v) in k.constants {
        s.push_str(&format!(";{n}={v}"));
    }
    s
}

impl Gpu {
    /// The compiled pipeline for `k`, compiling it on first use (or waiting for a background
    /// compile of it that is in flight).
    pub(crate) fn pipeline(&self, k: &Kernel) -> Result<Arc<CachedPipeline>> {
        let key = key(k);
        let cell = self.pipeline_cell(&key).0;
        cell.get_or_init(|| self.compile(k, &key).map_err(|e| e.to_string()))
            .clone()
            .map_err(|msg| Error::Gpu { context: format!("pipeline {key}"), msg })
    }

    /// Start compiling `shader`'s `entry` with `constants` on a background thread, unless it is
    /// compiled or compiling already; a later [`Gpu::pipeline`] for it waits for the result.
    pub fn prefetch_pipeline(&self, shader: &'static ShaderSource, entry: &'static str, constants: Vec<(&'static str, f64)>) {
        let key = key(&Kernel { shader, entry, constants: &constants });
        let (cell, new) = self.pipeline_cell(&key);
        if !new {
            return;
        }
        let job: CompileJob = Box::new(move |gpu: &Gpu| {
            let k = Kernel { shader, entry, constants: &constants };
            cell.get_or_init(|| gpu.compile(&k, &key).map_err(|e| e.to_string()));
        });
        let mut worker = self.0.pipelines.worker.lock().unwrap_or_else(|e| e.into_inner());
        if worker.is_none() {
            // One background thread: each LLVM compile holds ~100 MiB at its peak, so more
            // at once would cost memory for little time on a machine with few cores. It holds
            // the device weakly and ends with it.
            let (tx, rx) = std::sync::mpsc::channel::<CompileJob>();
            let weak = Arc::downgrade(&self.0);
            let spawned = std::thread::Builder::new().name("plumb compile".into()).spawn(move || {
                while let Ok(job) = rx.recv() {
                    let Some(inner) = weak.upgrade() else { return };
                    job(&Gpu(inner));
                }
            });
            // Without the thread, a prefetched pipeline simply compiles when it is first used.
            if spawned.is_ok() {
                *worker = Some(tx);
            }
        }
        if let Some(tx) = worker.as_ref() {
            let _ = tx.send(job);
        }
    }

    /// The cache cell for `key`, and whether it was just created.
    fn pipeline_cell(&self, key: &str) -> (PipelineCell, bool) {
        let mut map = self.0.pipelines.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(key) {
            Some(c) => (c.clone(), false),
            None => {
                let c: PipelineCell = Arc::new(OnceLock::new());
                map.insert(key.to_string(), c.clone());
                (c, true)
            }
        }
    }

    fn compile(&self, k: &Kernel, key: &str) -> Result<Arc<CachedPipeline>> {
        let cache = &self.0.pipelines;
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
            label: Some(key),
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
        release_compiler_memory();
        Ok(Arc::new(CachedPipeline { pipeline, layout }))
    }

    /// Number of pipelines compiled or compiling (for tests that check caching).
    pub fn pipeline_count(&self) -> usize {
        self.0.pipelines.pipelines.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The pipelines compiled or compiling, as `shader path#entry;CONSTANT=value...`, sorted
    /// (tests check which kernel variants a device ran).
    pub fn pipeline_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.0.pipelines.pipelines.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        keys.sort();
        keys
    }
}

/// Hand the memory a driver's compiler freed back to the system. lavapipe's LLVM allocates
/// tens of MiB per large pipeline and glibc keeps freed blocks in per-thread arenas, which
/// held a W2 training process ~100 MiB above what it uses (measured); trimming after each
/// compile costs about a millisecond.
fn release_compiler_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("PLUMB_NO_TRIM").is_none() {
        // SAFETY: malloc_trim only returns free heap memory to the system; it has no
        // preconditions and is thread-safe.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
