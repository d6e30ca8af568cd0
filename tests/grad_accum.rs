//! Gradient accumulation in the one training loop, on the real WGSL path.
//!
//! 1. Equivalence: where a method's loss is a mean over its batch's items (SFT on equal-length
//!    rows, the reward model, DPO with bco_pair's running mean, KTO's apo_zero_unpaired), a run
//!    of 2 micro-batches of 2 gives the losses, metrics, gradient norms and weights of a run of
//!    1 batch of 4, up to summation order. The micro-batches of step s are the run's batches
//!    2s and 2s + 1, which hold the items of the big batch s split in order. (GRPO and RLOO are
//!    not here: each micro-batch samples its own completions, so they are no split of one big
//!    rollout; they are in the resume checks below.)
//! 2. Exact resume with accumulation: a run with grad_accum 2 killed after step 3 and resumed
//!    from its checkpoint of step 2 gives the uninterrupted run's losses and final checkpoint,
//!    bit for bit (DPO, PPO with accumulation inside each minibatch update, GRPO), as
//!    tests/resume_methods.rs does without accumulation.
mod common;
use common::resume::{checkpoint_files, losses, run_dir};
use plumb::align::{Completion, Dpo, DpoTrainConfig, Grpo, GrpoConfig, Kto, KtoTrainConfig, Ppo, PpoConfig, Reference, Reward, RewardConfig, RewardModel, Rewards, RolloutConfig, TrainConfig};
use plumb::model::{presets, Model};
use plumb::ops::dpo::{DpoConfig, DpoLoss};
use plumb::ops::kto::{KtoConfig, KtoLoss};
use plumb::ops::optim::AdamWConfig;
use plumb::train::batch::{mix, BatchSource, LmBatch};
use plumb::train::control::RunControl;
use plumb::train::schedule::Schedule;
use plumb::train::sft::{self, SftConfig};
use std::path::{Path, PathBuf};

/// Optimizer steps of the equivalence runs (the later ones start from updated weights and moments).
const STEPS: usize = 3;

fn nano(gpu: &plumb::Gpu, seed: u64) -> Model {
    Model::new(gpu, &presets::resolve("gpt-nano").unwrap(), seed).unwrap()
}

/// A step's numbers (losses, metrics, gradient norms) of two runs agree to `1e-5` relative.
fn assert_same_metrics<M: serde::Serialize>(what: &str, one_batch: &[M], two_micro: &[M]) {
    assert_eq!(one_batch.len(), two_micro.len(), "{what}: steps");
    for (step, (a, b)) in one_batch.iter().zip(two_micro).enumerate() {
        let (a, b) = (serde_json::to_value(a).unwrap(), serde_json::to_value(b).unwrap());
        let keys: Vec<&String> = a.as_object().unwrap().keys().filter(|k| !["elapsed_s", "tokens_per_s"].contains(&k.as_str())).collect();
        assert!(keys.contains(&&"loss".to_string()) && keys.contains(&&"grad_norm".to_string()), "{what}: loss and grad_norm are logged");
        for k in keys {
            let (x, y) = (a[k].as_f64().unwrap(), b[k].as_f64().unwrap_or(f64::NAN));
            assert!((x - y).abs() <= 1e-5 * x.abs().max(y.abs()) + 1e-7, "{what} step {}: {k} {x} (1 batch of 4) vs {y} (2 micro-batches of 2)", step + 1);
        }
    }
}

/// AdamW for the equivalence runs, with ε = 1e-3. With PyTorch's 1e-8 an update is nearly
/// lr · sign(g) down to gradients of 1e-8, so the summation-order noise of a weight whose gradient
/// is close to 0 (its terms cancel) can flip its whole update; with a larger ε the update is a
/// smooth function of the gradient at that scale, and equal gradients give equal weights.
fn adamw() -> AdamWConfig {
    AdamWConfig { eps: 1e-3, max_grad_norm: Some(1.0), weight_decay: 0.0, ..Default::default() }
}

