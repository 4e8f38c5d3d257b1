//! Training: the loop, the optimiser, checkpoints and metrics.
pub mod checkpoint;
pub mod metrics;
pub mod optim;
pub mod pool;
pub mod run_lock;
pub mod state;
pub mod trainer;

pub use trainer::{train, TrainOptions, TrainSummary};
