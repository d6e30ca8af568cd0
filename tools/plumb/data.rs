//! `plumb data prepare` (JSONL in TRL's formats -> a memory-mapped dataset file) and
//! `plumb data inspect` (counts, length percentiles, the first rows decoded).

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use plumb::data::{self, OutputFormat, Overflow, PrepareOptions};
use crate::common::load_tokenizer;

/// `plumb data ...`
#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand, Debug)]
enum DataCommand {
    /// Tokenize a JSONL file (TRL formats: text, messages, prompt/completion, chosen/rejected,
    /// prompt/completion/label (unpaired, for KTO), prompt) into a plumb dataset file.
    Prepare {
        /// Input JSONL file, one JSON object per line.
        input: PathBuf,
        /// Output dataset file (written to OUTPUT.tmp, renamed when complete).
        output: PathBuf,
        /// Dataset kind to write; `auto` picks from the first row.
        #[arg(long, value_enum, default_value_t = FormatArg::Auto)]
        format: FormatArg,
        /// `byte`, `gpt2` (built in), or a path to a tokenizer.json (or a directory holding one).
        #[arg(long, default_value = "gpt2")]
        tokenizer: String,
        /// Longest row in tokens (prompt + longest completion).
        #[arg(long)]
        max_len: Option<usize>,
        /// What to do with rows over --max-len.
        #[arg(long, value_enum, default_value_t = OverflowArg::Truncate)]
        overflow: OverflowArg,
        /// Append the tokenizer's EOS token to documents and completions.
        #[arg(long)]
        append_eos: bool,
        /// Preference data: reserve space for reference log-probs, filled in place later.
        #[arg(long)]
        reserve_reference: bool,
        /// Do not let the tokenizer add its special tokens (e.g. Llama's BOS) to documents and
        /// prompts.
        #[arg(long)]
        no_special_tokens: bool,
    },
    /// Show what a dataset file holds.
    Inspect {
        /// Dataset file written by `plumb data prepare`.
        file: PathBuf,
        /// Decode rows with this tokenizer: `byte`, `gpt2`, or a tokenizer.json path.
        #[arg(long)]
        tokenizer: Option<String>,
        /// How many rows to show.
        #[arg(long, default_value_t = 3)]
        rows: usize,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FormatArg {
    Auto,
    Text,
    Sft,
    Preference,
    Prompts,
    Unpaired,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OverflowArg {
    Truncate,
    Drop,
}

/// Run a `plumb data` subcommand.
pub fn run(args: DataArgs) -> plumb::Result<()> {
    match args.command {
        DataCommand::Prepare {
            input,
            output,
            format,
            tokenizer,
            max_len,
            overflow,
            append_eos,
            reserve_reference,
            no_special_tokens,
        } => {
            let tok = load_tokenizer(&tokenizer)?;
            let opts = PrepareOptions {
                format: match format {
                    FormatArg::Auto => OutputFormat::Auto,
                    FormatArg::Text => OutputFormat::Text,
                    FormatArg::Sft => OutputFormat::Sft,
                    FormatArg::Preference => OutputFormat::Preference,
                    FormatArg::Prompts => OutputFormat::Prompts,
                    FormatArg::Unpaired => OutputFormat::Unpaired,
                },
                max_len,
                overflow: match overflow {
                    OverflowArg::Truncate => Overflow::Truncate,
                    OverflowArg::Drop => Overflow::Drop,
                },
                append_eos,
                reserve_reference_logps: reserve_reference,
                add_special_tokens: !no_special_tokens,
            };
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let result = data::prepare_with_progress(&input, &output, &tok, &opts, &mut |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            });
            bar.finish_and_clear();
            let summary = result?;
            println!("wrote {} with tokenizer {}", output.display(), tok.name());
            print!("{summary}");
            Ok(())
        }
        DataCommand::Inspect { file, tokenizer, rows } => {
            let tok = tokenizer.as_deref().map(load_tokenizer).transpose()?;
            let report = data::inspect(&file, tok.as_ref(), rows)?;
            print!("{report}");
            Ok(())
        }
    }
}
