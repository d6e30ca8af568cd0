//! Alignment: reward models, DPO and its family, KTO (unpaired thumbs up/down), PPO (RLHF), GRPO and RLOO, as small trainers over the
//! fused loss kernels of [`crate::ops::reward`], [`crate::ops::dpo`] and [`crate::ops::ppo`].
//! Each reads like the method:
//!
//! ```no_run
//! # fn main() -> plumb::Result<()> {
//! use plumb::align::{Dpo, DpoTrainConfig, Reference};
//! let gpu = plumb::Gpu::new()?;
//! let policy = plumb::model::Model::load(&gpu, "sft-out/latest-model".as_ref())?;
//! let reference = plumb::model::Model::load(&gpu, "sft-out/latest-model".as_ref())?;
//! let pairs = plumb::data::PreferenceDataset::open("prefs.bin")?;
//! let metrics = Dpo::new(DpoTrainConfig::default()).train(&policy, &pairs, Reference::Model(&reference))?;
//! if let Some(last) = metrics.last() {
//!     println!("accuracy {}", last.rewards_accuracies);
//! }
//! # Ok(()) }
//! ```

pub mod batching;
mod common;
pub mod dpo;
pub mod grpo;
pub mod kto;
pub mod ppo;
pub mod provenance;
pub mod reference;
pub mod reward;
pub mod rloo;
pub mod rollout;
pub mod seqs;

pub use batching::{shuffled, Pair, Pairs};
pub use common::TrainConfig;
pub use reference::Reference;
pub use dpo::{precompute_reference, Dpo, DpoMetrics, DpoTrainConfig};
pub use reward::{Reward, RewardConfig, RewardMetrics, RewardModel};
pub use seqs::{sequence_logps, token_logps, SeqBatch, SeqTensors};
pub use ppo::{Ppo, PpoConfig, PpoMetrics, ValueHead};
pub use rollout::{Rewards, RolloutConfig};
pub use grpo::{Grpo, GrpoConfig, GrpoMetrics, ScaleRewards};
pub use rloo::{Rloo, RlooConfig, RlooMetrics};
pub use kto::{Completion, Completions, Kto, KtoMetrics, KtoTrainConfig};
