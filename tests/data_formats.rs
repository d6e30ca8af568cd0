//! Dataset files (round trips for every kind, u16 and u32 ids, reference log-probs, bad files
//! of every sort), JSONL import in TRL's formats, inspect, the built-in corpus, and the
//! `plumb data` CLI glue. CPU only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use plumb::data::corpus::{movie_reviews, vader_judge, vader_lexicon};
use plumb::data::format::{self, Header, HEADER_LEN};
use plumb::data::{
    inspect, prepare, prepare_with_progress, write_reference_logps, Dataset, DatasetKind, DatasetWriter, OutputFormat,
    Overflow, PreferenceDataset, PrepareOptions, PromptDataset, SftDataset, TokenDType, TokenStream,
};
use plumb::tokenizer::Tokenizer;

#[path = "../tools/plumb/data.rs"]
mod cli;
/// The CLI's shared helpers, which `data.rs` uses (`crate::common`).
#[path = "../tools/plumb/common.rs"]
#[allow(dead_code)]
mod common;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("data_formats").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Files in `dir`, sorted (to prove no stray .tmp and no partial output).
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A tiny deterministic generator (no dependency on rand's stream stability).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u32) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % u64::from(n)) as u32
    }
}

/// Random rows of `kind`: some empty segments, ids up to vocab - 1.
fn random_rows(kind: DatasetKind, rows: usize, vocab: u32, seed: u64) -> Vec<Vec<Vec<u32>>> {
    let mut g = Lcg(seed);
    (0..rows)
        .map(|_| {
            (0..kind.segments())
                .map(|_| {
                    let len = g.next(9) as usize;
                    (0..len).map(|i| if i == 0 { vocab - 1 } else { g.next(vocab) }).collect()
                })
                .collect()
        })
        .collect()
}

fn write(path: &Path, kind: DatasetKind, vocab: u32, rows: &[Vec<Vec<u32>>], reserve: bool) {
    let mut w = DatasetWriter::create(path, kind, vocab, Some(vocab - 1)).expect("create");
    if reserve {
        w.reserve_reference_logps().expect("reserve");
    }
    for r in rows {
        let segs: Vec<&[u32]> = r.iter().map(Vec::as_slice).collect();
        w.push_row(&segs).expect("push");
    }
    w.finish().expect("finish");
}

const KINDS: [DatasetKind; 4] =
    [DatasetKind::TokenStream, DatasetKind::PromptCompletion, DatasetKind::Preference, DatasetKind::Prompts];

#[test]
fn every_kind_round_trips_with_u16_and_u32_ids() {
    let dir = scratch("round_trip");
    for (k, kind) in KINDS.into_iter().enumerate() {
        for (vocab, dtype) in [(50257u32, TokenDType::U16), (65536, TokenDType::U16), (128_256, TokenDType::U32)] {
            let path = dir.join(format!("{k}_{vocab}.bin"));
            let rows = random_rows(kind, 37, vocab, k as u64 * 1000 + u64::from(vocab));
            write(&path, kind, vocab, &rows, false);
            let ds = Dataset::open(&path).expect("open");
            assert_eq!((ds.kind(), ds.dtype(), ds.vocab_size(), ds.eos_id()), (kind, dtype, vocab, Some(vocab - 1)));
            assert_eq!(ds.n_rows(), rows.len());
            let total: usize = rows.iter().flatten().map(Vec::len).sum();
            assert_eq!(ds.n_tokens(), total);
            let flat: Vec<u32> = rows.iter().flatten().flatten().copied().collect();
            assert_eq!(ds.tokens().to_vec(), flat);
            for (r, row) in rows.iter().enumerate() {
                for (s, seg) in row.iter().enumerate() {
                    assert_eq!(ds.segment(r, s).expect("segment").to_vec(), *seg, "kind {kind:?} row {r} seg {s}");
                }
                assert_eq!(ds.row(r).expect("row").to_vec(), row.concat());
            }
            assert!(ds.segment(rows.len(), 0).is_none());
            assert!(ds.segment(0, kind.segments()).is_none());
            assert_eq!(ds.max_token_id(), Some(vocab - 1));
            // The typed view for this kind opens; the others refuse with a clear message.
            let typed_ok = [
                TokenStream::open(&path).is_ok(),
                SftDataset::open(&path).is_ok(),
                PreferenceDataset::open(&path).is_ok(),
                PromptDataset::open(&path).is_ok(),
            ];
            assert_eq!(typed_ok.iter().filter(|&&b| b).count(), 1);
            assert!(typed_ok[k]);
        }
    }
    // Typed accessors name the segments.
    let path = dir.join("pref.bin");
    let rows = vec![vec![vec![1, 2], vec![3], vec![4, 5, 6]]];
    write(&path, DatasetKind::Preference, 10, &rows, false);
    let p = PreferenceDataset::open(&path).expect("open");
    let row = p.get(0).expect("row 0");
    assert_eq!((row.prompt.to_vec(), row.chosen.to_vec(), row.rejected.to_vec()), (vec![1, 2], vec![3], vec![4, 5, 6]));
    assert_eq!(row.reference_logps, None);
    assert!(p.get(1).is_none());
    let err = SftDataset::open(&path).expect_err("wrong kind");
    assert!(err.to_string().contains("expected a prompt/completion dataset, found a preference dataset"), "{err}");
}

