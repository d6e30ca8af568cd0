//! The demo from the library: RLHF (reward model + PPO) against DPO on the built-in human
//! ratings, at a quarter of the CLI's default size. The pipeline itself reads top to bottom in
//! `src/demo/mod.rs` (`plumb::demo::run`).
//!
//!     cargo run --release --example demo

fn main() -> plumb::Result<()> {
    let d = plumb::demo::DemoConfig::default();
    let cfg = plumb::demo::DemoConfig {
        out_dir: "runs/demo-example".into(),
        sft_steps: d.sft_steps / 4,
        reward_steps: d.reward_steps / 4,
        ppo_steps: d.ppo_steps / 4,
        dpo_steps: d.dpo_steps / 4,
        onpolicy_steps: d.onpolicy_steps / 4,
        ..d
    };
    let report = plumb::demo::run(&cfg)?;
    println!("{}", report.markdown());
    Ok(())
}
