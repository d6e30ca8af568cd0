//! RLOO on the real WGSL path: k completions per prompt with the leave-one-out baseline raise a
//! toy programmatic reward (the share of lowercase letters in the completion) within a bounded
//! number of steps, with the KL to the frozen reference in the reward and finite; β = 0 needs
//! no reference.
mod common;
use plumb::align::{Reference, Rewards, Rloo, RlooConfig, RlooMetrics, RolloutConfig, TrainConfig};
use plumb::model::{presets, Model};
use plumb::train::schedule::Schedule;

fn lowercase_share(_prompt: &[u32], completion: &[u32]) -> f32 {
    completion.iter().filter(|&&t| (b'a' as u32..=b'z' as u32).contains(&t)).count() as f32 / completion.len().max(1) as f32
}

fn prompts() -> Vec<Vec<u32>> {
    (0..16u32).map(|i| vec![b'0' as u32 + i % 10, b'A' as u32 + i, b' ' as u32]).collect()
}

/// A step's metrics as metrics.jsonl writes them (TRL's names).
fn record(m: &RlooMetrics) -> serde_json::Value {
    serde_json::to_value(m).unwrap()
}

fn mean(m: &[RlooMetrics], k: &str, range: std::ops::Range<usize>) -> f64 {
    let n = range.len() as f64;
    range.map(|i| record(&m[i])[k].as_f64().unwrap_or_else(|| panic!("{k} missing"))).sum::<f64>() / n
}

#[test]
fn rloo_raises_a_programmatic_reward_with_finite_kl() {
    let Some(gpu) = common::gpu() else { return };
    let cfg = presets::resolve("gpt-nano").unwrap();
    let policy = Model::new(&gpu, &cfg, 14).unwrap();
    let reference = Model::new(&gpu, &cfg, 14).unwrap();
    let rloo = Rloo::new(RlooConfig {
        train: TrainConfig { steps: 30, batch_size: 4, schedule: Schedule::constant(1e-2), seed: 3, ..Default::default() },
        rollout: RolloutConfig { max_new_tokens: 8, ..Default::default() },
        num_generations: 4,
        ..Default::default()
    });
    let m = rloo.train(&policy, &prompts(), &Rewards::Fn(&lowercase_share), Reference::Model(&reference)).unwrap();
    let (first, last) = (mean(&m, "reward", 0..5), mean(&m, "reward", 25..30));
    let kl = mean(&m, "kl", 25..30);
    eprintln!("RLOO reward {first:.3} -> {last:.3}, kl {kl:.4}");
    assert!(last > first + 0.2, "RLOO: reward {first} -> {last}");
    assert!(kl.is_finite() && kl > 0.0, "kl {kl}");
    for k in ["loss", "reward_std", "frac_reward_zero_std", "clip_ratio/region_mean", "completion_length"] {
        assert!(record(&m[29])[k].as_f64().unwrap().is_finite(), "{k} not finite");
    }
}

#[test]
fn rloo_without_kl_needs_no_reference() {
    let Some(gpu) = common::gpu() else { return };
    let cfg = presets::resolve("gpt-nano").unwrap();
    let policy = Model::new(&gpu, &cfg, 15).unwrap();
    let rloo = Rloo::new(RlooConfig {
        train: TrainConfig { steps: 20, batch_size: 4, schedule: Schedule::constant(1e-2), seed: 4, ..Default::default() },
        rollout: RolloutConfig { max_new_tokens: 8, ..Default::default() },
        num_generations: 4,
        beta: 0.0,
        normalize_advantages: true,
        epsilon_high: Some(0.28),
        ..Default::default()
    });
    let m = rloo.train(&policy, &prompts(), &Rewards::Fn(&lowercase_share), Reference::None).unwrap();
    let (first, last) = (mean(&m, "reward", 0..4), mean(&m, "reward", 16..20));
    eprintln!("RLOO beta=0 normalized: reward {first:.3} -> {last:.3}");
    assert!(last > first + 0.1, "RLOO β = 0: reward {first} -> {last}");
    assert!(m.iter().all(|r| r.kl.is_none() && record(r).get("kl").is_none()), "β = 0 logs no kl");
    // a KL weight without a live reference, and a group of one: errors, not panics
    let bad = |c: RlooConfig| Rloo::new(c).train(&policy, &prompts(), &Rewards::Fn(&lowercase_share), Reference::None).is_err();
    assert!(bad(RlooConfig { beta: 0.05, ..Default::default() }));
    assert!(bad(RlooConfig { num_generations: 1, beta: 0.0, ..Default::default() }));
}
