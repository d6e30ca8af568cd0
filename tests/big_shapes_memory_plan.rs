//! The memory plan: its figures against the pool's measured peak for a real training step,
//! checkpointing lowering the planned activations, the binding check catching logits that
//! cannot fit, and running out of memory (a pool budget, `GpuOptions::max_memory`) as an error
//! that names the tensor, its size and the plan, never an abort.
mod common;
use plumb::model::memory::{plan, PlanOptions};
use plumb::model::{presets, Model};
use plumb::train::batch::StreamSource;
use plumb::train::sft::{self, SftConfig};
use plumb::{Error, Gpu, GpuOptions};

fn opts(b: usize, t: usize, ckpt: bool) -> PlanOptions {
    PlanOptions { batch_size: b, seq_len: t, lora_rank: None, checkpoint_activations: ckpt, stored_base: None }
}

#[test]
fn plan_is_close_to_the_measured_peak() {
    let Some(gpu) = common::gpu() else { return };
    let cfg = presets::resolve("gpt-nano").unwrap();
    let (b, t) = (8, 64);
    let model = Model::new(&gpu, &cfg, 1).unwrap();
    let text: Vec<u32> = (0..20_000u32).map(|i| (i * 7 + i / 13) % 256).collect();
    let src = StreamSource::from_tokens(text, 1, "synthetic");
    gpu.reset_peak();
    let run = SftConfig { batch_size: b, seq_len: t, steps: 2, eval_every: 0, ..SftConfig::default() };
    sft::train(&model, &src, None, &run).unwrap();
    let measured = gpu.peak_bytes();
    let p = plan(&cfg, &opts(b, t, false), gpu.max_binding_bytes(), None);
    println!("gpt-nano {b}x{t}: planned {} bytes, measured pool peak {measured} bytes\n{p}", p.total());
    // the pool rounds to size classes and caches freed buffers: allow a factor of two
    assert!(measured as f64 <= 2.0 * p.total() as f64 && measured as f64 >= 0.5 * p.total() as f64);
}

#[test]
fn plan_checks_bindings_and_budgets() {
    let gpt2 = plumb::model::ModelConfig::from_json(
        r#"{"model_type":"gpt2","vocab_size":50257,"n_positions":1024,"n_embd":768,"n_layer":12,"n_head":12}"#,
        std::path::Path::new("gpt2.json"),
    )
    .unwrap();
    // The chunked head never holds the (B·T, V) logits: 8 x 512 tokens fit one binding, only
    // the MLP's (B·T, 4C) activation of 16 x 1024 tokens does not.
    let fits = plan(&gpt2, &opts(8, 512, false), 128 << 20, Some(64 << 30));
    assert!(fits.problem().is_none(), "{fits}");
    assert!(!fits.to_string().contains(&format!("{}", 8 * 512 * 50257)), "no full logits: {fits}");
    let big = plan(&gpt2, &opts(16, 1024, false), 128 << 20, Some(64 << 30));
    assert!(big.problem().unwrap().contains("MLP"), "{big}");
    let small = plan(&gpt2, &opts(1, 64, false), 128 << 20, Some(64 << 30));
    assert!(small.problem().is_none(), "{small}");
    assert!(small.to_string().ends_with("fits"));
    let ckpt = plan(&gpt2, &opts(1, 64, true), 128 << 20, Some(64 << 30));
    assert!(ckpt.total() < small.total());
    let tight = plan(&gpt2, &opts(1, 64, false), 128 << 20, Some(1 << 30));
    assert!(tight.problem().unwrap().contains("available"), "{tight}");
}

#[test]
fn out_of_memory_names_the_tensor_its_size_and_the_plan() {
    if common::gpu().is_none() {
        return;
    }
    let mut o = GpuOptions::from_env().unwrap();
    o.max_memory = Some(1 << 20); // 1 MiB: the model fits, a batch of 16 x 64 does not
    let gpu = Gpu::with_options(&o).unwrap();
    let model = Model::new(&gpu, &presets::resolve("gpt-nano").unwrap(), 1).unwrap();
    let src = StreamSource::from_tokens((0..20_000u32).map(|i| i % 256).collect(), 1, "synthetic");
    let run = SftConfig { batch_size: 16, seq_len: 64, steps: 1, eval_every: 0, ..SftConfig::default() };
    let err = sft::train(&model, &src, None, &run).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, Error::OutOfMemory { .. }), "{msg}");
    assert!(msg.contains("out of GPU memory allocating `") && msg.contains(" bytes"), "{msg}");
    assert!(msg.contains("planned peak") && msg.contains("activations (16x64 tokens)"), "the plan is missing: {msg}");
}
