//! A PPO step stays on the GPU: from the rollout to the end of the step (scoring, the KL
//! penalty, per-token rewards, GAE, whitening, every minibatch's gather, loss and update) the
//! only buffer read back to the host is the step's metrics, once. Counted with
//! `Gpu::readbacks()`: a PPO run's readbacks minus those of sampling the same rollouts, with a
//! reward function and with a reward model.
mod common;
use plumb::align::rollout::sample;
use plumb::align::{Ppo, PpoConfig, Reference, RewardModel, Rewards, RolloutConfig, TrainConfig};
use plumb::model::{presets, Model};
use plumb::train::schedule::Schedule;

fn lowercase_share(_prompt: &[u32], completion: &[u32]) -> f32 {
    completion.iter().filter(|&&t| (b'a' as u32..=b'z' as u32).contains(&t)).count() as f32 / completion.len().max(1) as f32
}

#[test]
fn a_ppo_step_reads_back_only_its_metrics() {
    let Some(gpu) = common::gpu() else { return };
    let cfg = presets::resolve("gpt-nano").unwrap();
    let policy = Model::new(&gpu, &cfg, 21).unwrap();
    let reference = Model::new(&gpu, &cfg, 21).unwrap();
    // prompts of one length and no stop token: every rollout samples the same number of tokens
    let prompts: Vec<Vec<u32>> = (0..8u32).map(|i| vec![b'A' as u32 + i, b' ' as u32]).collect();
    let rollout = RolloutConfig { max_new_tokens: 6, ..Default::default() };
    let steps = 3;
    let ppo = Ppo::new(PpoConfig {
        train: TrainConfig { steps, batch_size: 4, schedule: Schedule::constant(1e-3), seed: 5, ..Default::default() },
        rollout: rollout.clone(),
        ppo_epochs: 2,
        minibatches: 2,
        missing_eos_penalty: Some(-0.5),
        reward_clip: Some(0.8),
        ..Default::default()
    });
    let before = gpu.readbacks();
    let m = ppo.train(&policy, &prompts, &Rewards::Fn(&lowercase_share), Reference::Model(&reference)).unwrap();
    let ppo_reads = gpu.readbacks() - before;
    assert_eq!(m.len(), steps);

    let before = gpu.readbacks();
    for step in 0..steps as u64 {
        sample(&policy, &prompts[..4], &rollout, step).unwrap();
    }
    let sample_reads = gpu.readbacks() - before;
    eprintln!("{steps} PPO steps: {ppo_reads} readbacks, of which sampling {sample_reads}");
    assert!(sample_reads > 0, "sampling reads the drawn tokens back");
    assert_eq!(ppo_reads - sample_reads, steps as u64, "one readback per step besides sampling: the metrics");
    let last = &m[steps - 1];
    for (k, v) in [("loss", last.loss), ("objective/kl", last.objective_kl), ("objective/entropy", last.objective_entropy), ("objective/rlhf_reward", last.objective_rlhf_reward), ("policy/approxkl_avg", last.policy_approxkl_avg), ("loss/value_avg", last.loss_value_avg)] {
        assert!(v.is_finite(), "{k} not finite");
    }

    // scored by a reward model: its scores stay on the GPU too
    let rm = RewardModel::from_model(&Model::new(&gpu, &cfg, 22).unwrap(), 0).unwrap();
    let before = gpu.readbacks();
    let m = ppo.train(&policy, &prompts, &Rewards::Model { model: &rm, max_len: 16 }, Reference::Model(&reference)).unwrap();
    let rm_reads = gpu.readbacks() - before;
    eprintln!("{steps} PPO steps with a reward model: {rm_reads} readbacks");
    assert_eq!(rm_reads - sample_reads, steps as u64, "one readback per step besides sampling, with a reward model");
    assert!(m.iter().all(|r| r.objective_scores.is_finite() && r.objective_rlhf_reward.is_finite()));
}
