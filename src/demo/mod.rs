//! `plumb demo`: RLHF (reward model + PPO) against DPO, end to end, on real human ratings.
pub mod data;
