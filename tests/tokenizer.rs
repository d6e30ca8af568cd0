//! Tokenizers: GPT-2 reference vectors (from OpenAI's encoder), round trips, special tokens,
//! saving as tokenizer.json and loading back, the byte-level tokenizer, bad files.

use std::path::{Path, PathBuf};

use plumb::tokenizer::Tokenizer;
use plumb::Error;

/// (text, ids from OpenAI's GPT-2 encoder).
const GPT2_VECTORS: &[(&str, &[u32])] = &[
    ("Hello world", &[15496, 995]),
    (" Hello world", &[18435, 995]),
    ("Call me Ishmael.", &[14134, 502, 1148, 21720, 417, 13]),
    ("This movie was great!", &[1212, 3807, 373, 1049, 0]),
];

/// Texts that must survive encode -> decode unchanged.
const ROUND_TRIP: &[&str] = &[
    "",
    "Hello world",
    "  leading and   repeated   spaces\n\nnew lines\ttabs ",
    "Unicode: héllo wörld, naïve café, 日本語, emoji 🎉👍🏽",
    "Numbers 3.14159 and 1,000,000; punctuation!?;:'\"()[]{}",
    "It's I'll we've they're don't",
    "<|endoftext|> special in the middle <|endoftext|>",
];

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tokenizer").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

#[test]
fn gpt2_builtin_matches_reference_ids() {
    let tok = Tokenizer::gpt2_builtin().expect("built-in gpt2");
    for (text, ids) in GPT2_VECTORS {
        assert_eq!(tok.encode(text).expect("encode"), *ids, "encode {text:?}");
        assert_eq!(tok.decode(ids).expect("decode"), *text, "decode {ids:?}");
    }
}

#[test]
fn gpt2_from_files_matches_builtin() {
    let files = Tokenizer::gpt2(repo("models/gpt2-tokenizer/encoder.json"), repo("models/gpt2-tokenizer/vocab.bpe"))
        .expect("gpt2 from files");
    let builtin = Tokenizer::gpt2_builtin().expect("built-in gpt2");
    for (text, ids) in GPT2_VECTORS {
        assert_eq!(files.encode(text).expect("encode"), *ids);
    }
    for text in ROUND_TRIP {
        assert_eq!(files.encode(text).expect("encode"), builtin.encode(text).expect("encode"));
    }
}

#[test]
fn gpt2_special_tokens_and_round_trips() {
    let tok = Tokenizer::gpt2_builtin().expect("built-in gpt2");
    assert_eq!(tok.vocab_size(), 50257);
    assert_eq!(tok.eos_id(), Some(50256));
    assert_eq!(tok.bos_id(), Some(50256));
    assert_eq!(tok.pad_id(), None);
    assert_eq!(tok.encode("<|endoftext|>").expect("encode"), vec![50256]);
    assert_eq!(tok.encode("a<|endoftext|>b").expect("encode"), vec![64, 50256, 65]);
    assert_eq!(tok.id_to_token(995).as_deref(), Some("Ġworld"));
    assert_eq!(tok.token_to_id("Ġworld"), Some(995));
    for text in ROUND_TRIP {
        let ids = tok.encode(text).expect("encode");
        assert!(ids.iter().all(|&i| i < 50257));
        assert_eq!(tok.decode(&ids).expect("decode"), *text, "round trip {text:?} via {ids:?}");
    }
    // Out-of-vocabulary ids are an error, not silently skipped.
    let err = tok.decode(&[15496, 50257]).expect_err("id 50257 is out of range");
    assert!(err.to_string().contains("50257"), "{err}");
    assert!(tok.chat_template().is_none());
}

#[test]
fn byte_level_is_identity_on_bytes() {
    let tok = Tokenizer::byte_level();
    assert_eq!(tok.vocab_size(), 256);
    assert_eq!((tok.eos_id(), tok.bos_id(), tok.pad_id()), (None, None, None));
    assert_eq!(tok.encode("Hi é").expect("encode"), vec![72, 105, 32, 0xC3, 0xA9]);
    for text in ROUND_TRIP {
        let ids = tok.encode(text).expect("encode");
        assert_eq!(ids, text.bytes().map(u32::from).collect::<Vec<_>>());
        assert_eq!(tok.decode(&ids).expect("decode"), *text);
    }
    assert!(tok.decode(&[256]).is_err());
    // Cut in the middle of a UTF-8 sequence: lossy, no error.
    assert_eq!(tok.decode(&[104, 0xC3]).expect("decode"), "h\u{FFFD}");
}

#[test]
fn gpt2_saved_as_tokenizer_json_loads_back_identical() {
    let dir = scratch("gpt2_save");
    let gpt2 = Tokenizer::gpt2_builtin().expect("built-in gpt2");
    let path = dir.join("tokenizer.json");
    gpt2.save(&path).expect("save");
    assert!(!dir.join("tokenizer.json.tmp").exists());
    let back = Tokenizer::from_file(&path).expect("load saved tokenizer.json");
    assert_eq!(back.vocab_size(), 50257);
    assert_eq!(back.eos_id(), Some(50256));
    for (text, ids) in GPT2_VECTORS {
        assert_eq!(back.encode(text).expect("encode"), *ids);
    }
    let corpus = plumb::data::corpus::movie_reviews().expect("corpus");
    for s in corpus.iter().take(300) {
        let ids = gpt2.encode(&s.text).expect("encode");
        assert_eq!(back.encode(&s.text).expect("encode"), ids, "{:?}", s.text);
        assert_eq!(back.decode(&ids).expect("decode"), s.text);
    }
    // A directory holding tokenizer.json loads too.
    let from_dir = Tokenizer::from_file(&dir).expect("load from directory");
    assert_eq!(from_dir.encode("Hello world").expect("encode"), vec![15496, 995]);
}

