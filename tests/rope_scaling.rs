//! Hugging Face configs with `rope_scaling` of type `llama3` (Llama 3.1 / 3.2) load: the scaled
//! frequencies follow transformers' three regimes, the model runs them through the RoPE table
//! kernel (forward and KV-cache step), and other scaling types are refused by name.

mod common;

use plumb::model::{Model, ModelConfig, RopeScaling};
use plumb::Tensor;
use std::path::Path;

fn config(scaling: &str) -> String {
    format!(
        r#"{{"model_type": "llama", "vocab_size": 61, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rope_theta": 500000.0, "max_position_embeddings": 256, "tie_word_embeddings": true,
            "rope_scaling": {scaling}}}"#
    )
}

const LLAMA32: &str = r#"{"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}"#;

#[test]
fn llama3_frequencies_follow_the_three_regimes() {
    let s = RopeScaling {
        rope_type: "llama3".into(),
        factor: 32.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    let (theta, dim) = (500000.0f64, 64);
    let got = s.inv_freq(theta, dim);
    for (i, &g) in got.iter().enumerate() {
        let f = theta.powf(-((2 * i) as f64) / dim as f64);
        let wavelen = 2.0 * std::f64::consts::PI / f;
        if wavelen < 8192.0 / 4.0 {
            assert_eq!(g, f, "high frequency {i} unchanged");
        } else if wavelen > 8192.0 {
            assert!((g - f / 32.0).abs() <= 1e-15 * f, "low frequency {i} divided by the factor");
        } else {
            assert!(g < f && g > f / 32.0, "medium frequency {i} between: {g} vs {f}");
        }
    }
    assert!(got.windows(2).all(|w| w[1] < w[0]), "still decreasing");
}

#[test]
fn configs_with_llama3_rope_scaling_load_and_others_are_refused() {
    let c = ModelConfig::from_json(&config(LLAMA32), Path::new("config.json")).unwrap();
    let ModelConfig::Llama(l) = &c else { panic!() };
    assert_eq!(l.rope_scaling.as_ref().unwrap().factor, 32.0);
    let back = ModelConfig::from_json(&c.to_json().to_string(), Path::new("x")).unwrap();
    assert_eq!(back, c, "rope_scaling survives config.json");
    for bad in [r#"{"type": "linear", "factor": 2.0}"#, r#"{"rope_type": "yarn", "factor": 4.0}"#] {
        let e = ModelConfig::from_json(&config(bad), Path::new("config.json")).unwrap_err().to_string();
        assert!(e.contains("rope_scaling"), "{e}");
    }
    let e = ModelConfig::from_json(&config(r#"{"rope_type": "llama3", "factor": 8.0}"#), Path::new("c")).unwrap_err();
    assert!(e.to_string().contains("low_freq_factor"), "{e}");
}

#[test]
fn scaled_rope_runs_in_the_model_and_its_kv_cache() {
    let Some(gpu) = common::gpu() else { return };
    let plain = ModelConfig::from_json(&config("null"), Path::new("c")).unwrap();
    // factor 1 leaves every frequency as it is: the table path must equal the theta path.
    let unit = config(r#"{"rope_type": "llama3", "factor": 1.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}"#);
    let unit = ModelConfig::from_json(&unit, Path::new("c")).unwrap();
    let scaled = ModelConfig::from_json(&config(LLAMA32.replace("8192", "16").as_str()), Path::new("c")).unwrap();
    let ids: Vec<u32> = (0..24).map(|i| (i * 7 % 61) as u32).collect();
    let t = Tensor::from_u32(&gpu, &ids, &[1, 24]).unwrap();
    let run = |cfg: &ModelConfig| {
        let m = Model::new(&gpu, cfg, 11).unwrap();
        let full = m.forward(None, &t, None).unwrap().to_f32_vec().unwrap();
        // The KV-cache path: the prompt minus its last token, then the last token alone.
        let mut caches = m.new_caches(1, 32).unwrap();
        m.forward_cached(&Tensor::from_u32(&gpu, &ids[..23], &[1, 23]).unwrap(), &mut caches, None).unwrap();
        let last = m.forward_cached(&Tensor::from_u32(&gpu, &ids[23..], &[1, 1]).unwrap(), &mut caches, None).unwrap();
        (full, last.to_f32_vec().unwrap())
    };
    let (p, _) = run(&plain);
    let (u, _) = run(&unit);
    let err = p.iter().zip(&u).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(err < 1e-5, "factor 1 differs from plain RoPE by {err}");
    let (s, s_last) = run(&scaled);
    let diff = p.iter().zip(&s).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff > 1e-4, "scaling changed nothing ({diff})");
    let v = 61;
    let err = s[23 * v..24 * v].iter().zip(&s_last).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(err < 1e-4, "KV-cache step differs from the full forward by {err}");
}
