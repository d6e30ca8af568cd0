//! One test per defect of issue 14 that the library can show without the CLI: run directory
//! lock, overwrite and resume guards, settings checked on resume, output-is-input refusal,
//! token checksums and tokenizer identity in datasets, checkpoint manifests, config.json
//! validation naming file and field, config/weights mismatch listing tensors, and non-finite
//! logits in generation. Everything but the last two runs on the CPU alone.
mod common;

use plumb::data::{Dataset, DatasetKind, DatasetWriter};
use plumb::model::{presets, Model, ModelConfig};
use plumb::train::checkpoint;
use plumb::train::rundir::{check_output_not_input, check_settings, RunDir, RunOptions};
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("plumb-rel-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn err<T>(r: plumb::Result<T>) -> String {
    match r {
        Ok(_) => panic!("must be an error"),
        Err(e) => e.to_string(),
    }
}

/// A fake finished run: `checkpoint-2/` with a trainer state, `latest`, metrics.
fn fake_run(out: &Path, trainer: &str, config: serde_json::Value) {
    let ck = out.join("checkpoint-2");
    std::fs::create_dir_all(&ck).unwrap();
    let st = checkpoint::TrainerState { step: 2, seed: 0, batches_seen: 2, trainer: trainer.into(), config };
    std::fs::write(ck.join("trainer_state.json"), serde_json::to_string(&st).unwrap()).unwrap();
    checkpoint::write_manifest(&ck).unwrap();
    std::fs::write(out.join("latest"), "checkpoint-2").unwrap();
    std::fs::write(out.join("metrics.jsonl"), "{\"step\":1}\n{\"step\":2}\n").unwrap();
}