#[test]
fn byte_level_saved_as_tokenizer_json_loads_back_identical() {
    let dir = scratch("byte_save");
    let path = dir.join("tokenizer.json");
    Tokenizer::byte_level().save(&path).expect("save");
    let back = Tokenizer::from_file(&path).expect("load");
    assert_eq!(back.vocab_size(), 256);
    let all_bytes: String = String::from_utf8_lossy(&(1u8..128).collect::<Vec<_>>()).into_owned();
    for text in ROUND_TRIP.iter().copied().chain([all_bytes.as_str()]) {
        let want: Vec<u32> = text.bytes().map(u32::from).collect();
        assert_eq!(back.encode(text).expect("encode"), want, "{text:?}");
        assert_eq!(back.decode(&want).expect("decode"), text);
    }
}

#[test]
fn chat_template_and_special_tokens_from_tokenizer_config() {
    let dir = scratch("config");
    Tokenizer::gpt2_builtin().expect("gpt2").save(dir.join("tokenizer.json")).expect("save");
    let template = "{% for m in messages %}{{ m.content }}{% endfor %}";
    let config = serde_json::json!({
        "chat_template": template,
        "eos_token": {"content": "<|endoftext|>"},
        "pad_token": "<|endoftext|>"
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("write config");
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).expect("load");
    assert_eq!(tok.chat_template().as_deref(), Some(template));
    assert_eq!(tok.pad_id(), Some(50256));
    // The list form: the `default` entry wins.
    let config = serde_json::json!({"chat_template": [
        {"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}
    ]});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("write config");
    assert_eq!(Tokenizer::from_file(&dir).expect("load").chat_template().as_deref(), Some("D"));
    // Saving carries the template along.
    let tok = Tokenizer::from_file(&dir).expect("load");
    let out = scratch("config_resave");
    tok.save(out.join("tokenizer.json")).expect("save");
    assert_eq!(Tokenizer::from_file(&out).expect("load").chat_template().as_deref(), Some("D"));
}

#[test]
fn bad_tokenizer_files_are_clear_errors() {
    let dir = scratch("bad");
    let missing = dir.join("nope.json");
    match Tokenizer::from_file(&missing) {
        Err(Error::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected an Io error, got {other:?}"),
    }
    let broken = dir.join("tokenizer.json");
    std::fs::write(&broken, "{\"model\": 3").expect("write");
    let err = Tokenizer::from_file(&broken).expect_err("broken json");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    std::fs::write(dir.join("tokenizer_config.json"), "not json").expect("write");
    Tokenizer::gpt2_builtin().expect("gpt2").save(dir.join("other.json")).expect("save");
    // save() replaced the broken config with a valid one; break it again and load.
    std::fs::write(dir.join("tokenizer_config.json"), "not json").expect("write");
    let err = Tokenizer::from_file(dir.join("other.json")).expect_err("broken config");
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
    let bad_merges = dir.join("vocab.bpe");
    std::fs::write(&bad_merges, "#version: 0.2\nĠ t extra\n").expect("write");
    let err = Tokenizer::gpt2(repo("models/gpt2-tokenizer/encoder.json"), &bad_merges).expect_err("bad merges");
    assert!(err.to_string().contains("line 2"), "{err}");
}

#[test]
fn llama_style_tokenizer_json_with_bos_post_processor() {
    let tok = Tokenizer::from_file(repo("tests/fixtures/wordlevel-bos")).expect("fixture tokenizer");
    assert_eq!(tok.vocab_size(), 11);
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (Some(0), Some(1), None));
    assert!(tok.chat_template().expect("template").contains("message['role']"));
    assert_eq!(tok.encode("hello world").expect("encode"), vec![3, 4]);
    assert_eq!(tok.encode_with_special_tokens("hello world").expect("encode"), vec![0, 3, 4]);
    assert_eq!(tok.encode("the sky is purple.").expect("encode"), vec![5, 6, 7, 2, 10], "unknown word -> [UNK]");
    assert_eq!(tok.encode("hello</s>").expect("encode"), vec![3, 1], "special tokens in text are recognised");
    assert_eq!(tok.decode(&[0, 3, 4]).expect("decode"), "<s> hello world");
    // GPT-2 and byte-level add nothing as special tokens.
    let gpt2 = Tokenizer::gpt2_builtin().expect("gpt2");
    assert_eq!(gpt2.encode_with_special_tokens("Hello world").expect("encode"), vec![15496, 995]);
    assert_eq!(Tokenizer::byte_level().encode_with_special_tokens("A").expect("encode"), vec![65]);
}
