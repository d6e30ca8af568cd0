//! The alignment trainers learn, on the real WGSL path: DPO drives rewards/accuracies to 1 with
//! growing margins on a synthetic preference set (and every loss type trains without error),
//! precomputed reference log-probs give the same step as a live reference model, and a reward
//! model learns held-out human-rated pairs of the built-in movie reviews above chance.
mod common;
use plumb::align::{precompute_reference, Dpo, DpoTrainConfig, Pair, Reference, Reward, RewardConfig, RewardModel, TrainConfig};
use plumb::model::{presets, Model};
use plumb::ops::dpo::{DpoConfig, DpoLoss};
use plumb::train::schedule::Schedule;

fn train_cfg(steps: usize, lr: f32) -> TrainConfig {
    TrainConfig { steps, batch_size: 8, max_len: 32, max_prompt_len: 8, schedule: Schedule::constant(lr), ..Default::default() }
}

#[test]
fn dpo_drives_accuracy_to_one_with_growing_margins() {
    let Some(gpu) = common::gpu() else { return };
    let cfg = presets::resolve("gpt-nano").unwrap();
    let policy = Model::new(&gpu, &cfg, 1).unwrap();
    let reference = Model::new(&gpu, &cfg, 1).unwrap();
    let pairs = common::synthetic_pairs(32, 3);
    let dpo = Dpo::new(DpoTrainConfig { train: train_cfg(40, 2e-3), ..Default::default() });
    let m = dpo.train(&policy, &pairs, Reference::Model(&reference)).unwrap();
    let get = |i: usize, k: &str| serde_json::to_value(&m[i]).unwrap()[k].as_f64().unwrap();
    let first: f64 = (0..5).map(|i| get(i, "rewards/margins")).sum::<f64>() / 5.0;
    let last: f64 = (35..40).map(|i| get(i, "rewards/margins")).sum::<f64>() / 5.0;
    let acc: f64 = (35..40).map(|i| get(i, "rewards/accuracies")).sum::<f64>() / 5.0;
    assert!(acc >= 0.99, "late accuracy {acc}");
    assert!(last > first + 1.0 && last > 1.0, "margins {first} -> {last}");
    assert!(get(39, "loss") < get(0, "loss") * 0.5, "loss {} -> {}", get(0, "loss"), get(39, "loss"));
    for k in ["logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected", "rewards/chosen", "rewards/rejected", "grad_norm"] {
        assert!(get(39, k).is_finite(), "{k} missing or not finite");
    }
    // the frozen reference did not move
    assert_eq!(reference.params().read_all().unwrap(), Model::new(&gpu, &cfg, 1).unwrap().params().read_all().unwrap());
}

#[test]
fn every_dpo_loss_type_trains_towards_the_chosen() {
    let Some(gpu) = common::gpu() else { return };
    let cfg = presets::resolve("gpt-nano").unwrap();
    let reference = Model::new(&gpu, &cfg, 2).unwrap();
    let pairs = common::synthetic_pairs(16, 4);
    for kind in DpoLoss::ALL {
        let policy = Model::new(&gpu, &cfg, 2).unwrap();
        let mut losses = vec![(kind, 1.0)];
        if kind == DpoLoss::Sft {
            losses.push((DpoLoss::Sigmoid, 1.0)); // sft alone does not separate the pair
        }
        // discopop at TRL's τ = 0.05 pushes a zero margin down first (its modulation has a bump
        // at 0: d loss/dz(0) = 1/(4τ)·(1 − log 2) − 3/4 > 0); from policy = reference, use τ = 1.
        let discopop_tau = if kind == DpoLoss::Discopop { 1.0 } else { 0.05 };
        let loss = DpoConfig { losses, label_smoothing: if kind == DpoLoss::Robust { 0.1 } else { 0.0 }, discopop_tau, ..Default::default() };
        let dpo = Dpo::new(DpoTrainConfig { train: train_cfg(12, 2e-3), loss, ..Default::default() });
        let m = dpo.train(&policy, &pairs, Reference::Model(&reference)).unwrap();
        let margin = |i: usize| m[i].rewards_margins;
        assert!(margin(11) > margin(0), "{}: margin {} -> {}", kind.name(), margin(0), margin(11));
    }
}