/// Two models' trainable weights agree: each within 1e-5 relative, or within 1e-4 of the largest
/// change a weight made.
fn assert_same_weights(what: &str, start: &Model, a: &Model, b: &Model) {
    let read = |m: &Model| m.trainable().values().to_f32_vec().unwrap();
    let (w0, wa, wb) = (read(start), read(a), read(b));
    let moved = wa.iter().zip(&w0).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(moved > 0.0, "{what}: the weights did not move");
    let mut worst = (0.0f32, 0usize);
    for (i, (x, y)) in wa.iter().zip(&wb).enumerate() {
        let err = (x - y).abs() / (1e-5 * x.abs().max(y.abs()) + 1e-4 * moved);
        if err > worst.0 {
            worst = (err, i);
        }
    }
    let i = worst.1;
    eprintln!("{what}: largest weight change {moved:.3e}; worst weight {i}: {} vs {} ({:.3} of the allowance)", wa[i], wb[i], worst.0);
    assert!(worst.0 <= 1.0, "{what}: weight {i} is {} after one batch of 4, {} after 2 micro-batches of 2", wa[i], wb[i]);
}

fn train_cfg(batch_size: usize, grad_accum: usize) -> TrainConfig {
    TrainConfig { steps: STEPS, batch_size, grad_accum, max_len: 24, max_prompt_len: 6, schedule: Schedule::constant(2e-3), adamw: adamw(), seed: 4, ..Default::default() }
}

#[test]
fn dpo_with_bco_pair_accumulates_like_one_big_batch() {
    let Some(gpu) = common::gpu() else { return };
    let pairs = common::synthetic_pairs(12, 5);
    let reference = nano(&gpu, 3);
    // bco_pair's δ, the running mean of the rewards, is the same for both micro-batches of a step
    let loss = DpoConfig { losses: vec![(DpoLoss::Sigmoid, 1.0), (DpoLoss::BcoPair, 1.0)], ..Default::default() };
    let run = |b: usize, accum: usize| {
        let policy = nano(&gpu, 3);
        let cfg = DpoTrainConfig { train: train_cfg(b, accum), loss: loss.clone(), pad_id: 0 };
        let m = Dpo::new(cfg).train(&policy, &pairs, Reference::Model(&reference)).unwrap();
        (policy, m)
    };
    let ((big, mb), (micro, mm)) = (run(4, 1), run(2, 2));
    assert_same_metrics("dpo", &mb, &mm);
    assert_same_weights("dpo", &reference, &big, &micro);
}

#[test]
fn reward_model_accumulates_like_one_big_batch() {
    let Some(gpu) = common::gpu() else { return };
    let pairs = common::synthetic_pairs(12, 3);
    let start = RewardModel::from_model(&nano(&gpu, 2), 7).unwrap();
    let run = |b: usize, accum: usize| {
        let rm = RewardModel::from_model(&nano(&gpu, 2), 7).unwrap();
        let cfg = RewardConfig { train: train_cfg(b, accum), center_coef: 0.01, pad_id: 0 };
        let m = Reward::new(cfg).train(&rm, &pairs).unwrap();
        (rm, m)
    };
    let ((big, mb), (micro, mm)) = (run(4, 1), run(2, 2));
    assert_same_metrics("reward", &mb, &mm); // min_reward / max_reward: over both micro-batches
    assert_same_weights("reward", &start.model, &big.model, &micro.model);
}

#[test]
fn kto_apo_zero_unpaired_accumulates_like_one_big_batch() {
    let Some(gpu) = common::gpu() else { return };
    let tok = plumb::tokenizer::Tokenizer::byte_level();
    let data: Vec<Completion> = plumb::demo::data::thumbs(&tok, plumb::demo::data::Split::Train, 1.5, 40, 6).unwrap();
    let reference = nano(&gpu, 5);
    let run = |b: usize, accum: usize| {
        let policy = nano(&gpu, 5);
        let loss = KtoConfig { loss_type: KtoLoss::ApoZeroUnpaired, ..Default::default() };
        let cfg = KtoTrainConfig { train: TrainConfig { max_len: 48, ..train_cfg(b, accum) }, loss, pad_id: 0 };
        let m = Kto::new(cfg).train(&policy, &data, Reference::Model(&reference)).unwrap();
        (policy, m)
    };
    let ((big, mb), (micro, mm)) = (run(4, 1), run(2, 2));
    // rewards/* and logps/* are means over all the step's desirable or undesirable rows; the counts add up
    assert_same_metrics("kto", &mb, &mm);
    assert_same_weights("kto", &reference, &big, &micro);
}

