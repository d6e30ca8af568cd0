//! LoRA adapters on the real WGSL path, GPT-2 and Llama: the adapted projection's gradients by
//! finite differences; a fresh adapter changes nothing; training moves only the adapter (base
//! weights bit-identical, no base gradient, adapters-off logits equal the original model's);
//! the KV-cache path sees the adapter; merging reproduces the adapter model; PEFT-layout files
//! round-trip bit-exactly and a mismatched adapter is refused naming the tensor.
mod common;
use common::gradcheck::{run_table, Case, Input};
use plumb::lora::{self, LoraConfig};
use plumb::model::{presets, Model, ModelConfig};
use plumb::nn::conv1d;
use plumb::ops::elementwise::add;
use plumb::ops::loss::cross_entropy;
use plumb::ops::matmul::{self as mm, linear};
use plumb::ops::optim::{AdamW, AdamWConfig};
use plumb::weights::WeightFile;
use plumb::{Gpu, Tape, Tensor};

/// Base projection plus the LoRA update, in both weight layouts: Llama's linear (out, in) and
/// GPT-2's Conv1D (in, out) with bias. Gradients of x, A and B are checked, and of Conv1D's W
/// and bias where they are not frozen.
fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (rows, inp, r, out, s) in [(6, 7, 2, 5, 1.5f32), (9, 33, 3, 20, 2.0), (1, 4, 1, 3, 0.25)] {
        let lin = move |d: &[Vec<f64>]| {
            let base = mm::reference::linear(&d[0], &d[1], None, rows, inp, out);
            let delta = lora::reference::lora_delta(&d[0], &d[2], &d[3], (rows, inp, r, out), s as f64);
            base.iter().zip(delta).map(|(a, b)| a + b).collect()
        };
        cases.push(Case::new(
            format!("lora linear x [{rows}, {inp}] r {r} out {out}"),
            vec![Input::f(&[rows, inp]), Input::nograd(&[out, inp]), Input::f(&[r, inp]), Input::f(&[out, r])],
            move |v| add(&linear(&v[0], &v[1], None)?, &lora::lora_delta(&v[0], &v[2], &v[3], s)?),
            lin,
        ));
        // Conv1D's own weight and bias: frozen (as under LoRA) in one row, checked in the others.
        let base = |shape: &[usize]| if rows == 9 { Input::nograd(shape) } else { Input::f(shape) };
        let conv = move |d: &[Vec<f64>]| {
            let delta = lora::reference::lora_delta(&d[0], &d[2], &d[3], (rows, inp, r, out), s as f64);
            // x (rows, in) · W (in, out) + b
            (0..rows * out)
                .map(|k| {
                    let (i, o) = (k / out, k % out);
                    (0..inp).map(|j| d[0][i * inp + j] * d[1][j * out + o]).sum::<f64>() + d[4][o] + delta[k]
                })
                .collect()
        };
        cases.push(Case::new(
            format!("lora conv1d x [{rows}, {inp}] r {r} out {out}"),
            vec![Input::f(&[rows, inp]), base(&[inp, out]), Input::f(&[r, inp]), Input::f(&[out, r]), base(&[out])],
            move |v| add(&conv1d(&v[0], &v[1], &v[4])?, &lora::lora_delta(&v[0], &v[2], &v[3], s)?),
            conv,
        ));
    }
    cases
}

#[test]
fn lora_projection_gradients() {
    let Some(gpu) = common::gpu() else { return };
    run_table(&gpu, "lora", &cases());
}

/// A learnable fixed batch: ids (b, t) and next-token targets (b·t).
fn batch(gpu: &Gpu, b: usize, t: usize) -> (Tensor, Tensor) {
    let text: Vec<u32> = (0..b * (t + 1)).map(|i| (i as u32 * 7 + 3) % 23 + 97 + (i as u32).is_multiple_of(5) as u32).collect();
    let (mut ids, mut tg) = (vec![], vec![]);
    for r in 0..b {
        let row = &text[r * (t + 1)..(r + 1) * (t + 1)];
        ids.extend_from_slice(&row[..t]);
        tg.extend_from_slice(&row[1..]);
    }
    (Tensor::from_u32(gpu, &ids, &[b, t]).unwrap(), Tensor::from_u32(gpu, &tg, &[b * t]).unwrap())
}

