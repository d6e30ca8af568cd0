//! KTO learns thumbs-up / thumbs-down feedback on the real WGSL path: feedback made from the
//! built-in movie-review ratings (sentences rated clearly positive are desirable, clearly
//! negative undesirable); after training, the implicit reward β log(π/π_ref) of desirable
//! completions is above that of undesirable ones, with the KL estimate finite. Both loss types,
//! LoRA adapters as the reference, unpaired JSONL through `plumb data prepare`, and bad settings.
mod common;
use plumb::align::{Completion, Kto, KtoTrainConfig, Reference, TrainConfig};
use plumb::demo::data::{thumbs, Split};
use plumb::model::{presets, Model};
use plumb::ops::kto::{KtoConfig, KtoLoss};
use plumb::train::schedule::Schedule;

fn feedback(max: usize) -> Vec<Completion> {
    let tok = plumb::tokenizer::Tokenizer::byte_level();
    thumbs(&tok, Split::Train, 1.5, 40, max / 2).unwrap()
}

fn kto_cfg(steps: usize, lr: f32, loss: KtoConfig) -> KtoTrainConfig {
    let train = TrainConfig { steps, batch_size: 8, max_len: 48, max_prompt_len: 4, schedule: Schedule::constant(lr), ..Default::default() };
    KtoTrainConfig { train, loss, pad_id: 0 }
}

/// Mean of `f` over steps `range` where it is present.
fn mean(m: &[plumb::align::KtoMetrics], range: std::ops::Range<usize>, f: impl Fn(&plumb::align::KtoMetrics) -> Option<f32>) -> f32 {
    let v: Vec<f32> = m[range].iter().filter_map(f).collect();
    v.iter().sum::<f32>() / v.len().max(1) as f32
}

#[test]
fn kto_learns_thumbs_from_human_ratings() {
    let Some(gpu) = common::gpu() else { return };
    let cfg = presets::resolve("gpt-nano").unwrap();
    let data = feedback(24);
    let ups = data.iter().filter(|c| c.label).count();
    assert_eq!((ups, data.len()), (12, 24), "12 desirable and 12 undesirable");
    let reference = Model::new(&gpu, &cfg, 3).unwrap();
    for (loss_type, steps) in [(KtoLoss::Kto, 30usize), (KtoLoss::ApoZeroUnpaired, 15)] {
        let policy = Model::new(&gpu, &cfg, 3).unwrap();
        let kto = Kto::new(kto_cfg(steps, 2e-3, KtoConfig { loss_type, ..Default::default() }));
        let m = kto.train(&policy, &data, Reference::Model(&reference)).unwrap();
        let (first, last) = (mean(&m, 0..3, |x| x.rewards_margins), mean(&m, steps - 5..steps, |x| x.rewards_margins));
        let (loss0, loss1) = (mean(&m, 0..3, |x| Some(x.loss)), mean(&m, steps - 5..steps, |x| Some(x.loss)));
        eprintln!("{loss_type}: margin {first:.3} -> {last:.3}, loss {loss0:.4} -> {loss1:.4}, kl {}", m[steps - 1].kl);
        assert!(last > first + 0.5 && last > 0.5, "{loss_type}: margin {first} -> {last}");
        assert!(loss1 < loss0, "{loss_type}: loss {loss0} -> {loss1}");
        for x in &m {
            assert!(x.kl.is_finite() && x.kl >= 0.0, "kl {}", x.kl);
            assert!(x.count_chosen + x.count_rejected == 8.0);
        }
        if loss_type == KtoLoss::Kto {
            assert!(m.iter().any(|x| x.kl > 0.0), "the KL estimate never left zero");
        } else {
            assert!(m.iter().all(|x| x.kl == 0.0), "apo_zero_unpaired has no KL term");
        }
    }
    // the frozen reference did not move
    assert_eq!(reference.params().read_all().unwrap(), Model::new(&gpu, &cfg, 3).unwrap().params().read_all().unwrap());
}

