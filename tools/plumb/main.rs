//! The `plumb` command line: one subcommand per job, each in its own file under tools/plumb/.

mod bench;
mod common;
mod data;
mod demo;
mod dpo;
mod export;
mod generate;
mod grpo;
mod info;
mod kto;
mod ppo;
mod reward;
mod rloo;
mod sft;

use clap::{Parser, Subcommand};

/// Train and align small transformers on any GPU (Vulkan, Metal, DX12, GL), with no Python.
#[derive(Parser)]
#[command(name = "plumb", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every GPU adapter wgpu can see and the one plumb would choose.
    ///
    /// Examples:
    ///   plumb info
    ///   PLUMB_BACKEND=gl plumb info
    Info(info::InfoArgs),
    /// Convert JSONL (TRL's formats) to memory-mapped datasets, or inspect one.
    ///
    /// Examples:
    ///   plumb data prepare prefs.jsonl prefs.bin --tokenizer gpt2
    ///   plumb data inspect prefs.bin --tokenizer gpt2
    Data(data::DataArgs),
    /// Supervised fine-tuning / pretraining (default: a byte-level GPT on the built-in movie reviews).
    Sft(sft::SftArgs),
    /// Train a reward model (Bradley-Terry) on preference pairs; saves it for ppo / grpo.
    Reward(reward::RewardArgs),
    /// Direct Preference Optimization (sigmoid, hinge, ipo, robust, ..., sft, and mixtures).
    Dpo(dpo::DpoArgs),
    /// KTO: thumbs up / down on single answers (kto, apo_zero_unpaired), no pairs needed.
    Kto(kto::KtoArgs),
    /// RLHF with PPO: sample, score with a reward model minus a KL penalty, clipped update.
    Ppo(ppo::PpoArgs),
    /// GRPO: groups of samples per prompt, group-normalised rewards (VADER or a reward model).
    Grpo(grpo::GrpoArgs),
    /// RLOO (REINFORCE leave-one-out): k samples per prompt, the others' mean reward as baseline.
    Rloo(rloo::RlooArgs),
    /// Sample continuations from a checkpoint (KV cache, temperature, top-k, top-p, seeded).
    Generate(generate::GenerateArgs),
    /// RLHF (reward model + PPO) vs DPO, end to end on built-in human ratings: the main job.
    ///
    /// Examples:
    ///   plumb demo
    ///   plumb demo --seed 1 --out runs/demo-1
    Demo(demo::DemoArgs),
    /// Merge an adapter and write safetensors (HF layout) or GGUF; or the adapter as a llama.cpp GGUF LoRA.
    Export(export::ExportArgs),
    /// Measure the standard workloads W1-W4 (matmul, training step, DPO step, generation).
    Bench(bench::BenchArgs),
}

fn main() {
    // Mesa's Wayland probe prints "error: XDG_RUNTIME_DIR is invalid or not set" when it is unset
    // (ssh sessions, containers), on runs that work; give it the temp directory instead. This runs
    // before any thread exists.
    #[cfg(target_os = "linux")]
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(a) => info::run(a),
        Command::Data(a) => data::run(a),
        Command::Sft(a) => sft::run(a),
        Command::Reward(a) => reward::run(a),
        Command::Dpo(a) => dpo::run(a),
        Command::Kto(a) => kto::run(a),
        Command::Ppo(a) => ppo::run(a),
        Command::Grpo(a) => grpo::run(a),
        Command::Rloo(a) => rloo::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Export(a) => export::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Demo(a) => demo::run_cli(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
