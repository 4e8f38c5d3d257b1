//! Training: the loop, the optimiser, the damage pool, data parallelism, metrics and the
//! run lock.
//! (Checkpoints, and every name in them: `crate::checkpoint`.)
pub mod data_parallel;
pub mod metrics;
pub mod optim;
pub mod pool;
pub mod run_lock;
pub mod trainer;

pub use trainer::{train, TrainOptions, TrainSummary};
