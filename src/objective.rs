//! Training and evaluation objectives (arXiv 2201.12360 Sec. 2; docs/REFERENCE.md §3), in nats per image.
use crate::likelihood::gaussian;
use crate::model::Posterior;
use crate::model::Vnca;
use crate::noise::NoiseSource;
use tch::{Kind, Tensor};

/// The terms of a single-sample ELBO over a batch.
pub struct Elbo {
    /// Scalar loss minimised: mean over the batch of -log p(x|z) + beta * KL.
    pub loss: Tensor,
    /// -log p(x|z) per image, [B].
    pub recon: Tensor,
    /// KL(q(z|x) || p(z)) per image, [B].
    pub kl: Tensor,
}

/// q(z|x) of a batch and one reparameterised sample z = mu + sigma * eps per image:
/// x [B, C, S, S] -> (q, z [B, Z]). The noise is drawn on the CPU, as every draw.
pub fn encode_and_sample(
    model: &Vnca,
    x: &Tensor,
    noise: &mut dyn NoiseSource,
) -> (Posterior, Tensor) {
    let q = model.encode(x);
    let eps = noise
        .normal_per_image(&[x.size()[0], 1, model.cfg.z_dim])
        .to_device(x.device())
        .to_kind(x.kind());
    let z = q.sample_with(&eps).squeeze_dim(1);
    (q, z)
}

/// Single-sample ELBO with the analytic KL, as the reference trains.
/// x: [B, C, S, S] in [0, 1].
pub fn elbo(model: &Vnca, x: &Tensor, beta: f64, noise: &mut dyn NoiseSource) -> Elbo {
    let (q, z) = encode_and_sample(model, x, noise); // z: [B, Z]
    let state = model.decode(&z, noise); // [B, Z, S, S]
    let recon = -model.log_likelihood(&state, x); // [B]
    let kl = gaussian::kl_std(&q.mu, &q.log_sigma); // [B]
    let loss = (&recon + &kl * beta).mean(None::<Kind>);
    Elbo { loss, recon, kl }
}

/// The same single-sample ELBO whose decoder gradient is computed by recomputation
/// (gradient checkpointing, `train.grad_checkpointing`): the decoder keeps only each
/// step's state, not its activations. Backpropagate `loss` as with `elbo`.
pub fn elbo_recompute(model: &Vnca, x: &Tensor, beta: f64, noise: &mut dyn NoiseSource) -> Elbo {
    let (q, z) = encode_and_sample(model, x, noise); // z: [B, Z]
    let mut recon = Tensor::new();
    let recon_mean = model.nca().grow_recompute(&z, noise, &mut |state| {
        recon = -model.log_likelihood(state, x); // [B]
        recon.mean(None::<Kind>)
    });
    let kl = gaussian::kl_std(&q.mu, &q.log_sigma); // [B]
    let loss = recon_mean + kl.mean(None::<Kind>) * beta;
    Elbo {
        loss,
        recon: recon.detach(),
        kl,
    }
}

/// Per-image draws of an evaluation, made image by image so that an image's noise does
/// not depend on the batch it is evaluated in: K reparameterisation noises [B, K, Z] and,
/// for non-doubling models, one step count T per image (the reference's evaluation draws
/// T once per test image; None for doubling models).
fn draw_per_image(
    model: &Vnca,
    b: i64,
    k: i64,
    noise: &mut dyn NoiseSource,
) -> (Tensor, Option<Vec<usize>>) {
    let mut eps = Vec::with_capacity(b as usize);
    let mut image_steps: Option<Vec<usize>> = None;
    for _ in 0..b {
        eps.push(noise.normal(&[1, k, model.cfg.z_dim])); // [1, K, Z]
        if let Some(t) = model.as_nca().and_then(|nca| nca.draw_steps(noise)) {
            image_steps.get_or_insert_with(Vec::new).push(t);
        }
    }
    (Tensor::cat(&eps, 0), image_steps)
}

/// Importance-weighted lower bound on log p(x) with `k` samples per image:
/// logsumexp_k[log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log k. x: [B, C, S, S] -> [B].
/// The B*k seeds are decoded in chunks of at most `max_batch` rows, so memory stays
/// bounded however large k is; a non-doubling model runs each image's own T (drawn once
/// per image, whatever the chunking). Call it under `tch::no_grad` for evaluation.
pub fn iwae(
    model: &Vnca,
    x: &Tensor,
    k: i64,
    max_batch: i64,
    noise: &mut dyn NoiseSource,
) -> Tensor {
    let q = model.encode(x);
    let (b, zd) = (x.size()[0], model.cfg.z_dim);
    let (eps, image_steps) = draw_per_image(model, b, k, noise);
    // Each image's T for each of its K rows (rows are image-major).
    let row_steps: Option<Vec<usize>> = image_steps.map(|steps| {
        steps
            .iter()
            .flat_map(|&t| std::iter::repeat_n(t, k as usize))
            .collect()
    });
    let eps = eps.to_device(x.device()).to_kind(x.kind()); // [B, K, Z]
    let z = q.sample_with(&eps); // [B, K, Z]
    let log_pz = gaussian::log_prob_std(&z); // [B, K]
    let log_qz = gaussian::log_prob(&z, &q.mu.unsqueeze(1), &q.log_sigma.unsqueeze(1)); // [B, K]
    let z_flat = z.view([b * k, zd]); // rows: image-major
    let x_rep = x.repeat_interleave_self_int(k, 0, None); // [B*K, C, S, S]
    let chunk = max_batch.max(1);
    let mut parts = Vec::new();
    let mut start = 0;
    while start < b * k {
        let len = chunk.min(b * k - start);
        let steps = row_steps
            .as_ref()
            .map(|s| &s[start as usize..(start + len) as usize]);
        let state = model.decode_rows(&z_flat.narrow(0, start, len), steps, noise);
        parts.push(model.log_likelihood(&state, &x_rep.narrow(0, start, len)));
        start += len;
    }
    let log_px_z = Tensor::cat(&parts, 0).view([b, k]); // [B, K]
    (log_px_z + log_pz - log_qz).logsumexp([1i64].as_slice(), false) - (k as f64).ln()
}

/// The deterministic terms at the posterior mean, per image: log p(x | z = mu) and
/// KL(q(z|x) || p(z)), x: [B, C, S, S] -> ([B], [B]). No sampling of z; with
/// p_update = 1 a doubling decoder has no randomness at all (a non-doubling one draws its
/// T per image from `noise`). Two runs, or this code and PyTorch, can be compared to
/// float precision, which sampled bounds cannot be.
pub fn posterior_mean_terms(
    model: &Vnca,
    x: &Tensor,
    noise: &mut dyn NoiseSource,
) -> (Tensor, Tensor) {
    let q = model.encode(x);
    // No z is sampled (K = 0 draws no normals): only a non-doubling model's T per image.
    let (_, image_steps) = draw_per_image(model, x.size()[0], 0, noise);
    let state = model.decode_rows(&q.mu, image_steps.as_deref(), noise); // [B, Z, S, S]
    let log_px = model.log_likelihood(&state, x); // [B]
    (log_px, gaussian::kl_std(&q.mu, &q.log_sigma))
}
