//! Reference-free preference methods hold one model in memory and learn: ORPO (NLL + odds
//! ratio) and SimPO (length-normalised margin with γ) drive the chosen completion's log-prob
//! above the rejected one's on a synthetic preference set, through `Dpo` with
//! `Reference::None`.
mod common;
use plumb::align::{Dpo, DpoTrainConfig, Reference, TrainConfig};
use plumb::model::{presets, Model};
use plumb::ops::dpo::DpoConfig;
use plumb::train::schedule::Schedule;

#[test]
fn orpo_and_simpo_learn_the_preference_without_a_reference() {
    let Some(gpu) = common::gpu() else { return };
    let cfg = presets::resolve("gpt-nano").unwrap();
    let pairs = common::synthetic_pairs(32, 7);
    for (name, loss) in [("orpo", DpoConfig::orpo(0.5)), ("simpo", DpoConfig::simpo(2.0, 0.5))] {
        let policy = Model::new(&gpu, &cfg, 5).unwrap();
        let train = TrainConfig { steps: 20, batch_size: 8, max_len: 32, max_prompt_len: 8, schedule: Schedule::constant(2e-3), ..Default::default() };
        let m = Dpo::new(DpoTrainConfig { train, loss, pad_id: 0 }).train(&policy, &pairs, Reference::None).unwrap();
        let get = |i: usize, k: &str| serde_json::to_value(&m[i]).unwrap()[k].as_f64().unwrap();
        let avg = |r: std::ops::Range<usize>, k: &str| r.clone().map(|i| get(i, k)).sum::<f64>() / r.len() as f64;
        let (m0, m1) = (avg(0..3, "rewards/margins"), avg(15..20, "rewards/margins"));
        let acc = avg(15..20, "rewards/accuracies");
        eprintln!("{name}: margin {m0:.3} -> {m1:.3}, late accuracy {acc:.2}, loss {:.3} -> {:.3}", get(0, "loss"), get(19, "loss"));
        assert!(m1 > m0 + 0.5 && acc >= 0.9, "{name}: margin {m0} -> {m1}, accuracy {acc}");
        assert!(get(19, "loss") < get(0, "loss"), "{name}: loss did not fall");
        // the chosen completion became more likely in absolute terms too (ORPO's NLL term)
        if name == "orpo" {
            assert!(avg(15..20, "logps/chosen") > avg(0..3, "logps/chosen"), "orpo: chosen log-prob did not rise");
        }
    }
}