#[test]
fn writer_rejects_bad_rows_and_leaves_nothing_when_not_finished() {
    let dir = scratch("writer");
    let path = dir.join("out.bin");
    let mut w = DatasetWriter::create(&path, DatasetKind::PromptCompletion, 100, None).expect("create");
    assert!(w.push_row(&[&[1, 2]]).is_err(), "one segment for a two-segment kind");
    assert!(w.push_row(&[&[1], &[100]]).is_err(), "id 100 is outside a vocabulary of 100");
    w.push_row(&[&[1], &[2]]).expect("push");
    assert!(dir.join("out.bin.tmp").exists());
    assert!(!path.exists(), "output must not appear before finish");
    drop(w);
    assert_eq!(listing(&dir), Vec::<String>::new(), "dropped writer leaves nothing");
    let mut w = DatasetWriter::create(&path, DatasetKind::TokenStream, 100, None).expect("create");
    assert!(w.reserve_reference_logps().is_err(), "only preference files hold reference log-probs");
    w.push_row(&[&[7, 8, 9]]).expect("push");
    w.finish().expect("finish");
    assert_eq!(listing(&dir), vec!["out.bin"]);
}

#[test]
fn reference_logps_fill_in_place_or_by_atomic_rewrite() {
    let dir = scratch("reference");
    let rows = random_rows(DatasetKind::Preference, 5, 300, 7);
    let values: Vec<[f32; 2]> = (0..5).map(|i| [-(i as f32) - 0.5, -(i as f32) * 2.0 - 0.25]).collect();
    // Reserved: written in place, the file length does not change.
    let reserved = dir.join("reserved.bin");
    write(&reserved, DatasetKind::Preference, 300, &rows, true);
    let len_before = std::fs::metadata(&reserved).expect("meta").len();
    {
        let ds = Dataset::open(&reserved).expect("open");
        assert!(ds.has_reference_section());
        assert_eq!(ds.reference_logps(0), None, "reserved but not filled reads as absent");
    }
    write_reference_logps(&reserved, &values).expect("fill in place");
    assert_eq!(std::fs::metadata(&reserved).expect("meta").len(), len_before);
    // Not reserved: rewritten with the section.
    let plain = dir.join("plain.bin");
    write(&plain, DatasetKind::Preference, 300, &rows, false);
    write_reference_logps(&plain, &values).expect("fill by rewrite");
    for path in [&reserved, &plain] {
        let p = PreferenceDataset::open(path).expect("open");
        for (i, v) in values.iter().enumerate() {
            let row = p.get(i).expect("row");
            assert_eq!(row.reference_logps, Some(*v));
            assert_eq!(row.chosen.to_vec(), rows[i][1], "tokens survive the rewrite");
        }
    }
    assert_eq!(listing(&dir), vec!["plain.bin", "reserved.bin"]);
    assert!(write_reference_logps(&plain, &values[..4]).is_err(), "one value pair per row");
    let sft = dir.join("sft.bin");
    write(&sft, DatasetKind::PromptCompletion, 300, &random_rows(DatasetKind::PromptCompletion, 5, 300, 8), false);
    assert!(write_reference_logps(&sft, &values).is_err(), "not a preference file");
}

/// A small valid file to damage.
fn small_file(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("good.bin");
    write(&path, DatasetKind::Preference, 1000, &random_rows(DatasetKind::Preference, 6, 1000, 3), true);
    let bytes = std::fs::read(&path).expect("read");
    (path, bytes)
}

/// Open `bytes` written to `name`; on success, touch every row (must not panic).
fn open_bytes(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    match Dataset::open(&path) {
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(name), "error must name the file: {msg}");
            Err(msg)
        }
        Ok(ds) => {
            for r in 0..ds.n_rows() {
                for s in 0..ds.kind().segments() {
                    let t = ds.segment(r, s).expect("validated rows exist");
                    let _ = t.iter().sum::<u32>();
                }
                let _ = ds.reference_logps(r);
            }
            Ok(())
        }
    }
}

#[test]
fn truncated_files_are_errors_at_every_length() {
    let dir = scratch("truncated");
    let (_, bytes) = small_file(&dir);
    let h = Header::parse(Path::new("x"), &bytes).expect("header");
    // Every cut: inside the header, the tokens, the offsets table and the reference section.
    assert!(h.tokens.0 < h.offsets.0 && h.offsets.0 < h.reference.0);
    for cut in 0..bytes.len() {
        let err = open_bytes(&dir, "cut.bin", &bytes[..cut]).expect_err("a truncated file must not open");
        if cut < HEADER_LEN as usize {
            assert!(err.contains("truncated"), "cut {cut}: {err}");
        } else {
            assert!(err.contains("truncated") || err.contains("ends at byte"), "cut {cut}: {err}");
        }
    }
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 8]);
    let err = open_bytes(&dir, "long.bin", &longer).expect_err("trailing data");
    assert!(err.contains("trailing"), "{err}");
    assert!(open_bytes(&dir, "whole.bin", &bytes).is_ok());
}

