//! A digit drawn in the page, made into what the model was trained on and encoded.
//!
//! The page sends the drawing as grey levels (0 = black background, 255 = ink) at the
//! data set's side (28 for MNIST). Here it goes through the data pipeline's own steps:
//! the stochastic binarization of the shipped binarized MNIST (`data::binarize`, P(1) =
//! grey / 255, seed 0) and the zero padding onto the model's grid
//! (`dataset::to_model_input`, 28 -> 32 for the doubling model). The encoder's q(z|x)
//! then gives z: its mean, or one sample.
use super::protocol::Posterior;
use crate::data::binarize::{binarize, DEFAULT_SEED};
use crate::data::ImageSet;
use crate::dataset::to_model_input;
use crate::model::Vnca;
use crate::noise::NoiseSource;
use tch::Tensor;

/// Side of a binarized MNIST image, and so of a drawing.
pub const MNIST_SIDE: usize = 28;

/// Grey levels of a `side` x `side` drawing (row-major) -> the model's input
/// [1, 1, image_size, image_size] in {0, 1}, on the model's device. Err: why not (the
/// text of the error reply).
pub fn model_input(model: &Vnca, grey: &[u8], side: usize) -> Result<Tensor, String> {
    if grey.len() != side * side {
        return Err(format!(
            "the drawing has {} pixels, a {side}x{side} drawing has {}",
            grey.len(),
            side * side
        ));
    }
    if grey.iter().all(|&p| p == 0) {
        return Err("the drawing is empty: draw a digit first".into());
    }
    let binary = binarize(
        &ImageSet {
            images: grey.to_vec(),
            labels: None,
            rows: side,
            cols: side,
        },
        DEFAULT_SEED,
    );
    if binary.images.iter().all(|&p| p == 0) {
        return Err("the drawing is too faint: no pixel survived binarization".into());
    }
    let s = side as i64;
    let x = Tensor::from_slice(&binary.images).view([1, 1, s, s]); // [1, 1, 28, 28] u8
    Ok(to_model_input(
        &x,
        model.cfg.image_size,
        model.device(),
        1.0,
    )) // [1, 1, S, S]
}

/// q(z|x) of an input [N, 1, S, S]: its mean, or one draw -> z [N, Z].
pub fn encode(model: &Vnca, x: &Tensor, how: Posterior, noise: &mut dyn NoiseSource) -> Tensor {
    tch::no_grad(|| {
        let q = model.encode(x);
        match how {
            Posterior::Mean => q.mu,
            Posterior::Sample => {
                let eps = noise.normal(&q.mu.size()).to_device(q.mu.device()); // [N, Z]
                q.sample_with(&eps.unsqueeze(1)).squeeze_dim(1)
            }
        }
    })
}

/// Test digit `index` of the shipped binarized MNIST as the model's input
/// [1, 1, S, S], and its label.
pub fn test_digit(model: &Vnca, index: usize) -> anyhow::Result<(Tensor, u8)> {
    let test = crate::shipped::mnist_test()?;
    anyhow::ensure!(
        index < test.len(),
        "test digit {index} is out of range: the test set has {} digits",
        test.len()
    );
    let (r, c) = (test.rows as i64, test.cols as i64);
    let x = Tensor::from_slice(test.image(index)).view([1, 1, r, c]); // [1, 1, 28, 28] u8
    let label = test.label(index).unwrap_or(0);
    Ok((
        to_model_input(&x, model.cfg.image_size, model.device(), 1.0),
        label,
    ))
}

/// How many test digits there are to pick from.
pub fn test_digits() -> anyhow::Result<usize> {
    Ok(crate::shipped::mnist_test()?.len())
}
