//! Training and evaluation objectives (PAPER.md 5.1-5.2), in nats per image.
use crate::likelihood::gaussian;
use crate::model::vnca::Posterior;
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
        .normal(&[x.size()[0], 1, model.cfg.z_dim])
        .to_device(x.device())
        .to_kind(x.kind());
    let z = q.sample_with(&eps).squeeze_dim(1);
    (q, z)
}

/// Single-sample ELBO with the analytic KL, as the reference trains.
/// x: [B, 1, S, S] in {0,1}.
pub fn elbo(model: &Vnca, x: &Tensor, beta: f64, noise: &mut dyn NoiseSource) -> Elbo {
    let (q, z) = encode_and_sample(model, x, noise); // z: [B, Z]
    let state = model.decode(&z, noise); // [B, Z, S, S]
    let recon = -model.log_likelihood(&state, x); // [B]
    let kl = gaussian::kl_std(&q.mu, &q.log_sigma); // [B]
    let loss = (&recon + &kl * beta).mean(None::<Kind>);
    Elbo { loss, recon, kl }
}

/// The same single-sample ELBO, with its gradient computed by recomputation (gradient
/// checkpointing, `train.grad_checkpointing`): the decoder keeps only each step's state,
/// not its activations. Calls backward itself; the returned terms carry no graph.
pub fn elbo_backward_recompute(
    model: &Vnca,
    x: &Tensor,
    beta: f64,
    noise: &mut dyn NoiseSource,
) -> Elbo {
    let (q, z) = encode_and_sample(model, x, noise); // z: [B, Z]
    let mut recon = Tensor::new();
    let (_, surrogate) = model.nca.grow_recompute(&z, noise, &mut |state| {
        recon = -model.log_likelihood(state, x); // [B]
        recon.mean(None::<Kind>)
    });
    let kl = gaussian::kl_std(&q.mu, &q.log_sigma); // [B]
    (surrogate + kl.mean(None::<Kind>) * beta).backward();
    let recon = recon.detach();
    let kl = kl.detach();
    let loss = (&recon + &kl * beta).mean(None::<Kind>);
    Elbo { loss, recon, kl }
}

/// Importance-weighted lower bound on log p(x) with `k` samples per image:
/// logsumexp_k[log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log k. x: [B, 1, S, S] -> [B].
/// The B*k seeds are decoded in chunks of at most `max_batch` rows, so memory stays
/// bounded however large k is. Call it under `tch::no_grad` for evaluation.
pub fn iwae(
    model: &Vnca,
    x: &Tensor,
    k: i64,
    max_batch: i64,
    noise: &mut dyn NoiseSource,
) -> Tensor {
    let q = model.encode(x);
    let (b, zd) = (x.size()[0], model.cfg.z_dim);
    let eps = noise
        .normal(&[b, k, zd])
        .to_device(x.device())
        .to_kind(x.kind());
    let z = q.sample_with(&eps); // [B, K, Z]
    let log_pz = gaussian::log_prob_std(&z); // [B, K]
    let log_qz = gaussian::log_prob(&z, &q.mu.unsqueeze(1), &q.log_sigma.unsqueeze(1)); // [B, K]
    let z_flat = z.view([b * k, zd]); // rows: image-major
    let x_rep = x.repeat_interleave_self_int(k, 0, None); // [B*K, 1, S, S]
    let chunk = max_batch.max(1);
    let mut parts = Vec::new();
    let mut start = 0;
    while start < b * k {
        let len = chunk.min(b * k - start);
        let state = model.decode(&z_flat.narrow(0, start, len), noise);
        parts.push(model.log_likelihood(&state, &x_rep.narrow(0, start, len)));
        start += len;
    }
    let log_px_z = Tensor::cat(&parts, 0).view([b, k]); // [B, K]
    (log_px_z + log_pz - log_qz).logsumexp([1i64].as_slice(), false) - (k as f64).ln()
}