#[test]
fn a_second_writer_fails_at_once_naming_the_holder() {
    let out = scratch("lock");
    let first = RunDir::open(&out, false, &RunOptions::default()).unwrap();
    let msg = err(RunDir::open(&out, false, &RunOptions::default()));
    assert!(msg.contains("in use by another plumb run") && msg.contains(&format!("pid {}", std::process::id())), "{msg}");
    drop(first); // the lock goes with its holder
    RunDir::open(&out, false, &RunOptions::default()).unwrap();
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn a_fresh_run_refuses_a_directory_holding_another_run() {
    let out = scratch("overwrite");
    fake_run(&out, "sft", serde_json::json!({}));
    let msg = err(RunDir::open(&out, false, &RunOptions::default()));
    assert!(msg.contains("holds another run") && msg.contains("checkpoint-2") && msg.contains("--overwrite"), "{msg}");
    assert!(out.join("checkpoint-2").is_dir() && out.join("latest").is_file(), "a refused run must not touch the old one");
    let run = RunDir::open(&out, false, &RunOptions { overwrite: true, ..Default::default() }).unwrap();
    assert!(!out.join("checkpoint-2").exists() && !out.join("latest").exists() && !out.join("metrics.jsonl").exists());
    drop(run);
    assert!(err(RunDir::open(&out, true, &RunOptions { overwrite: true, ..Default::default() })).contains("conflicts"));
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn resume_without_a_valid_checkpoint_is_an_error() {
    let out = scratch("resume");
    let run = RunDir::open(&out, true, &RunOptions::default()).unwrap();
    assert!(err(run.resume_point("sft")).contains("no checkpoint to resume from"));
    drop(run);
    fake_run(&out, "sft", serde_json::json!({}));
    let run = RunDir::open(&out, true, &RunOptions::default()).unwrap();
    assert_eq!(run.resume_point("sft").unwrap().1.step, 2);
    assert!(err(run.resume_point("dpo")).contains("was written by `plumb sft`"));
    std::fs::write(out.join("latest"), "checkpoint-9").unwrap(); // broken `latest`
    assert!(err(run.resume_point("sft")).contains("not a checkpoint directory"));
    std::fs::write(out.join("latest"), "../elsewhere").unwrap();
    assert!(err(run.resume_point("sft")).contains("not a checkpoint directory"));
    std::fs::write(out.join("latest"), "checkpoint-2").unwrap();
    std::fs::remove_file(out.join("checkpoint-2/trainer_state.json")).unwrap(); // missing state
    assert!(err(run.resume_point("sft")).contains("trainer_state.json"));
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn resume_refuses_changed_settings_unless_allowed() {
    let saved = serde_json::json!({"sft": {"steps": 8, "batch_size": 4, "schedule": {"lr": 0.001, "total": 8}}, "data": "a.bin", "model": {"n_layer": 2}});
    let mut now = saved.clone();
    now["sft"]["steps"] = 12.into(); // extending a run is fine
    now["sft"]["schedule"]["total"] = 12.into();
    assert!(check_settings(&saved, &now, false).unwrap().is_empty());
    now["sft"]["schedule"]["lr"] = 0.002.into();
    now["sft"]["batch_size"] = 8.into();
    now["data"] = "b.bin".into();
    let msg = err(check_settings(&saved, &now, false));
    assert!(msg.contains("sft.schedule.lr: 0.001 -> 0.002") && msg.contains("sft.batch_size: 4 -> 8") && msg.contains("data"), "{msg}");
    assert!(msg.contains("--allow-changed-settings"), "{msg}");
    assert_eq!(check_settings(&saved, &now, true).unwrap().len(), 3);
}

#[test]
fn an_output_that_is_its_input_is_refused() {
    let d = scratch("clobber");
    let input = d.join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"hello\"}\n").unwrap();
    assert!(err(check_output_not_input(&input, &[&input])).contains("would destroy the input"));
    assert!(check_output_not_input(&d.join("./in.jsonl.bin"), &[&input]).is_ok());
    assert!(check_output_not_input(&d.join("sub/../in.jsonl"), &[&input]).is_err() || !d.join("sub").exists());
    std::fs::hard_link(&input, d.join("hard")).unwrap();
    assert!(check_output_not_input(&d.join("hard"), &[&input]).is_err());
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&input, d.join("soft")).unwrap();
        assert!(check_output_not_input(&d.join("soft"), &[&input]).is_err());
    }
    // through the importer: the input survives
    let msg = err(plumb::data::prepare(&input, &input, &plumb::tokenizer::Tokenizer::byte_level(), &Default::default()));
    assert!(msg.contains("would destroy the input"), "{msg}");
    assert_eq!(std::fs::read_to_string(&input).unwrap(), "{\"text\": \"hello\"}\n");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn datasets_checksum_their_tokens_and_record_the_tokenizer() {
    let d = scratch("tokens");
    let path = d.join("t.bin");
    let jsonl = d.join("t.jsonl");
    std::fs::write(&jsonl, "{\"text\": \"hello world\"}\n{\"text\": \"another row\"}\n").unwrap();
    let tok = plumb::tokenizer::Tokenizer::byte_level();
    plumb::data::prepare(&jsonl, &path, &tok, &Default::default()).unwrap();
    let ds = Dataset::open(&path).unwrap();
    assert!(ds.verify_tokens().unwrap());
    assert_eq!(ds.tokenizer_id(), Some(tok.identity()));
    assert_ne!(tok.identity(), plumb::tokenizer::Tokenizer::gpt2_builtin().unwrap().identity());
    drop(ds);
    // flip one token byte: header and offsets still check out, the token checksum does not
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[128] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let ds = Dataset::open(&path).unwrap();
    assert!(err(ds.verify_tokens()).contains("corrupted token ids"));
    assert!(err(plumb::data::inspect(&path, None, 1)).contains("corrupted token ids"));
    // a file from before checksums (flag clear) still opens, unverified
    let old = d.join("old.bin");
    let mut w = DatasetWriter::create(&old, DatasetKind::TokenStream, 256, None).unwrap();
    w.push_row(&[&[1, 2, 3]]).unwrap();
    w.finish().unwrap();
    let mut b = std::fs::read(&old).unwrap();
    let flags = u32::from_le_bytes(b[28..32].try_into().unwrap()) & !(plumb::data::format::FLAG_TOKENS_CHECKSUM);
    b[28..32].copy_from_slice(&flags.to_le_bytes());
    let sum = plumb::data::format::checksum(&b[..120]);
    b[120..128].copy_from_slice(&sum.to_le_bytes());
    std::fs::write(&old, &b).unwrap();
    assert!(!Dataset::open(&old).unwrap().verify_tokens().unwrap());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn checkpoint_files_are_checked_against_their_manifest() {
    let d = scratch("manifest");
    std::fs::write(d.join("model.safetensors"), b"weights").unwrap();
    std::fs::write(d.join("trainer_state.json"), b"{}").unwrap();
    checkpoint::write_manifest(&d).unwrap();
    checkpoint::verify_manifest(&d).unwrap();
    std::fs::write(d.join("model.safetensors"), b"weightz").unwrap();
    let msg = err(checkpoint::verify_manifest(&d));
    assert!(msg.contains("model.safetensors") && msg.contains("does not match manifest.json"), "{msg}");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    assert!(err(checkpoint::verify_manifest(&d)).contains("cannot be read"));
    std::fs::remove_file(d.join("manifest.json")).unwrap();
    checkpoint::verify_manifest(&d).unwrap(); // older checkpoints: a warning, not an error
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn config_json_errors_name_the_file_and_the_field() {
    let base = std::fs::read_to_string("models/presets/gpt-nano/config.json").unwrap();
    let origin = Path::new("some/dir/config.json");
    for (field, value) in [("n_positions", "0"), ("vocab_size", "1000000000"), ("n_head", "3"), ("n_layer", "0"), ("layer_norm_epsilon", "-1")] {
        let mut v: serde_json::Value = serde_json::from_str(&base).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        let msg = err(ModelConfig::from_json(&v.to_string(), origin));
        let named = if field == "n_head" { "n_embd" } else { field };
        assert!(msg.contains("some/dir/config.json") && msg.contains(&format!("`{named}`")), "{field}={value}: {msg}");
    }
    let llama = std::fs::read_to_string("models/presets/llama-nano/config.json").unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&llama).unwrap();
    v["num_key_value_heads"] = 3.into();
    assert!(err(ModelConfig::from_json(&v.to_string(), origin)).contains("num_key_value_heads"));
}

#[test]
fn a_config_that_does_not_match_the_weights_lists_the_tensors() {
    let Some(gpu) = common::gpu() else { return };
    let d = scratch("mismatch");
    let cfg = presets::resolve("gpt-nano").unwrap(); // 2 layers
    Model::new(&gpu, &cfg, 0).unwrap().save(&d).unwrap();
    let text = std::fs::read_to_string(d.join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["n_layer"] = 1.into();
    std::fs::write(d.join("config.json"), v.to_string()).unwrap();
    let msg = err(Model::load(&gpu, &d));
    assert!(msg.contains("unexpected tensors") && msg.contains("h.1.") && msg.contains("model.safetensors"), "{msg}");
    v["n_layer"] = 3.into();
    std::fs::write(d.join("config.json"), v.to_string()).unwrap();
    let msg = err(Model::load(&gpu, &d));
    assert!(msg.contains("missing tensors") && msg.contains("h.2."), "{msg}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn generation_from_nan_weights_is_an_error_not_nul_bytes() {
    let Some(gpu) = common::gpu() else { return };
    let cfg = presets::resolve("gpt-nano").unwrap();
    let model = Model::new(&gpu, &cfg, 0).unwrap();
    let (name, n) = model.params().entries().iter().find(|e| e.name.contains("ln_f.weight")).map(|e| (e.name.clone(), e.shape.iter().product::<usize>())).unwrap();
    model.params().set(&name, &vec![f32::NAN; n]).unwrap();
    let gen = plumb::generate::GenerateConfig { max_new_tokens: 3, ..Default::default() };
    let msg = err(plumb::generate::generate(&model, &[vec![1, 2, 3]], &gen));
    assert!(msg.contains("non-finite") && msg.contains("logits") && msg.contains("step 2"), "{msg}");
}

#[test]
fn a_failed_dataset_write_leaves_no_temp_file() {
    let d = scratch("tmpfile");
    let target = d.join("out.bin");
    std::fs::create_dir_all(target.join("occupied")).unwrap(); // the final rename must fail
    let mut w = DatasetWriter::create(&target, DatasetKind::TokenStream, 256, None).unwrap();
    w.push_row(&[&[1, 2, 3]]).unwrap();
    assert!(w.finish().is_err());
    assert!(!d.join("out.bin.tmp").exists(), "the temp file must be deleted when finishing fails");
    std::fs::remove_dir_all(&d).ok();
}