#[test]
fn precomputed_reference_equals_live_reference() {
    let Some(gpu) = common::gpu() else { return };
    let cfg = presets::resolve("gpt-nano").unwrap();
    let reference = Model::new(&gpu, &cfg, 5).unwrap();
    let pairs = common::synthetic_pairs(8, 6);
    let dir = std::env::temp_dir().join(format!("plumb-align-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("prefs.bin");
    let mut w = plumb::data::DatasetWriter::create(&path, plumb::data::DatasetKind::Preference, 256, None).unwrap();
    for p in &pairs {
        w.push_row(&[&p.prompt, &p.chosen, &p.rejected]).unwrap();
    }
    w.finish().unwrap();
    let dcfg = DpoTrainConfig { train: train_cfg(3, 1e-3), ..Default::default() };
    assert_eq!(precompute_reference(&reference, &path, &dcfg).unwrap(), 8);
    let data = plumb::data::PreferenceDataset::open(&path).unwrap();
    assert!(data.get(0).unwrap().reference_logps.is_some());
    let live = Dpo::new(dcfg.clone()).train(&Model::new(&gpu, &cfg, 5).unwrap(), &pairs, Reference::Model(&reference)).unwrap();
    let pre = Dpo::new(dcfg).train(&Model::new(&gpu, &cfg, 5).unwrap(), &data, Reference::Precomputed).unwrap();
    for (a, b) in live.iter().zip(&pre) {
        let (x, y) = (a.loss, b.loss);
        assert!((x - y).abs() < 1e-5, "live {x} vs precomputed {y}");
    }
    // no precomputed values: a clear error, not a panic
    let err = Dpo::new(DpoTrainConfig::default()).train(&Model::new(&gpu, &cfg, 5).unwrap(), &pairs, Reference::Precomputed).unwrap_err();
    assert!(err.to_string().contains("precompute"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Pairs of movie-review sentences whose mean human ratings differ by at least `gap`: the
/// better-rated one is chosen. Split by sentence id (ids % 5 == 0 held out).
fn review_pairs(gap: f32, held_out: bool, max: usize) -> Vec<Pair> {
    let reviews = plumb::data::corpus::movie_reviews().unwrap();
    let pick: Vec<_> = reviews.iter().filter(|r| (r.id % 5 == 0) == held_out && r.text.len() <= 60).collect();
    let mut out = vec![];
    for (k, &a) in pick.iter().enumerate().flat_map(|(i, a)| [3usize, 11, 29].map(|o| (i * 7 + o, a))) {
        let b = pick[k % pick.len()];
        if (a.mean - b.mean).abs() >= gap && out.len() < max {
            let (c, r) = if a.mean > b.mean { (a, b) } else { (b, a) };
            let bytes = |s: &str| s.bytes().map(u32::from).collect::<Vec<u32>>();
            out.push(Pair { prompt: vec![b'\n' as u32], chosen: bytes(&c.text), rejected: bytes(&r.text), reference: None });
        }
    }
    out
}

#[test]
fn reward_model_learns_held_out_human_preferences() {
    let Some(gpu) = common::gpu() else { return };
    let base = Model::new(&gpu, &presets::resolve("gpt-nano").unwrap(), 7).unwrap();
    let rm = RewardModel::from_model(&base, 7).unwrap();
    let (train, held) = (review_pairs(2.0, false, 2000), review_pairs(2.0, true, 300));
    assert!(train.len() >= 1000 && held.len() >= 200, "{} / {} pairs", train.len(), held.len());
    let cfg = RewardConfig { train: TrainConfig { steps: 150, batch_size: 16, max_len: 64, max_prompt_len: 4, schedule: Schedule::constant(2e-3), ..Default::default() }, ..Default::default() };
    let reward = Reward::new(cfg);
    let (acc0, _) = reward.evaluate(&rm, &held).unwrap();
    let m = reward.train(&rm, &train).unwrap();
    let (acc, margin) = reward.evaluate(&rm, &held).unwrap();
    eprintln!("held-out accuracy {acc0:.3} -> {acc:.3} (margin {margin:.3}); last train loss {}", m.last().unwrap().loss);
    assert!(acc >= 0.58, "held-out accuracy {acc} (before training {acc0})");
    // measured on lavapipe: 0.557 before training, 0.600 after (300 held-out pairs; chance ± 0.029)
    // save / load round trip in HF sequence-classification layout
    let dir = std::env::temp_dir().join(format!("plumb-rm-{}", std::process::id()));
    rm.save(&dir).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "GPT2ForSequenceClassification");
    let back = RewardModel::load(&gpu, &dir).unwrap();
    assert_eq!(back.model.params().read_all().unwrap(), rm.model.params().read_all().unwrap());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn lora_dpo_trains_only_adapters_against_the_base_model() {
    let Some(gpu) = common::gpu() else { return };
    let cfg = presets::resolve("gpt-nano").unwrap();
    let mut policy = Model::new(&gpu, &cfg, 8).unwrap();
    let base = policy.params().read_all().unwrap();
    policy.add_lora(&plumb::lora::LoraConfig { r: 4, alpha: 8.0, ..Default::default() }, 8).unwrap();
    let pairs = common::synthetic_pairs(16, 9);
    let dpo = Dpo::new(DpoTrainConfig { train: train_cfg(15, 5e-3), ..Default::default() });
    let m = dpo.train(&policy, &pairs, Reference::Adapters).unwrap();
    let margin = |i: usize| m[i].rewards_margins;
    assert!(margin(14) > margin(0) + 0.1, "LoRA-DPO margin {} -> {}", margin(0), margin(14));
    assert_eq!(policy.params().read_all().unwrap(), base, "base weights moved");
    // without adapters there is nothing to switch off: a clear error
    let plain = Model::new(&gpu, &cfg, 8).unwrap();
    assert!(dpo.train(&plain, &pairs, Reference::Adapters).unwrap_err().to_string().contains("LoRA"));
}