/// Windows of a token stream where row r of batch i is global row i·b + r: a batch of 4 is
/// exactly batches 2i and 2i + 1 of 2. (StreamSource draws each window from (index, row), so
/// its batches of 2 are other windows.) Every token counts, so each micro-batch's mean token
/// loss has the same weight.
struct GlobalRows(Vec<u32>);

impl BatchSource for GlobalRows {
    fn batch(&self, index: u64, batch: usize, seq: usize) -> plumb::Result<LmBatch> {
        let mut b = LmBatch { ids: vec![], targets: vec![], mask: vec![1.0; batch * seq], batch, seq };
        for r in 0..batch as u64 {
            let start = (mix(index * batch as u64 + r) % (self.0.len() - seq - 1) as u64) as usize;
            b.ids.extend_from_slice(&self.0[start..start + seq]);
            b.targets.extend_from_slice(&self.0[start + 1..start + seq + 1]);
        }
        Ok(b)
    }

    fn describe(&self) -> String {
        format!("{} tokens by global row", self.0.len())
    }
}

#[test]
fn sft_accumulates_like_one_big_batch() {
    let Some(gpu) = common::gpu() else { return };
    let tokens: Vec<u32> = plumb::data::corpus::movie_reviews().unwrap().iter().take(100).flat_map(|s| s.text.bytes().map(u32::from)).collect();
    let src = GlobalRows(tokens);
    let run = |b: usize, accum: usize| {
        let model = nano(&gpu, 1);
        let schedule = Schedule::constant(2e-3);
        let cfg = SftConfig { batch_size: b, grad_accum: accum, seq_len: 16, steps: STEPS, eval_every: 0, schedule, adamw: adamw(), ..Default::default() };
        let r = sft::train(&model, &src, None, &cfg).unwrap();
        (model, r.metrics)
    };
    let ((big, mb), (micro, mm)) = (run(4, 1), run(2, 2));
    assert_same_metrics("sft", &mb, &mm);
    assert_same_weights("sft", &nano(&gpu, 1), &big, &micro);
}

#[test]
fn accumulation_settings_that_cannot_work_are_errors() {
    let Some(gpu) = common::gpu() else { return };
    let (policy, reference) = (nano(&gpu, 9), nano(&gpu, 9));
    let pairs = common::synthetic_pairs(4, 1);
    let cfg = DpoTrainConfig { train: TrainConfig { grad_accum: 0, ..train_cfg(2, 1) }, ..Default::default() };
    let e = Dpo::new(cfg).train(&policy, &pairs, Reference::Model(&reference)).unwrap_err().to_string();
    assert!(e.contains("grad_accum 0"), "{e}");
    // PPO splits each minibatch's rows into grad_accum micro-batches: 4 rows / 2 minibatches = 2, not 3
    let cfg = PpoConfig { train: train_cfg(4, 3), minibatches: 2, ..Default::default() };
    let e = Ppo::new(cfg).train(&policy, &prompts(), &Rewards::Fn(&lowercase_share), Reference::Model(&reference)).unwrap_err().to_string();
    assert!(e.contains("grad_accum 3 must divide"), "{e}");
}

// ---- exact resume with accumulation (as tests/resume_methods.rs) ----

const RESUME_STEPS: usize = 4;
const SAVE_EVERY: usize = 2;
const KILLED_AFTER: usize = 3;

fn dir(name: &str) -> PathBuf {
    run_dir("accum", name)
}

fn final_files(out: &Path) -> Vec<(String, Vec<u8>)> {
    checkpoint_files(out, RESUME_STEPS)
}

