//! Small helpers every consumer of a trained model needs, written once: running more
//! NCA steps on a grown state (damage recovery in `damage_eval`, `figures`, `serve`) and
//! reading a tensor back as plain floats (checkpoints, `serve`'s weight snapshots).
use super::nca::Nca;
use crate::noise::NoiseSource;
use tch::{Device, Kind, Tensor};

impl Nca {
    /// `k` more NCA steps at the state's current size: [N, Z, H, W] -> [N, Z, H, W].
    /// `on_state` sees the state after every step.
    pub fn run_steps(
        &self,
        state: &Tensor,
        k: usize,
        noise: &mut dyn NoiseSource,
        on_state: &mut dyn FnMut(&Tensor),
    ) -> Tensor {
        let mut s = state.shallow_clone();
        for _ in 0..k {
            s = self.step(&s, noise);
            on_state(&s);
        }
        s
    }
}

/// Any tensor as f32 values on the CPU, flattened in row-major order.
pub fn to_f32_vec(t: &Tensor) -> Vec<f32> {
    let flat = t
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .view(-1);
    Vec::<f32>::try_from(&flat).expect("a float tensor converts to Vec<f32>")
}

impl super::Vnca {
    /// A state [N, Z, h, w] rendered (the likelihood's mean) and centred on a black
    /// canvas of the final size, as the growth figures and the web page show a grid that
    /// is still growing: -> [N, C, size, size] in [0, 1].
    pub fn render_centred(&self, state: &Tensor, size: i64) -> Tensor {
        crate::dataset::pad_centred(&self.render_mean(state), size)
    }
}