#[test]
fn lora_kto_uses_the_base_model_as_reference_and_checks_settings() {
    let Some(gpu) = common::gpu() else { return };
    let cfg = presets::resolve("gpt-nano").unwrap();
    let mut policy = Model::new(&gpu, &cfg, 4).unwrap();
    let base = policy.params().read_all().unwrap();
    policy.add_lora(&plumb::lora::LoraConfig { r: 4, alpha: 8.0, ..Default::default() }, 4).unwrap();
    let data = feedback(16);
    let dir = std::env::temp_dir().join(format!("plumb-kto-{}", std::process::id()));
    let mut c = kto_cfg(12, 5e-3, KtoConfig { desirable_weight: 1.2, ..Default::default() });
    c.train.out_dir = Some(dir.clone());
    let m = Kto::new(c).train(&policy, &data, Reference::Adapters).unwrap();
    let margin = |r: std::ops::Range<usize>| mean(&m, r, |x| x.rewards_margins);
    assert!(margin(9..12) > margin(0..3), "LoRA-KTO margin {} -> {}", margin(0..3), margin(9..12));
    assert_eq!(policy.params().read_all().unwrap(), base, "base weights moved");
    // metrics.jsonl holds TRL's names, one line per step
    let log = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 12);
    for k in ["loss", "kl", "count/chosen", "count/rejected", "lr", "step"] {
        assert!(lines[11][k].is_number(), "{k} missing from metrics.jsonl");
    }
    std::fs::remove_dir_all(&dir).ok();
    // settings that cannot work are errors, not panics
    let plain = Model::new(&gpu, &cfg, 4).unwrap();
    let err = |c: KtoTrainConfig, r: Reference| Kto::new(c).train(&plain, &data, r).unwrap_err().to_string();
    assert!(err(kto_cfg(1, 1e-3, KtoConfig::default()), Reference::Adapters).contains("LoRA"));
    assert!(err(kto_cfg(1, 1e-3, KtoConfig::default()), Reference::Precomputed).contains("precomputed"));
    let mut one = kto_cfg(1, 1e-3, KtoConfig::default());
    one.train.batch_size = 1;
    assert!(err(one, Reference::None).contains("at least 2"));
    assert!(err(kto_cfg(1, 1e-3, KtoConfig { beta: -1.0, ..Default::default() }), Reference::None).contains("beta"));
    let empty: Vec<Completion> = vec![];
    assert!(Kto::new(kto_cfg(1, 1e-3, KtoConfig::default())).train(&plain, &empty, Reference::None).is_err());
}

#[test]
fn unpaired_jsonl_prepares_plain_and_conversational_rows() {
    use plumb::data::{prepare, DatasetKind, OutputFormat, PrepareOptions, UnpairedDataset};
    let dir = std::env::temp_dir().join(format!("plumb-kto-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tok = plumb::tokenizer::Tokenizer::byte_level();
    let input = dir.join("thumbs.jsonl");
    let rows = [
        r#"{"prompt": "Q: 2+2?", "completion": " 4", "label": true}"#,
        r#"{"prompt": "Q: 2+2?", "completion": " 5", "label": false}"#,
        "",
        r#"{"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "hello"}], "label": true}"#,
        r#"{"prompt": "x", "completion": "", "label": false}"#,
    ];
    std::fs::write(&input, rows.join("\n")).unwrap();
    let out = dir.join("thumbs.bin");
    let sum = prepare(&input, &out, &tok, &PrepareOptions::default()).unwrap();
    assert_eq!((sum.kind, sum.rows, sum.conversational_rows, sum.dropped_total()), (DatasetKind::Unpaired, 3, 1, 1));
    let d = UnpairedDataset::open(&out).unwrap();
    let text = |t: plumb::data::Tokens| String::from_utf8(t.iter().map(|x| x as u8).collect()).unwrap();
    let (a, b, c) = (d.get(0).unwrap(), d.get(1).unwrap(), d.get(2).unwrap());
    assert_eq!((text(a.prompt), text(a.completion), a.label), ("Q: 2+2?".into(), " 4".into(), true));
    assert!(!b.label && c.label);
    assert!(text(c.prompt).contains("<|im_start|>user\nhi") && text(c.prompt).ends_with("<|im_start|>assistant\n"), "{}", text(c.prompt));
    assert!(text(c.completion).starts_with("hello"), "{}", text(c.completion));
    // an explicit --format unpaired works too; a preference file is not an unpaired one
    let opts = PrepareOptions { format: OutputFormat::Unpaired, ..Default::default() };
    assert_eq!(prepare(&input, &dir.join("b.bin"), &tok, &opts).unwrap().rows, 3);
    // bad labels are errors naming the line and field
    std::fs::write(&input, format!("{}\n{}", rows[0], r#"{"prompt": "p", "completion": "c", "label": "yes"}"#)).unwrap();
    let err = prepare(&input, &dir.join("c.bin"), &tok, &PrepareOptions::default()).unwrap_err().to_string();
    assert!(err.contains("thumbs.jsonl:2") && err.contains("label"), "{err}");
    std::fs::write(&input, r#"{"prompt": "p", "chosen": "a", "rejected": "b"}"#).unwrap();
    prepare(&input, &dir.join("d.bin"), &tok, &PrepareOptions::default()).unwrap();
    assert!(UnpairedDataset::open(dir.join("d.bin")).unwrap_err().to_string().contains("unpaired"));
    std::fs::remove_dir_all(&dir).ok();
}