#[test]
fn every_single_byte_corruption_is_an_error_or_harmless() {
    let dir = scratch("flips");
    let (_, bytes) = small_file(&dir);
    let h = Header::parse(Path::new("x"), &bytes).expect("header");
    let tokens = h.tokens.0 as usize..(h.tokens.0 + h.tokens.1) as usize;
    let reference = h.reference.0 as usize..(h.reference.0 + h.reference.1) as usize;
    let padding = tokens.end..h.offsets.0 as usize;
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x5A;
        let opened = open_bytes(&dir, "flip.bin", &bad);
        // Only token ids, padding and reference values are not checksummed (and still never panic).
        let payload = tokens.contains(&i) || padding.contains(&i) || reference.contains(&i);
        assert_eq!(opened.is_ok(), payload, "byte {i} flipped: {opened:?}");
    }
}

/// Rewrite header fields and offsets of `bytes`, keeping both checksums valid, so only the
/// structural checks can catch the damage.
fn forge(bytes: &[u8], edit: impl FnOnce(&mut Header, &mut Vec<u64>)) -> Vec<u8> {
    let mut h = Header::parse(Path::new("x"), bytes).expect("header");
    let table = &bytes[h.offsets.0 as usize..(h.offsets.0 + h.offsets.1) as usize];
    let mut offs: Vec<u64> =
        table.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
    edit(&mut h, &mut offs);
    let mut out = bytes.to_vec();
    let table: Vec<u8> = offs.iter().flat_map(|o| o.to_le_bytes()).collect();
    h.offsets_checksum = format::checksum(&table);
    let at = h.offsets.0 as usize;
    if at + table.len() <= out.len() {
        out[at..at + table.len()].copy_from_slice(&table);
    }
    out[..HEADER_LEN as usize].copy_from_slice(&h.to_bytes());
    out
}

#[test]
fn forged_headers_and_offsets_are_errors() {
    let dir = scratch("forged");
    let (_, bytes) = small_file(&dir);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("offset past the tokens", forge(&bytes, |h, o| o[5] = h.n_tokens + 1), "corrupted offsets table"),
        ("first offset not 0", forge(&bytes, |_, o| o[0] = 1), "entry 0"),
        ("huge offset", forge(&bytes, |_, o| o[4] = u64::MAX), "corrupted offsets table"),
        ("more rows than the table", forge(&bytes, |h, _| h.n_rows += 1), "offsets section"),
        ("row count overflow", forge(&bytes, |h, _| h.n_rows = u64::MAX / 2), ""),
        ("token count mismatch", forge(&bytes, |h, _| h.n_tokens += 1), "tokens section"),
        ("tokens past the end", forge(&bytes, |h, _| h.tokens.0 = u64::MAX - 4), ""),
        ("overlapping sections", forge(&bytes, |h, _| h.offsets.0 = h.tokens.0), "misplaced"),
        ("misaligned section", forge(&bytes, |h, _| h.tokens.0 += 1), ""),
        ("reference on wrong size", forge(&bytes, |h, _| h.reference.1 -= 8), "reference section"),
        ("u16 with a big vocabulary", forge(&bytes, |h, _| h.vocab_size = 70_000), "does not fit"),
    ];
    for (what, file, needle) in cases {
        let err = open_bytes(&dir, "forged.bin", &file).expect_err(what);
        assert!(err.contains(needle), "{what}: {err}");
    }
    // A forged decreasing offset is caught even though the checksums hold.
    let dec = forge(&bytes, |_, o| o[2] = o[3] + 1);
    let err = open_bytes(&dir, "forged.bin", &dec).expect_err("decreasing");
    assert!(err.contains("corrupted offsets table: entry"), "{err}");
}

#[test]
fn wrong_magic_version_kind_and_checksum_are_named() {
    let dir = scratch("header");
    let (_, bytes) = small_file(&dir);
    let mut magic = bytes.clone();
    magic[0] = b'X';
    assert!(open_bytes(&dir, "magic.bin", &magic).expect_err("magic").contains("not a plumb dataset"));
    let mut version = bytes.clone();
    version[8..12].copy_from_slice(&2u32.to_le_bytes());
    let err = open_bytes(&dir, "version.bin", &version).expect_err("version");
    assert!(err.contains("format version 2") && err.contains("reads version 1"), "{err}");
    let mut kind = bytes.clone();
    kind[12..16].copy_from_slice(&9u32.to_le_bytes());
    let sum = format::checksum(&kind[..120]);
    kind[120..128].copy_from_slice(&sum.to_le_bytes());
    assert!(open_bytes(&dir, "kind.bin", &kind).expect_err("kind").contains("unknown dataset kind 9"));
    let mut header = bytes.clone();
    header[40] ^= 1;
    assert!(open_bytes(&dir, "sum.bin", &header).expect_err("checksum").contains("corrupted header"));
    assert!(open_bytes(&dir, "empty.bin", &[]).expect_err("empty").contains("truncated"));
    assert!(open_bytes(&dir, "json.bin", b"{\"text\": \"not a dataset\"}\n").is_err());
    let missing = Dataset::open(dir.join("missing.bin")).expect_err("missing");
    assert!(missing.to_string().contains("missing.bin"), "{missing}");
}

// ---------------------------------------------------------------------------------------------
// JSONL import

fn jsonl(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").expect("write jsonl");
    path
}

fn bytes_tok() -> Tokenizer {
    Tokenizer::byte_level()
}

fn text_of(t: plumb::data::Tokens<'_>) -> String {
    Tokenizer::byte_level().decode(&t.to_vec()).expect("decode")
}

