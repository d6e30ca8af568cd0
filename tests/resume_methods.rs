//! Exact resume for every training method, on the real WGSL path: a run that dies after step k
//! without a final save (a panic in the per-step callback: nothing after the step runs) and is
//! resumed from its last periodic checkpoint gives the uninterrupted run's per-step losses and
//! its final checkpoint (policy or adapter, AdamW moments, the method's state: PPO's value head
//! with its moments and adaptive KL coefficient, DPO's bco_pair running mean), bit for bit.
//! The CLI version, with a real SIGKILL, is tests/resume_cli.rs.
mod common;
use common::resume::{checkpoint_files, losses, run_dir};
use plumb::align::{Completion, Dpo, DpoTrainConfig, Grpo, GrpoConfig, Kto, KtoTrainConfig, Ppo, PpoConfig, Reference, Reward, RewardConfig, RewardModel, Rewards, Rloo, RlooConfig, RolloutConfig, TrainConfig};
use plumb::model::{presets, Model};
use plumb::ops::dpo::{DpoConfig, DpoLoss};
use plumb::train::control::RunControl;
use plumb::train::schedule::Schedule;
use std::path::{Path, PathBuf};

const STEPS: usize = 5;
const SAVE_EVERY: usize = 2;
const KILLED_AFTER: usize = 3; // the last periodic checkpoint is step 2

/// A method under test: train into `out` (resuming when asked) with `control`, `save_every`.
type Run<'a> = dyn Fn(&Path, bool, RunControl) + 'a;

fn dir(name: &str) -> PathBuf {
    run_dir("resume", name)
}

fn final_files(out: &Path) -> Vec<(String, Vec<u8>)> {
    checkpoint_files(out, STEPS)
}

/// Uninterrupted vs killed-after-step-k-and-resumed: same losses, same final checkpoint.
fn check_exact_resume(name: &str, run: &Run) {
    let (a, b) = (dir(&format!("{name}-a")), dir(&format!("{name}-b")));
    run(&a, false, RunControl::new());
    let killer = RunControl::new().with_on_step(|s| {
        assert!(s.step < KILLED_AFTER, "killed after step {KILLED_AFTER}");
        true
    });
    let died = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&b, false, killer)));
    assert!(died.is_err(), "{name}: the interrupted run did not die");
    let latest = std::fs::read_to_string(b.join("latest")).unwrap();
    assert_eq!(latest.trim(), format!("checkpoint-{SAVE_EVERY}"), "{name}: the dead run's last checkpoint");
    assert_eq!(losses(&b).len(), KILLED_AFTER, "{name}: the dead run logged its steps");
    run(&b, true, RunControl::new());
    let (la, lb) = (losses(&a), losses(&b));
    assert_eq!(la.len(), STEPS);
    assert_eq!(la, lb, "{name}: per-step losses after the resume differ from the uninterrupted run");
    let (fa, fb) = (final_files(&a), final_files(&b));
    assert_eq!(fa.iter().map(|f| &f.0).collect::<Vec<_>>(), fb.iter().map(|f| &f.0).collect::<Vec<_>>(), "{name}: checkpoint files");
    for ((n, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(x == y, "{name}: {n} of the final checkpoint differs after the resume");
    }
    eprintln!("{name}: {} steps, resumed at {SAVE_EVERY}: losses and {:?} identical", STEPS, fa.iter().map(|f| &f.0).collect::<Vec<_>>());
    std::fs::remove_dir_all(&a).ok();
    std::fs::remove_dir_all(&b).ok();
}

fn train_cfg(out: &Path, resume: bool, control: RunControl, batch_size: usize, lr: f32) -> TrainConfig {
    TrainConfig {
        steps: STEPS,
        batch_size,
        max_len: 24,
        max_prompt_len: 6,
        schedule: Schedule { lr, warmup: 1, total: 0, min_lr: lr / 10.0 },
        seed: 4,
        out_dir: Some(out.to_path_buf()),
        save_every: SAVE_EVERY,
        resume,
        control,
        ..Default::default()
    }
}

fn nano(gpu: &plumb::Gpu, seed: u64) -> Model {
    Model::new(gpu, &presets::resolve("gpt-nano").unwrap(), seed).unwrap()
}

#[test]
fn sft_resumes_exactly() {
    let Some(gpu) = common::gpu() else { return };
    let tokens: Vec<u32> = plumb::data::corpus::movie_reviews().unwrap().iter().take(200).flat_map(|s| s.text.bytes().map(u32::from)).collect();
    let src = plumb::train::batch::StreamSource::from_tokens(tokens, 5, "reviews");
    check_exact_resume("sft", &|out, resume, control| {
        let cfg = plumb::train::sft::SftConfig {
            batch_size: 2,
            seq_len: 16,
            steps: STEPS,
            grad_accum: 2,
            save_every: SAVE_EVERY,
            eval_every: 2,
            eval_batches: 1,
            out_dir: Some(out.to_path_buf()),
            resume,
            control,
            ..Default::default()
        };
        plumb::train::sft::train(&nano(&gpu, 1), &src, Some(&src), &cfg).unwrap();
    });
}

#[test]
fn reward_model_resumes_exactly() {
    let Some(gpu) = common::gpu() else { return };
    let pairs = common::synthetic_pairs(12, 3);
    check_exact_resume("reward", &|out, resume, control| {
        let rm = RewardModel::from_model(&nano(&gpu, 2), 7).unwrap();
        let cfg = RewardConfig { train: train_cfg(out, resume, control, 3, 2e-3), center_coef: 0.01, pad_id: 0 };
        Reward::new(cfg).train(&rm, &pairs).unwrap();
    });
}

