//! On-policy RL on the real WGSL path: PPO (with a value head, GAE and the clipped losses) and
//! GRPO (group-normalised advantages) each raise a toy programmatic reward — the share of
//! lowercase letters in the completion — within a bounded number of steps, with a finite KL
//! to the frozen reference.
mod common;
use plumb::align::{Grpo, GrpoConfig, Ppo, PpoConfig, Reference, Rewards, RolloutConfig, TrainConfig};
use plumb::model::{presets, Model};
use plumb::train::schedule::Schedule;

fn lowercase_share(_prompt: &[u32], completion: &[u32]) -> f32 {
    completion.iter().filter(|&&t| (b'a' as u32..=b'z' as u32).contains(&t)).count() as f32 / completion.len().max(1) as f32
}

fn prompts() -> Vec<Vec<u32>> {
    (0..16u32).map(|i| vec![b'0' as u32 + i % 10, b'A' as u32 + i, b' ' as u32]).collect()
}

/// The mean of metric `k` (its name in metrics.jsonl) over steps `range`.
fn mean<M: serde::Serialize>(m: &[M], k: &str, range: std::ops::Range<usize>) -> f64 {
    let n = range.len() as f64;
    range.map(|i| serde_json::to_value(&m[i]).unwrap()[k].as_f64().unwrap_or_else(|| panic!("{k} missing"))).sum::<f64>() / n
}

#[test]
fn ppo_raises_a_programmatic_reward() {
    let Some(gpu) = common::gpu() else { return };
    let cfg = presets::resolve("gpt-nano").unwrap();
    let policy = Model::new(&gpu, &cfg, 11).unwrap();
    let reference = Model::new(&gpu, &cfg, 11).unwrap();
    let ppo = Ppo::new(PpoConfig {
        train: TrainConfig { steps: 30, batch_size: 16, schedule: Schedule::constant(3e-3), seed: 1, ..Default::default() },
        rollout: RolloutConfig { max_new_tokens: 8, ..Default::default() },
        ppo_epochs: 2,
        minibatches: 2,
        kl_coef: 0.01,
        ..Default::default()
    });
    let m = ppo.train(&policy, &prompts(), &Rewards::Fn(&lowercase_share), Reference::Model(&reference)).unwrap();
    let (first, last) = (mean(&m, "objective/scores", 0..5), mean(&m, "objective/scores", 25..30));
    eprintln!("PPO scores {first:.3} -> {last:.3}, kl {:.3}", mean(&m, "objective/kl", 25..30));
    assert!(last > first + 0.2, "PPO: reward {first} -> {last}");
    for k in ["objective/kl", "objective/entropy", "objective/rlhf_reward", "policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg"] {
        assert!(mean(&m, k, 29..30).is_finite(), "{k} not finite");
    }
}

#[test]
fn grpo_raises_a_programmatic_reward() {
    let Some(gpu) = common::gpu() else { return };
    let cfg = presets::resolve("gpt-nano").unwrap();
    let policy = Model::new(&gpu, &cfg, 12).unwrap();
    let reference = Model::new(&gpu, &cfg, 12).unwrap();
    let grpo = Grpo::new(GrpoConfig {
        train: TrainConfig { steps: 30, batch_size: 4, schedule: Schedule::constant(1e-2), seed: 2, ..Default::default() },
        rollout: RolloutConfig { max_new_tokens: 8, ..Default::default() },
        num_generations: 4,
        ..Default::default()
    });
    let m = grpo.train(&policy, &prompts(), &Rewards::Fn(&lowercase_share), Reference::Model(&reference)).unwrap();
    let (first, last) = (mean(&m, "reward", 0..5), mean(&m, "reward", 25..30));
    eprintln!("GRPO reward {first:.3} -> {last:.3}, kl {:.4}", mean(&m, "kl", 25..30));
    assert!(last > first + 0.2, "GRPO: reward {first} -> {last}");
    assert!(mean(&m, "kl", 25..30).is_finite());
}

#[test]
fn grpo_variants_raise_the_reward_and_beta_zero_needs_no_reference() {
    use plumb::align::ScaleRewards;
    use plumb::ops::grpo::{GrpoLossType, ImportanceLevel};
    let Some(gpu) = common::gpu() else { return };
    let cfg = presets::resolve("gpt-nano").unwrap();
    let variants = [
        (GrpoLossType::DrGrpo, ImportanceLevel::Token, ScaleRewards::None, Some(0.28), false),
        (GrpoLossType::Grpo, ImportanceLevel::Sequence, ScaleRewards::Batch, None, false),
        (GrpoLossType::Bnpo, ImportanceLevel::Token, ScaleRewards::Group, Some(0.28), false),
    ];
    for (loss_type, level, scale, eps_high, mask_truncated) in variants {
        let policy = Model::new(&gpu, &cfg, 12).unwrap();
        let grpo = Grpo::new(GrpoConfig {
            train: TrainConfig { steps: 20, batch_size: 4, schedule: Schedule::constant(1e-2), seed: 2, ..Default::default() },
            rollout: RolloutConfig { max_new_tokens: 8, ..Default::default() },
            num_generations: 4,
            beta: 0.0,
            loss_type,
            importance_sampling_level: level,
            scale_rewards: scale,
            epsilon_high: eps_high,
            mask_truncated_completions: mask_truncated,
            ..Default::default()
        });
        // β = 0: no reference at all
        let m = grpo.train(&policy, &prompts(), &Rewards::Fn(&lowercase_share), Reference::None).unwrap();
        let (first, last) = (mean(&m, "reward", 0..4), mean(&m, "reward", 16..20));
        eprintln!("GRPO {} {level:?} {scale:?}: reward {first:.3} -> {last:.3}", loss_type.name());
        assert!(last > first + 0.1, "GRPO {}: reward {first} -> {last}", loss_type.name());
        assert!(m.iter().all(|r| r.kl.is_none() && r.loss.is_finite()), "β = 0 logs no kl");
    }
    // mask_truncated_completions: with no stop token every completion is truncated, so nothing
    // is learned: zero loss, unchanged weights
    let policy = Model::new(&gpu, &cfg, 13).unwrap();
    let before = policy.params().read_all().unwrap();
    let grpo = Grpo::new(GrpoConfig {
        train: TrainConfig { steps: 2, batch_size: 2, schedule: Schedule::constant(1e-2), ..Default::default() },
        rollout: RolloutConfig { max_new_tokens: 4, ..Default::default() },
        num_generations: 2,
        beta: 0.0,
        mask_truncated_completions: true,
        ..Default::default()
    });
    let m = grpo.train(&policy, &prompts(), &Rewards::Fn(&lowercase_share), Reference::None).unwrap();
    assert!(m.iter().all(|r| r.loss == 0.0), "{m:?}");
    assert_eq!(policy.params().read_all().unwrap(), before, "truncated completions moved the weights");
}