#[test]
fn text_rows_become_a_token_stream() {
    let dir = scratch("jsonl_text");
    let gpt2 = Tokenizer::gpt2_builtin().expect("gpt2");
    let input =
        jsonl(&dir, "lm.jsonl", &[r#"{"text": "Hello world"}"#, "", r#"{"text": "Call me Ishmael.", "meta": 3}"#]);
    let out = dir.join("lm.bin");
    let opts = PrepareOptions { append_eos: true, ..Default::default() };
    let mut calls = Vec::new();
    let sum = prepare_with_progress(&input, &out, &gpt2, &opts, &mut |done, total| calls.push((done, total)))
        .expect("prepare");
    let size = std::fs::metadata(&input).expect("meta").len();
    assert_eq!(calls.last(), Some(&(size, size)), "progress ends at the file size");
    assert_eq!((sum.kind, sum.rows, sum.lines, sum.blank_lines, sum.tokens), (DatasetKind::TokenStream, 2, 2, 1, 10));
    let ts = TokenStream::open(&out).expect("open");
    assert_eq!(ts.document(0).expect("doc").to_vec(), vec![15496, 995, 50256]);
    assert_eq!(ts.document(1).expect("doc").to_vec(), vec![14134, 502, 1148, 21720, 417, 13, 50256]);
    assert_eq!(ts.tokens().len(), 10);
    assert_eq!(ts.dataset().eos_id(), Some(50256));
    assert_eq!(listing(&dir), vec!["lm.bin", "lm.jsonl"]);
}

#[test]
fn prompt_completion_becomes_sft() {
    let dir = scratch("jsonl_sft");
    let input = jsonl(
        &dir,
        "sft.jsonl",
        &[r#"{"prompt": "2+2=", "completion": "4"}"#, r#"{"prompt": "", "completion": "hi"}"#],
    );
    let out = dir.join("sft.bin");
    let sum = prepare(&input, &out, &bytes_tok(), &PrepareOptions::default()).expect("prepare");
    assert_eq!((sum.kind, sum.rows, sum.tokens), (DatasetKind::PromptCompletion, 2, 7));
    let d = SftDataset::open(&out).expect("open");
    let r = d.get(0).expect("row");
    assert_eq!((text_of(r.prompt), text_of(r.completion)), ("2+2=".into(), "4".into()));
    assert_eq!(text_of(d.get(1).expect("row").prompt), "");
}

#[test]
fn preference_with_explicit_and_implicit_prompt() {
    let dir = scratch("jsonl_pref");
    let input = jsonl(
        &dir,
        "pref.jsonl",
        &[
            r#"{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}"#,
            r#"{"chosen": "The sky is blue.", "rejected": "The sky is green."}"#,
            r#"{"chosen": "Yes", "rejected": "No"}"#,
            r#"{"chosen": "abc", "rejected": "abcdef"}"#,
        ],
    );
    let out = dir.join("pref.bin");
    let sum = prepare(&input, &out, &bytes_tok(), &PrepareOptions::default()).expect("prepare");
    assert_eq!((sum.kind, sum.rows), (DatasetKind::Preference, 3));
    assert_eq!(sum.dropped.get("empty chosen or rejected"), Some(&1), "abc vs abcdef leaves chosen empty: {sum}");
    let p = PreferenceDataset::open(&out).expect("open");
    let row = |i: usize| {
        let r = p.get(i).expect("row");
        (text_of(r.prompt), text_of(r.chosen), text_of(r.rejected))
    };
    let want = ("The sky is".to_string(), " blue.".to_string(), " green.".to_string());
    assert_eq!(row(0), want);
    assert_eq!(row(1), want, "implicit prompt: common prefix, the space goes with the completions");
    assert_eq!(row(2), (String::new(), "Yes".into(), "No".into()));
}

#[test]
fn conversations_use_the_chatml_template() {
    let dir = scratch("jsonl_chat");
    let input = jsonl(
        &dir,
        "chat.jsonl",
        &[
            r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}"#,
            r#"{"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}]}"#,
        ],
    );
    let out = dir.join("chat.bin");
    let sum = prepare(&input, &out, &bytes_tok(), &PrepareOptions::default()).expect("prepare");
    assert_eq!((sum.kind, sum.rows, sum.conversational_rows), (DatasetKind::PromptCompletion, 2, 2));
    assert!(sum.to_string().contains("ChatML"), "{sum}");
    let d = SftDataset::open(&out).expect("open");
    let r = d.get(0).expect("row");
    assert_eq!(
        text_of(r.prompt),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(text_of(r.completion), "Hello!<|im_end|>\n");
    let r = d.get(1).expect("row");
    assert_eq!(text_of(r.prompt), "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n");
    assert_eq!(text_of(r.completion), "4<|im_end|>\n");

    // The same conversation as a token stream: the whole rendering.
    let stream = dir.join("stream.bin");
    prepare(&input, &stream, &bytes_tok(), &PrepareOptions { format: OutputFormat::Text, ..Default::default() })
        .expect("prepare");
    let ts = TokenStream::open(&stream).expect("open");
    assert_eq!(
        text_of(ts.document(0).expect("doc")),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    );

    // Conversational preference with implicit prompt: the common messages become the prompt.
    let pref = jsonl(
        &dir,
        "pref.jsonl",
        &[
            r#"{"chosen": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue"}], "rejected": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Green"}]}"#,
        ],
    );
    let out = dir.join("pref.bin");
    prepare(&pref, &out, &bytes_tok(), &PrepareOptions::default()).expect("prepare");
    let r = PreferenceDataset::open(&out).expect("open");
    let r = r.get(0).expect("row");
    assert_eq!(text_of(r.prompt), "<|im_start|>user\nSky?<|im_end|>\n<|im_start|>assistant\n");
    assert_eq!((text_of(r.chosen), text_of(r.rejected)), ("Blue<|im_end|>\n".into(), "Green<|im_end|>\n".into()));

    // Prompts from conversations end with the generation prompt.
    let prompts = dir.join("prompts.bin");
    let s = prepare(
        &input,
        &prompts,
        &bytes_tok(),
        &PrepareOptions { format: OutputFormat::Prompts, ..Default::default() },
    )
    .expect("prepare");
    assert_eq!(s.kind, DatasetKind::Prompts);
    let p = PromptDataset::open(&prompts).expect("open");
    assert_eq!(text_of(p.get(1).expect("row")), "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n");
}

#[test]
fn prompt_only_rows_become_prompts() {
    let dir = scratch("jsonl_prompts");
    let input = jsonl(&dir, "p.jsonl", &[r#"{"prompt": "Once upon a time"}"#, r#"{"prompt": "The movie was"}"#]);
    let out = dir.join("p.bin");
    let sum = prepare(&input, &out, &bytes_tok(), &PrepareOptions::default()).expect("prepare");
    assert_eq!((sum.kind, sum.rows), (DatasetKind::Prompts, 2));
    let p = PromptDataset::open(&out).expect("open");
    assert_eq!(text_of(p.get(1).expect("row")), "The movie was");
    // --format sft on prompt-only rows: a clear error, no output.
    let bad = dir.join("bad.bin");
    let err = prepare(&input, &bad, &bytes_tok(), &PrepareOptions { format: OutputFormat::Sft, ..Default::default() })
        .expect_err("sft");
    assert!(err.to_string().contains("p.jsonl:1: a prompt-only row cannot become a prompt/completion row"), "{err}");
    assert!(!bad.exists());
}

/// Prepare `lines` (byte tokenizer) expecting an error; return its message and check no output.
fn prepare_err(dir: &Path, name: &str, lines: &[&str]) -> String {
    let input = jsonl(dir, name, lines);
    let out = dir.join(format!("{name}.bin"));
    let err = prepare(&input, &out, &bytes_tok(), &PrepareOptions::default()).expect_err("must fail").to_string();
    assert!(!out.exists(), "no output after an error");
    assert!(!dir.join(format!("{name}.bin.tmp")).exists(), "no stray .tmp after an error");
    err
}

#[test]
fn malformed_lines_name_file_line_and_field() {
    let dir = scratch("jsonl_errors");
    let mut lines: Vec<String> =
        (0..16).map(|i| format!(r#"{{"prompt": "p{i}", "chosen": "a", "rejected": "b"}}"#)).collect();
    lines.push(r#"{"prompt": "p", "chosen": 5, "rejected": "b"}"#.into());
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let err = prepare_err(&dir, "data.jsonl", &refs);
    assert!(
        err.ends_with("data.jsonl:17: field `chosen`: expected a string or a list of messages, found a number"),
        "{err}"
    );

    let err =
        prepare_err(&dir, "broken.jsonl", &[r#"{"text": "ok"}"#, r#"{"text": "ok"}"#, r#"{"text": "unterminated"#]);
    assert!(err.contains("broken.jsonl:3: invalid JSON"), "{err}");
    let err = prepare_err(&dir, "missing.jsonl", &[r#"{"prompt": "a", "completion": "b"}"#, r#"{"completion": "b"}"#]);
    assert!(err.contains("missing.jsonl:2: missing field `prompt`"), "{err}");
    let err = prepare_err(&dir, "type.jsonl", &[r#"{"text": ["a"]}"#]);
    assert!(err.contains("type.jsonl:1: field `text`: expected a string"), "{err}");
    let err = prepare_err(
        &dir,
        "nested.jsonl",
        &[r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": 7}]}"#],
    );
    assert!(err.contains("nested.jsonl:1: field `messages[1].content`: expected a string"), "{err}");
    let err = prepare_err(&dir, "last.jsonl", &[r#"{"messages": [{"role": "user", "content": "a"}]}"#]);
    assert!(err.contains("last.jsonl:1: field `messages`: the last message must be from the `assistant`"), "{err}");
    let err = prepare_err(
        &dir,
        "mixed.jsonl",
        &[r#"{"prompt": "a", "completion": [{"role": "assistant", "content": "b"}]}"#],
    );
    assert!(err.contains("mixed.jsonl:1: field `completion`: expected a string, like `prompt`"), "{err}");
    let err = prepare_err(&dir, "array.jsonl", &["[1, 2]"]);
    assert!(err.contains("array.jsonl:1: expected a JSON object"), "{err}");
    let err = prepare_err(&dir, "unknown.jsonl", &[r#"{"question": "a"}"#]);
    assert!(err.contains("unknown.jsonl:1: no known fields") && err.contains("question"), "{err}");
    let err = prepare_err(&dir, "empty.jsonl", &["", "  "]);
    assert!(err.contains("no rows"), "{err}");
    std::fs::write(dir.join("latin1.jsonl"), b"{\"text\": \"caf\xe9\"}\n").expect("write");
    let err = prepare(&dir.join("latin1.jsonl"), &dir.join("l.bin"), &bytes_tok(), &PrepareOptions::default())
        .expect_err("latin1");
    assert!(err.to_string().contains("latin1.jsonl:1: not valid UTF-8"), "{err}");
    // Only inputs remain: no output and no .tmp from any failure above.
    assert!(listing(&dir).iter().all(|f| f.ends_with(".jsonl")), "{:?}", listing(&dir));
}

#[test]
fn error_late_in_a_long_file_leaves_no_output() {
    let dir = scratch("jsonl_late_error");
    let mut lines: Vec<String> = (0..5000).map(|i| format!(r#"{{"text": "document number {i}"}}"#)).collect();
    lines.push(r#"{"text": 12}"#.into());
    let input = dir.join("big.jsonl");
    std::fs::write(&input, lines.join("\n")).expect("write");
    let out = dir.join("big.bin");
    std::fs::write(&out, b"previous complete output").expect("write");
    let err = prepare(&input, &out, &bytes_tok(), &PrepareOptions::default()).expect_err("late error");
    assert!(err.to_string().contains("big.jsonl:5001: field `text`"), "{err}");
    assert_eq!(std::fs::read(&out).expect("read"), b"previous complete output", "an old output is left untouched");
    assert_eq!(listing(&dir), vec!["big.bin", "big.jsonl"]);
}

#[test]
fn rows_keep_file_order_across_batches_and_threads_and_the_first_error_wins() {
    let dir = scratch("jsonl_order");
    // 20,000 lines: more than one read batch, split across worker threads.
    let lines: Vec<String> = (0..20_000)
        .map(|i| if i % 1000 == 999 { String::new() } else { format!(r#"{{"text": "doc {i}"}}"#) })
        .collect();
    let input = dir.join("many.jsonl");
    std::fs::write(&input, lines.join("\n")).expect("write");
    let out = dir.join("many.bin");
    let sum = prepare(&input, &out, &bytes_tok(), &PrepareOptions::default()).expect("prepare");
    assert_eq!((sum.rows, sum.blank_lines), (19_980, 19), "the last empty line has no newline: not a line");
    let ts = TokenStream::open(&out).expect("open");
    for (doc, i) in (0..20_000).filter(|i| i % 1000 != 999).enumerate() {
        assert_eq!(text_of(ts.document(doc).expect("doc")), format!("doc {i}"));
    }
    // Two bad lines far apart: the earlier one is reported.
    let mut lines: Vec<String> = (0..3000).map(|i| format!(r#"{{"text": "doc {i}"}}"#)).collect();
    lines[2500] = "{oops".into();
    lines[1200] = r#"{"text": null}"#.into();
    let input = dir.join("two_errors.jsonl");
    std::fs::write(&input, lines.join("\n")).expect("write");
    let err = prepare(&input, &dir.join("two.bin"), &bytes_tok(), &PrepareOptions::default()).expect_err("errors");
    assert!(err.to_string().contains("two_errors.jsonl:1201: field `text`"), "{err}");
    assert_eq!(listing(&dir), vec!["many.bin", "many.jsonl", "two_errors.jsonl"]);
}

#[test]
fn max_len_truncates_or_drops_and_reports() {
    let dir = scratch("jsonl_max_len");
    let input = jsonl(
        &dir,
        "sft.jsonl",
        &[
            r#"{"prompt": "abc", "completion": "de"}"#,
            r#"{"prompt": "abc", "completion": "defghij"}"#,
            r#"{"prompt": "abcdefghij", "completion": "k"}"#,
            r#"{"prompt": "a", "completion": ""}"#,
        ],
    );
    let drop = dir.join("drop.bin");
    let opts = PrepareOptions { max_len: Some(6), overflow: Overflow::Drop, ..Default::default() };
    let sum = prepare(&input, &drop, &bytes_tok(), &opts).expect("prepare");
    assert_eq!((sum.rows, sum.truncated, sum.dropped_total()), (1, 0, 3));
    assert_eq!(sum.dropped.get("longer than max length"), Some(&2));
    assert_eq!(sum.dropped.get("empty completion"), Some(&1));
    assert!(sum.to_string().contains("longer than max length"), "{sum}");

    let trunc = dir.join("trunc.bin");
    let opts = PrepareOptions { max_len: Some(6), overflow: Overflow::Truncate, ..Default::default() };
    let sum = prepare(&input, &trunc, &bytes_tok(), &opts).expect("prepare");
    assert_eq!((sum.rows, sum.truncated), (2, 1));
    assert_eq!(sum.dropped.get("prompt alone reaches max length"), Some(&1));
    let d = SftDataset::open(&trunc).expect("open");
    assert_eq!(text_of(d.get(1).expect("row").completion), "def", "completion cut to 6 - 3 tokens");

    // Prompts are cut at the start (generation continues from the end); documents at the end.
    let p = jsonl(&dir, "p.jsonl", &[r#"{"prompt": "0123456789"}"#]);
    prepare(&p, &dir.join("p.bin"), &bytes_tok(), &PrepareOptions { max_len: Some(4), ..Default::default() })
        .expect("prepare");
    assert_eq!(text_of(PromptDataset::open(dir.join("p.bin")).expect("open").get(0).expect("row")), "6789");
    let t = jsonl(&dir, "t.jsonl", &[r#"{"text": "0123456789"}"#]);
    prepare(&t, &dir.join("t.bin"), &bytes_tok(), &PrepareOptions { max_len: Some(4), ..Default::default() })
        .expect("prepare");
    assert_eq!(text_of(TokenStream::open(dir.join("t.bin")).expect("open").document(0).expect("doc")), "0123");

    // Preference: both completions fit beside the prompt; all rows dropped is an error.
    let pref = jsonl(&dir, "pref.jsonl", &[r#"{"prompt": "ab", "chosen": "cdef", "rejected": "gh"}"#]);
    let s =
        prepare(&pref, &dir.join("pref.bin"), &bytes_tok(), &PrepareOptions { max_len: Some(5), ..Default::default() })
            .expect("prepare");
    assert_eq!(s.truncated, 1);
    let r = PreferenceDataset::open(dir.join("pref.bin")).expect("open");
    let r = r.get(0).expect("row");
    assert_eq!((text_of(r.chosen), text_of(r.rejected)), ("cde".into(), "gh".into()));
    let none = prepare(
        &pref,
        &dir.join("none.bin"),
        &bytes_tok(),
        &PrepareOptions { max_len: Some(2), overflow: Overflow::Drop, ..Default::default() },
    );
    assert!(none.expect_err("all dropped").to_string().contains("no rows written"));
    assert!(!dir.join("none.bin").exists());
}

#[test]
fn append_eos_needs_an_eos_token() {
    let dir = scratch("jsonl_eos");
    let input = jsonl(&dir, "a.jsonl", &[r#"{"prompt": "a", "completion": "b"}"#]);
    let opts = PrepareOptions { append_eos: true, ..Default::default() };
    let err = prepare(&input, &dir.join("a.bin"), &bytes_tok(), &opts).expect_err("byte-level has no EOS");
    assert!(err.to_string().contains("no EOS"), "{err}");
    let gpt2 = Tokenizer::gpt2_builtin().expect("gpt2");
    prepare(&input, &dir.join("a.bin"), &gpt2, &opts).expect("prepare");
    let d = SftDataset::open(dir.join("a.bin")).expect("open");
    let r = d.get(0).expect("row");
    assert_eq!((r.prompt.to_vec(), r.completion.to_vec()), (vec![64], vec![65, 50256]), "EOS on the completion only");
}

#[test]
fn special_tokens_go_on_the_first_part_of_each_row() {
    let dir = scratch("jsonl_special");
    let tok = Tokenizer::from_file(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wordlevel-bos"))
        .expect("fixture");
    let input = jsonl(
        &dir,
        "sft.jsonl",
        &[r#"{"prompt": "hello", "completion": "world"}"#, r#"{"prompt": "the sky is", "completion": ""}"#],
    );
    let opts = PrepareOptions { append_eos: true, ..Default::default() };
    let sum = prepare(&input, &dir.join("bos.bin"), &tok, &opts).expect("prepare");
    assert_eq!(sum.dropped.get("empty completion"), Some(&1), "EOS alone does not make a completion");
    let d = SftDataset::open(dir.join("bos.bin")).expect("open");
    let r = d.get(0).expect("row");
    assert_eq!(
        (r.prompt.to_vec(), r.completion.to_vec()),
        (vec![0, 3], vec![4, 1]),
        "BOS on the prompt, EOS on the completion"
    );
    let opts = PrepareOptions { add_special_tokens: false, ..Default::default() };
    prepare(&input, &dir.join("plain.bin"), &tok, &opts).expect("prepare");
    let d = SftDataset::open(dir.join("plain.bin")).expect("open");
    assert_eq!(d.get(0).expect("row").prompt.to_vec(), vec![3]);
    // Documents: BOS first; an empty text is still empty.
    let docs = jsonl(&dir, "docs.jsonl", &[r#"{"text": "hello world"}"#, r#"{"text": ""}"#]);
    let sum = prepare(&docs, &dir.join("docs.bin"), &tok, &PrepareOptions::default()).expect("prepare");
    assert_eq!((sum.rows, sum.dropped.get("empty text")), (1, Some(&1)));
    assert_eq!(
        TokenStream::open(dir.join("docs.bin")).expect("open").document(0).expect("doc").to_vec(),
        vec![0, 3, 4]
    );
    // This tokenizer carries its own Jinja template: conversations are rendered with it.
    let chat = jsonl(
        &dir,
        "chat.jsonl",
        &[r#"{"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"}]}"#],
    );
    let sum = prepare(&chat, &dir.join("chat.bin"), &tok, &PrepareOptions::default()).expect("prepare");
    assert!(sum.chat_template.contains("own chat_template"), "{sum}");
    assert!(sum.notes.is_empty(), "{sum}");
}

#[test]
fn inspect_reports_counts_percentiles_and_rows() {
    let dir = scratch("inspect");
    let lines: Vec<String> = (1..=100).map(|n| format!(r#"{{"text": "{}"}}"#, "x".repeat(n))).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let input = jsonl(&dir, "docs.jsonl", &refs);
    let out = dir.join("docs.bin");
    prepare(&input, &out, &bytes_tok(), &PrepareOptions::default()).expect("prepare");
    let report = inspect(&out, Some(&bytes_tok()), 2).expect("inspect");
    assert_eq!((report.kind, report.rows, report.tokens), (DatasetKind::TokenStream, 100, 5050));
    let l = &report.lengths[0];
    assert_eq!((l.min, l.p50, l.p90, l.p99, l.max), (1, 50, 90, 99, 100));
    assert!((l.mean - 50.5).abs() < 1e-9);
    assert_eq!(report.samples.len(), 2);
    assert_eq!(report.samples[1].segments, vec![("text".to_string(), "xx".to_string())]);
    assert!(report.warnings.is_empty());
    let shown = report.to_string();
    assert!(shown.contains("p50") && shown.contains("token stream") && shown.contains("--- row 1"), "{shown}");
    // Without a tokenizer rows show as ids; a mismatched tokenizer is warned about.
    let raw = inspect(&out, None, 1).expect("inspect");
    assert_eq!(raw.samples[0].segments[0].1, "[120]");
    let gpt2 = Tokenizer::gpt2_builtin().expect("gpt2");
    let mismatched = inspect(&out, Some(&gpt2), 1).expect("inspect");
    assert!(mismatched.warnings.iter().any(|w| w.contains("50257")), "{:?}", mismatched.warnings);
}

#[test]
fn cli_prepare_and_inspect_run() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }
    #[derive(clap::Subcommand)]
    enum Cmd {
        Data(cli::DataArgs),
    }
    let dir = scratch("cli");
    let input = jsonl(&dir, "in.jsonl", &[r#"{"prompt": "Hello", "completion": " world"}"#]);
    let out = dir.join("out.bin");
    let run = |args: &[&str]| {
        let Cmd::Data(a) = Cli::try_parse_from(args).expect("parse").cmd;
        cli::run(a)
    };
    let (i, o) = (input.to_string_lossy().into_owned(), out.to_string_lossy().into_owned());
    run(&[
        "plumb",
        "data",
        "prepare",
        &i,
        &o,
        "--format",
        "sft",
        "--tokenizer",
        "gpt2",
        "--max-len",
        "64",
        "--append-eos",
    ])
    .expect("prepare");
    let d = SftDataset::open(&out).expect("open");
    assert_eq!(d.get(0).expect("row").completion.to_vec(), vec![995, 50256]);
    run(&["plumb", "data", "inspect", &o, "--tokenizer", "gpt2", "--rows", "1"]).expect("inspect");
    assert!(run(&["plumb", "data", "inspect", &dir.join("nope.bin").to_string_lossy()]).is_err());
    assert!(Cli::try_parse_from(["plumb", "data", "prepare", "a", "b", "--format", "bogus"]).is_err());
}

// ---------------------------------------------------------------------------------------------
// Built-in corpus

#[test]
fn movie_review_corpus_loads_with_ratings() {
    let s = movie_reviews().expect("corpus");
    assert_eq!(s.len(), 10_605);
    assert!(s.iter().enumerate().all(|(i, r)| r.id as usize == i + 1));
    assert!(s[0].text.starts_with("The Rock is destined to be the 21st Century's new ''Conan''"), "{}", s[0].text);
    assert!((s[0].mean - 2.266_666_7).abs() < 1e-4);
    assert_eq!(s[2].text, "Effective but too tepid biopic");
    for r in &s {
        assert!(!r.text.is_empty() && !r.text.ends_with('\r'));
        assert!(r.ratings.len() >= 10 && r.ratings.iter().all(|x| (-4..=4).contains(x)), "id {}", r.id);
        let mean = r.ratings.iter().map(|&x| f32::from(x)).sum::<f32>() / r.ratings.len() as f32;
        assert!((mean - r.mean).abs() < 1e-3, "id {}: ratings mean {mean} vs {}", r.id, r.mean);
        assert!(r.std >= 0.0 && r.std <= 4.0);
    }
    assert!(s.iter().any(|r| r.text.contains('é')), "UTF-8 text survives");
}

#[test]
fn vader_judge_orders_sentiment() {
    let lex: HashMap<String, f32> = vader_lexicon().expect("lexicon");
    assert!(lex.len() > 7000, "{}", lex.len());
    assert!(lex["good"] > 1.0 && lex["horrible"] < -2.0);
    let pos = vader_judge("This movie was wonderful, a great and beautiful film!", &lex).expect("rated words");
    let neg = vader_judge("This movie was horrible, a boring and ugly mess.", &lex).expect("rated words");
    assert!(pos > 1.0 && neg < -1.0, "{pos} vs {neg}");
    assert_eq!(vader_judge("the of and 1234", &lex), None);
    assert!(vader_judge("''Great''", &lex).is_some(), "quote apostrophes are stripped");
    // Over the whole corpus, the judge agrees with the human raters more often than not.
    let s = movie_reviews().expect("corpus");
    let pairs: Vec<(f32, f32)> = s.iter().filter_map(|r| vader_judge(&r.text, &lex).map(|j| (j, r.mean))).collect();
    assert!(pairs.len() > 9000, "{}", pairs.len());
    let n = pairs.len() as f32;
    let (mj, mh) = (pairs.iter().map(|p| p.0).sum::<f32>() / n, pairs.iter().map(|p| p.1).sum::<f32>() / n);
    let cov: f32 = pairs.iter().map(|p| (p.0 - mj) * (p.1 - mh)).sum();
    let (vj, vh): (f32, f32) =
        (pairs.iter().map(|p| (p.0 - mj).powi(2)).sum(), pairs.iter().map(|p| (p.1 - mh).powi(2)).sum());
    let r = cov / (vj * vh).sqrt();
    assert!(r > 0.3, "correlation with human ratings {r}");
}
