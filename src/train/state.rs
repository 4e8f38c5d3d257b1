//! Everything besides tensors that a resumed run needs to continue exactly as if it had
//! never stopped: the step, every random stream and the best validation score.
use crate::dataset::EpochSampler;
use crate::noise::Noise;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    /// Gradient updates completed.
    pub step: u64,
    /// Model noise (reparameterisation, update masks).
    pub noise: Noise,
    /// Data order.
    pub sampler: EpochSampler,
    /// Best validation NLL so far (nats), for the `best` checkpoint.
    pub best_val: Option<f64>,
    /// Adam's step count.
    pub adam_step: u64,
}