/// Uninterrupted vs killed after step 3 (a panic in the step callback) and resumed from step 2.
fn check_exact_resume(name: &str, run: &dyn Fn(&Path, bool, RunControl)) {
    let (a, b) = (dir(&format!("{name}-a")), dir(&format!("{name}-b")));
    run(&a, false, RunControl::new());
    let killer = RunControl::new().with_on_step(|s| {
        assert!(s.step < KILLED_AFTER, "killed after step {KILLED_AFTER}");
        true
    });
    let died = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&b, false, killer)));
    assert!(died.is_err(), "{name}: the interrupted run did not die");
    run(&b, true, RunControl::new());
    assert_eq!(losses(&a).len(), RESUME_STEPS);
    assert_eq!(losses(&a), losses(&b), "{name}: per-step losses after the resume differ");
    let (fa, fb) = (final_files(&a), final_files(&b));
    assert_eq!(fa.iter().map(|f| &f.0).collect::<Vec<_>>(), fb.iter().map(|f| &f.0).collect::<Vec<_>>(), "{name}: checkpoint files");
    for ((n, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(x == y, "{name}: {n} of the final checkpoint differs after the resume");
    }
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join(format!("checkpoint-{RESUME_STEPS}/trainer_state.json"))).unwrap()).unwrap();
    assert_eq!(state["batches_seen"], 2 * RESUME_STEPS as u64, "{name}: two micro-batches a step");
    std::fs::remove_dir_all(&a).ok();
    std::fs::remove_dir_all(&b).ok();
}

fn resume_cfg(out: &Path, resume: bool, control: RunControl, batch_size: usize, lr: f32) -> TrainConfig {
    TrainConfig {
        steps: RESUME_STEPS,
        grad_accum: 2,
        out_dir: Some(out.to_path_buf()),
        save_every: SAVE_EVERY,
        resume,
        control,
        schedule: Schedule { lr, warmup: 1, total: 0, min_lr: lr / 10.0 },
        ..train_cfg(batch_size, 2)
    }
}

fn lowercase_share(_prompt: &[u32], completion: &[u32]) -> f32 {
    completion.iter().filter(|&&t| (b'a' as u32..=b'z' as u32).contains(&t)).count() as f32 / completion.len().max(1) as f32
}

fn prompts() -> Vec<Vec<u32>> {
    (0..6u32).map(|i| vec![b'0' as u32 + i, b'A' as u32 + i, b' ' as u32]).collect()
}

#[test]
fn dpo_ppo_and_grpo_with_accumulation_resume_exactly() {
    let Some(gpu) = common::gpu() else { return };
    let pairs = common::synthetic_pairs(12, 5);
    let reference = nano(&gpu, 3);
    let bco = DpoConfig { losses: vec![(DpoLoss::Sigmoid, 1.0), (DpoLoss::BcoPair, 1.0)], ..Default::default() };
    check_exact_resume("dpo", &|out, resume, control| {
        let cfg = DpoTrainConfig { train: resume_cfg(out, resume, control, 2, 2e-3), loss: bco.clone(), pad_id: 0 };
        Dpo::new(cfg).train(&nano(&gpu, 3), &pairs, Reference::Model(&reference)).unwrap();
    });
    check_exact_resume("ppo", &|out, resume, control| {
        let cfg = PpoConfig {
            train: resume_cfg(out, resume, control, 2, 3e-3),
            rollout: RolloutConfig { max_new_tokens: 4, ..Default::default() },
            ppo_epochs: 2,
            kl_target: Some((0.01, 4.0)),
            ..Default::default()
        };
        Ppo::new(cfg).train(&nano(&gpu, 3), &prompts(), &Rewards::Fn(&lowercase_share), Reference::Model(&reference)).unwrap();
    });
    check_exact_resume("grpo", &|out, resume, control| {
        let cfg = GrpoConfig {
            train: resume_cfg(out, resume, control, 1, 1e-2),
            rollout: RolloutConfig { max_new_tokens: 4, ..Default::default() },
            num_generations: 3,
            ..Default::default()
        };
        Grpo::new(cfg).train(&nano(&gpu, 3), &prompts(), &Rewards::Fn(&lowercase_share), Reference::Model(&reference)).unwrap();
    });
}