fn logits(model: &Model, ids: &Tensor) -> Vec<f32> {
    model.forward(None, ids, None).unwrap().to_f32_vec().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The whole life of an adapter on one preset.
fn lifecycle(preset: &str) {
    let Some(gpu) = common::gpu() else { return };
    let cfg = presets::resolve(preset).unwrap();
    let mut model = Model::new(&gpu, &cfg, 0).unwrap();
    let (b, t, v) = (2, 12, model.vocab_size());
    let (ids, tg) = batch(&gpu, b, t);
    let original = logits(&model, &ids);
    let base_before = model.params().values().to_f32_vec().unwrap();

    // A bad target is refused by name; a fresh adapter is the identity.
    let bad = LoraConfig { target_modules: vec!["no_such_proj".into()], ..Default::default() };
    let e = model.add_lora(&bad, 1).unwrap_err().to_string();
    assert!(e.contains("no_such_proj"), "{e}");
    model.add_lora(&LoraConfig::default(), 1).unwrap();
    assert!(model.add_lora(&LoraConfig::default(), 1).is_err(), "a second adapter must be refused");
    let lora = model.lora().unwrap();
    let per_layer = if matches!(cfg, ModelConfig::Gpt(_)) { 4 } else { 7 };
    assert_eq!(lora.modules().len(), 2 * per_layer, "every projection of both layers is adapted");
    assert_eq!(model.trainable().numel(), lora.params.numel());
    assert!(model.trainable().numel() < model.params().numel() / 4);
    assert_eq!(logits(&model, &ids), original, "a fresh adapter (B = 0) must not change the logits");

    // Train the adapter alone on cross-entropy.
    let mut opt = AdamW::new(model.trainable(), AdamWConfig { weight_decay: 0.1, ..Default::default() }).unwrap();
    let mut losses = vec![];
    for _ in 0..25 {
        let tape = Tape::new();
        let loss = cross_entropy(&model.forward(Some(&tape), &ids, None).unwrap(), &tg, None).unwrap();
        tape.backward(&loss).unwrap();
        opt.step(model.trainable(), 1e-2).unwrap();
        model.trainable().zero_grad().unwrap();
        losses.push(loss.tensor().scalar().unwrap());
    }
    println!("{preset}: LoRA loss {:.3} -> {:.3}", losses[0], losses[losses.len() - 1]);
    // A random base with frozen embeddings plateaus near 4.9 nats; the adapter must win 0.3 of them.
    assert!(losses[losses.len() - 1] < losses[0] - 0.3, "{preset}: loss did not fall: {losses:?}");
    assert_eq!(model.params().values().to_f32_vec().unwrap(), base_before, "base weights must be bit-identical");
    assert!(model.params().grads().to_f32_vec().unwrap().iter().all(|&g| g == 0.0), "no gradient may reach the base weights");
    let adapted = logits(&model, &ids);
    assert!(max_diff(&adapted, &original) > 1e-2, "training must change the adapter model");
    model.set_adapters_enabled(false);
    assert_eq!(logits(&model, &ids), original, "adapters off: the original model, bit for bit");
    model.set_adapters_enabled(true);

    // Generation sees the adapter: the KV-cache path's last-token logits match the full pass.
    let mut caches = model.new_caches(b, t).unwrap();
    let cached = model.forward_cached(&ids, &mut caches, None).unwrap().to_f32_vec().unwrap();
    let last: Vec<f32> = (0..b).flat_map(|r| adapted[(r * t + t - 1) * v..(r * t + t) * v].to_vec()).collect();
    assert!(max_diff(&cached, &last) < 1e-4, "{preset}: cached vs full {}", max_diff(&cached, &last));

    // Save in PEFT's layout, load into a fresh copy of the base model: bit-exact.
    let dir = std::env::temp_dir().join(format!("plumb-lora-{preset}-{}", std::process::id()));
    model.save_lora(&dir).unwrap();
    check_peft_files(&dir, &cfg, model.lora().unwrap());
    let mut copy = Model::new(&gpu, &cfg, 0).unwrap();
    copy.load_lora(&dir).unwrap();
    assert_eq!(copy.lora().unwrap().params.read_all().unwrap(), model.lora().unwrap().params.read_all().unwrap());
    assert_eq!(copy.lora().unwrap().cfg, model.lora().unwrap().cfg);
    assert_eq!(logits(&copy, &ids), adapted);
    assert!(copy.load_lora(&dir).is_err(), "loading onto an attached adapter must be refused");

    // An adapter for another shape is refused, naming the tensor.
    let wider = match cfg.clone() {
        ModelConfig::Gpt(mut c) => {
            c.n_embd = 48;
            ModelConfig::Gpt(c)
        }
        ModelConfig::Llama(mut c) => {
            c.intermediate_size = 64;
            ModelConfig::Llama(c)
        }
    };
    let mut other = Model::new(&gpu, &wider, 0).unwrap();
    let e = other.load_lora(&dir).unwrap_err().to_string();
    assert!(e.contains("base_model.model.") && e.contains(".lora_") && e.contains("shape"), "{e}");
    assert!(other.lora().is_none());

    // Merge: the merged model computes what the adapter model did.
    model.merge_lora().unwrap();
    assert!(model.lora().is_none());
    let merged = logits(&model, &ids);
    assert!(max_diff(&merged, &adapted) < 1e-4, "{preset}: merged vs adapter {}", max_diff(&merged, &adapted));
    assert!(max_diff(&merged, &original) > 1e-2);
    std::fs::remove_dir_all(&dir).ok();
}

/// The two files are PEFT's: tensor names and shapes, and the config's fields.
fn check_peft_files(dir: &std::path::Path, cfg: &ModelConfig, lora: &plumb::lora::Lora) {
    let file = WeightFile::open(dir.join("adapter_model.safetensors")).unwrap();
    let (a, b, c, out, gpt) = match cfg {
        ModelConfig::Gpt(c) => ("transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj", c.n_embd, 3 * c.n_embd, true),
        ModelConfig::Llama(c) => ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", c.hidden_size, c.hidden_size, false),
    };
    assert_eq!(file.shape(&format!("base_model.model.{a}.lora_A.weight")), Some(vec![8, c]));
    assert_eq!(file.shape(&format!("base_model.model.{a}.lora_B.weight")), Some(vec![out, 8]));
    assert_eq!(file.shape(&format!("base_model.model.{b}.lora_B.weight")), Some(vec![c, 8]));
    assert_eq!(file.names().len(), 2 * lora.modules().len());
    assert!(file.names().iter().all(|n| n.starts_with("base_model.model.") && (n.ends_with(".lora_A.weight") || n.ends_with(".lora_B.weight"))));
    let text = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(j["peft_type"], "LORA");
    assert_eq!(j["task_type"], "CAUSAL_LM");
    assert_eq!(j["r"], 8);
    assert_eq!(j["lora_alpha"], 16.0);
    assert_eq!(j["fan_in_fan_out"], gpt);
    assert_eq!(j["bias"], "none");
    let targets: Vec<&str> = j["target_modules"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(targets, LoraConfig::default_targets(cfg));
}

#[test]
fn gpt_lora_lifecycle() {
    lifecycle("gpt-nano");
}

#[test]
fn llama_lora_lifecycle() {
    lifecycle("llama-nano");
}

/// One side (chosen or rejected) of a tiny preference set: ids (n, t), next-token labels (n·t),
/// a mask (n, t) that is 1 where the label is a completion token, and completion lengths (n).
struct Side {
    ids: Tensor,
    labels: Tensor,
    mask: Tensor,
    lens: Tensor,
}

fn side(gpu: &Gpu, rows: &[(&str, &str)], t: usize) -> Side {
    let (mut ids, mut labels, mut mask, mut lens) = (vec![], vec![], vec![], vec![]);
    for (prompt, completion) in rows {
        let seq: Vec<u32> = prompt.bytes().chain(completion.bytes()).map(u32::from).collect();
        assert!(seq.len() <= t);
        for p in 0..t {
            ids.push(seq.get(p).copied().unwrap_or(0));
            let label = seq.get(p + 1).copied();
            labels.push(label.unwrap_or(256)); // >= V: log-prob 0
            mask.push(if label.is_some() && p + 1 >= prompt.len() { 1.0 } else { 0.0 });
        }
        lens.push(completion.len() as f32);
    }
    let n = rows.len();
    Side {
        ids: Tensor::from_u32(gpu, &ids, &[n, t]).unwrap(),
        labels: Tensor::from_u32(gpu, &labels, &[n * t]).unwrap(),
        mask: Tensor::from_f32(gpu, &mask, &[n, t]).unwrap(),
        lens: Tensor::from_f32(gpu, &lens, &[n]).unwrap(),
    }
}

/// Sum of the completion tokens' log-probs per row: (n).
fn seq_logps(model: &Model, tape: Option<&Tape>, s: &Side) -> plumb::Var {
    use plumb::ops::{elementwise::mul, loss::token_logprobs, reduce::sum_last};
    let (n, t) = (s.ids.shape()[0], s.ids.shape()[1]);
    let lp = token_logprobs(&model.forward(tape, &s.ids, None).unwrap(), &s.labels).unwrap().reshape(&[n, t]).unwrap();
    sum_last(&mul(&lp, &plumb::Var::constant(s.mask.clone())).unwrap()).unwrap()
}

/// LoRA-DPO against full-parameter DPO from the same start on a tiny preference set: LoRA's
/// reference is the same model with its adapter off (checked equal to the start model's), only
/// adapter weights move, and both runs push the implicit reward margin up, in the same direction
/// of (chosen, rejected) log-prob change.
#[test]
fn lora_dpo_moves_only_adapters_and_matches_full_dpo_direction() {
    use plumb::ops::dpo::{dpo_loss, DpoConfig, DpoRunState};
    let Some(gpu) = common::gpu() else { return };
    let cfg = presets::resolve("gpt-nano").unwrap();
    let t = 20;
    let chosen = side(&gpu, &[("film: ", "great fun"), ("cast: ", "superb"), ("plot: ", "clever")], t);
    let rejected = side(&gpu, &[("film: ", "dull"), ("cast: ", "wooden acting"), ("plot: ", "a mess")], t);
    let full = Model::new(&gpu, &cfg, 0).unwrap();
    let mut lm = Model::new(&gpu, &cfg, 0).unwrap();
    lm.add_lora(&LoraConfig::default(), 1).unwrap();
    let sums = |m: &Model| (seq_logps(m, None, &chosen).to_f32_vec().unwrap(), seq_logps(m, None, &rejected).to_f32_vec().unwrap());
    let (rc0, rr0) = sums(&full);
    let (rc, rr) = (Tensor::from_f32(&gpu, &rc0, &[3]).unwrap(), Tensor::from_f32(&gpu, &rr0, &[3]).unwrap());
    let base_before = lm.params().values().to_f32_vec().unwrap();
    let adapter_before = lm.trainable().values().to_f32_vec().unwrap();
    let dpo = DpoConfig { beta: 0.5, ..Default::default() };
    let step = |m: &Model, opt: &mut AdamW, lr: f32, rc: &Tensor, rr: &Tensor| {
        let tape = Tape::new();
        let (pc, pr) = (seq_logps(m, Some(&tape), &chosen), seq_logps(m, Some(&tape), &rejected));
        let (loss, _) = dpo_loss(&pc, &pr, rc, rr, &chosen.lens, &rejected.lens, &dpo, DpoRunState::default()).unwrap();
        tape.backward(&loss).unwrap();
        opt.step(m.trainable(), lr).unwrap();
        m.trainable().zero_grad().unwrap();
    };
    let adamw = |m: &Model| AdamW::new(m.trainable(), AdamWConfig { weight_decay: 0.0, ..Default::default() }).unwrap();
    let (mut opt_full, mut opt_lora) = (adamw(&full), adamw(&lm));
    for _ in 0..5 {
        step(&full, &mut opt_full, 1e-3, &rc, &rr);
        // LoRA's reference: the same model with the adapter off, which is the start model.
        lm.set_adapters_enabled(false);
        let (lrc, lrr) = sums(&lm);
        lm.set_adapters_enabled(true);
        assert_eq!((&lrc, &lrr), (&rc0, &rr0), "adapters off must be the start model");
        let (lrc, lrr) = (Tensor::from_f32(&gpu, &lrc, &[3]).unwrap(), Tensor::from_f32(&gpu, &lrr, &[3]).unwrap());
        step(&lm, &mut opt_lora, 1e-2, &lrc, &lrr);
    }
    assert_eq!(lm.params().values().to_f32_vec().unwrap(), base_before, "LoRA-DPO must not touch base weights");
    assert_ne!(lm.trainable().values().to_f32_vec().unwrap(), adapter_before, "the adapter must move");

    // Change of (chosen, rejected) log-prob sums from the start, and the margins it implies.
    let delta = |m: &Model| {
        let (pc, pr) = sums(m);
        let d: Vec<f64> = pc.iter().zip(&rc0).chain(pr.iter().zip(&rr0)).map(|(p, r)| (p - r) as f64).collect();
        let margins: Vec<f64> = (0..3).map(|i| d[i] - d[3 + i]).collect();
        (d, margins)
    };
    let ((df, mf), (dl, ml)) = (delta(&full), delta(&lm));
    let dot: f64 = df.iter().zip(&dl).map(|(a, b)| a * b).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let cosine = dot / (norm(&df) * norm(&dl));
    println!("margins full {mf:.3?} lora {ml:.3?}; cosine of log-prob changes {cosine:.3}");
    assert!(mf.iter().all(|&m| m > 0.0), "full DPO must raise every margin: {mf:?}");
    assert!(ml.iter().all(|&m| m > 0.0), "LoRA-DPO must raise every margin: {ml:?}");
    assert!(cosine > 0.5, "LoRA and full DPO should move log-probs the same way: cosine {cosine}");
}

/// The SFT trainer with an adapter attached trains only the adapter, and a run killed after its
/// checkpoint resumes (adapter and its moments) to exactly the uninterrupted run's losses.
#[test]
fn lora_sft_trains_the_adapter_and_resumes_exactly() {
    use plumb::train::{batch::StreamSource, schedule::Schedule, sft};
    let Some(gpu) = common::gpu() else { return };
    let preset = presets::resolve("gpt-nano").unwrap();
    let text: Vec<u32> = b"the film was great fun. the cast was superb.\n".repeat(40).iter().map(|&b| b as u32).collect();
    let src = StreamSource::from_tokens(text, 5, "toy");
    let base = std::env::temp_dir().join(format!("plumb-lora-sft-{}", std::process::id()));
    let cfg = |steps: usize, out: &std::path::Path, resume: bool| sft::SftConfig {
        batch_size: 2,
        seq_len: 16,
        steps,
        schedule: Schedule { lr: 1e-2, warmup: 1, total: 6, min_lr: 1e-3 },
        eval_every: 0,
        save_every: 3,
        out_dir: Some(out.to_path_buf()),
        resume,
        seed: 5,
        ..sft::SftConfig::default()
    };
    let adapted = |adapter_seed: u64| {
        let mut m = Model::new(&gpu, &preset, 3).unwrap();
        m.add_lora(&LoraConfig::default(), adapter_seed).unwrap();
        m
    };
    let m = adapted(1);
    let before = m.params().read_all().unwrap();
    let full = sft::train(&m, &src, None, &cfg(6, &base.join("a"), false)).unwrap();
    assert_eq!(m.params().read_all().unwrap(), before, "SFT with an adapter must not touch base weights");
    assert!(full.losses[5] < full.losses[0], "{:?}", full.losses);
    let first = sft::train(&adapted(1), &src, None, &cfg(3, &base.join("b"), false)).unwrap();
    assert!(base.join("b/checkpoint-3/adapter_model.safetensors").exists());
    let m2 = adapted(9); // another adapter init: the checkpoint must win
    let rest = sft::train(&m2, &src, None, &cfg(6, &base.join("b"), true)).unwrap();
    let joined: Vec<f32> = first.losses.iter().chain(&rest.losses).copied().collect();
    assert_eq!(joined, full.losses, "resumed LoRA run differs from the uninterrupted one");
    assert_eq!(m2.lora().unwrap().params.read_all().unwrap(), m.lora().unwrap().params.read_all().unwrap());
    std::fs::remove_dir_all(&base).ok();
}