#[test]
fn dpo_with_bco_pair_and_simpo_resume_exactly() {
    let Some(gpu) = common::gpu() else { return };
    let pairs = common::synthetic_pairs(12, 5);
    // bco_pair's δ is the running mean of every reward so far: it must come back from the checkpoint
    let bco = DpoConfig { losses: vec![(DpoLoss::Sigmoid, 1.0), (DpoLoss::BcoPair, 1.0)], ..Default::default() };
    let reference = nano(&gpu, 3);
    check_exact_resume("dpo-bco", &|out, resume, control| {
        let cfg = DpoTrainConfig { train: train_cfg(out, resume, control, 3, 2e-3), loss: bco.clone(), pad_id: 0 };
        Dpo::new(cfg).train(&nano(&gpu, 3), &pairs, Reference::Model(&reference)).unwrap();
    });
    check_exact_resume("simpo", &|out, resume, control| {
        let cfg = DpoTrainConfig { train: train_cfg(out, resume, control, 3, 2e-3), loss: DpoConfig::simpo(2.0, 0.5), pad_id: 0 };
        Dpo::new(cfg).train(&nano(&gpu, 3), &pairs, Reference::None).unwrap();
    });
}

#[test]
fn orpo_resumes_exactly() {
    let Some(gpu) = common::gpu() else { return };
    let pairs = common::synthetic_pairs(12, 6);
    check_exact_resume("orpo", &|out, resume, control| {
        let cfg = DpoTrainConfig { train: train_cfg(out, resume, control, 3, 2e-3), loss: DpoConfig::orpo(0.1), pad_id: 0 };
        Dpo::new(cfg).train(&nano(&gpu, 4), &pairs, Reference::None).unwrap();
    });
}

#[test]
fn kto_with_lora_adapters_resumes_exactly() {
    let Some(gpu) = common::gpu() else { return };
    let tok = plumb::tokenizer::Tokenizer::byte_level();
    let data: Vec<Completion> = plumb::demo::data::thumbs(&tok, plumb::demo::data::Split::Train, 1.5, 40, 6).unwrap();
    check_exact_resume("kto-lora", &|out, resume, control| {
        let mut policy = nano(&gpu, 5);
        policy.add_lora(&plumb::lora::LoraConfig { r: 4, alpha: 8.0, ..Default::default() }, 9).unwrap();
        let cfg = KtoTrainConfig { train: TrainConfig { max_len: 48, ..train_cfg(out, resume, control, 4, 5e-3) }, ..Default::default() };
        Kto::new(cfg).train(&policy, &data, Reference::Adapters).unwrap();
    });
}

fn lowercase_share(_prompt: &[u32], completion: &[u32]) -> f32 {
    completion.iter().filter(|&&t| (b'a' as u32..=b'z' as u32).contains(&t)).count() as f32 / completion.len().max(1) as f32
}

fn prompts() -> Vec<Vec<u32>> {
    (0..6u32).map(|i| vec![b'0' as u32 + i, b'A' as u32 + i, b' ' as u32]).collect()
}

#[test]
fn ppo_with_value_head_and_adaptive_kl_resumes_exactly() {
    let Some(gpu) = common::gpu() else { return };
    let reference = nano(&gpu, 6);
    check_exact_resume("ppo", &|out, resume, control| {
        let cfg = PpoConfig {
            train: train_cfg(out, resume, control, 2, 3e-3),
            rollout: RolloutConfig { max_new_tokens: 4, ..Default::default() },
            ppo_epochs: 2,
            kl_target: Some((0.01, 4.0)), // the adaptive coefficient moves every step
            ..Default::default()
        };
        let m = Ppo::new(cfg).train(&nano(&gpu, 6), &prompts(), &Rewards::Fn(&lowercase_share), Reference::Model(&reference)).unwrap();
        if !resume && m.len() == STEPS {
            let coefs: Vec<f32> = m.iter().map(|r| r.objective_kl_coef).collect();
            assert!(coefs.windows(2).all(|w| w[0] != w[1]), "the adaptive KL coefficient must change each step: {coefs:?}");
        }
    });
}

#[test]
fn grpo_resumes_exactly() {
    let Some(gpu) = common::gpu() else { return };
    let reference = nano(&gpu, 7);
    check_exact_resume("grpo", &|out, resume, control| {
        let cfg = GrpoConfig {
            train: train_cfg(out, resume, control, 2, 1e-2),
            rollout: RolloutConfig { max_new_tokens: 4, ..Default::default() },
            num_generations: 3,
            ..Default::default()
        };
        Grpo::new(cfg).train(&nano(&gpu, 7), &prompts(), &Rewards::Fn(&lowercase_share), Reference::Model(&reference)).unwrap();
    });
}

#[test]
fn rloo_resumes_exactly() {
    let Some(gpu) = common::gpu() else { return };
    let reference = nano(&gpu, 8);
    check_exact_resume("rloo", &|out, resume, control| {
        let cfg = RlooConfig {
            train: train_cfg(out, resume, control, 2, 1e-2),
            rollout: RolloutConfig { max_new_tokens: 4, ..Default::default() },
            num_generations: 3,
            normalize_advantages: true,
            reward_clip_range: Some((0.0, 0.8)),
            ..Default::default()
        };
        Rloo::new(cfg).train(&nano(&gpu, 8), &prompts(), &Rewards::Fn(&lowercase_share), Reference::Model(&reference)).unwrap();
    });
}
