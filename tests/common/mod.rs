//! Shared helpers of the integration tests.
#![allow(dead_code)]
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use tch::Tensor;
use vnca::noise::NoiseSource;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Hands out pre-recorded noise tensors in order (the PyTorch fixture's eps). A request
/// for fewer leading rows than the next tensor has takes those rows and keeps the rest
/// for the next request (evaluation draws its noise image by image).
pub struct FixedNoise(pub VecDeque<Tensor>);

impl FixedNoise {
    fn next(&mut self, shape: &[i64]) -> Tensor {
        let t = self.0.pop_front().expect("fixture noise exhausted");
        let size = t.size();
        if size.len() == shape.len() && size[1..] == shape[1..] && shape[0] < size[0] {
            self.0.push_front(t.narrow(0, shape[0], size[0] - shape[0]));
            return t.narrow(0, 0, shape[0]);
        }
        assert_eq!(size, shape, "fixture noise shape");
        t
    }
}

impl NoiseSource for FixedNoise {
    fn normal(&mut self, shape: &[i64]) -> Tensor {
        self.next(shape)
    }
    fn mask(&mut self, _shape: &[i64], _p: f64) -> Tensor {
        panic!("the fixtures use p_update = 1: no mask expected")
    }
    fn uniform(&mut self, shape: &[i64]) -> Tensor {
        self.next(shape)
    }
}

/// max |a - b| / (|b| + atol_scale): relative error with a floor for values near 0.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_kind(tch::Kind::Double);
    let b = b.to_kind(tch::Kind::Double);
    let scale = b.abs().max().double_value(&[]).max(1e-6);
    ((a - &b).abs().max().double_value(&[])) / scale
}
