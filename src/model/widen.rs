//! Starting a wider VNCA from a trained narrower one, so that the wide model computes
//! exactly what the narrow one did and training goes on from there (the function-preserving
//! widening of Net2Net, Chen et al. 2016, arXiv 1511.05641, done with zeros and small
//! draws instead of copies). Why: the cells of a non-doubling model hold the whole state
//! the NCA keeps, and a model trained at a small `z_dim` can run out of room
//! (docs/EXPERIMENTS.md); a wider one started from it keeps what was learnt instead of
//! starting from noise.
//!
//! The narrow model's numbers go into the leading slices of the wide one's tensors. Of the
//! rest:
//! - weights from a new input (a new state channel into the update net, a new hidden unit
//!   into the next layer) to an old output are 0, so old outputs never see the new units;
//! - new outputs of the update net's inner layers keep their fresh random init (zeros
//!   there would never receive a gradient);
//! - the last layer's new rows, what a step writes into a new state channel, are drawn
//!   small and random (a tenth of PyTorch's default bound, `NEW_WRITE_SCALE`), not 0;
//! - the encoder's new (mu, log sigma) pairs are 0 in weight and bias: q(z|x) = N(0, 1) =
//!   p(z) on the new latent dimensions, which costs no KL.
//!
//! The ELBO of every image is then the narrow model's: nothing old reads a new channel.
//! Why the new channels are written from the start: were the new rows 0 too, a new channel
//! would hold its z draw (prior noise, uncorrelated with the image) for ever, the columns
//! that read it would get gradients of mean 0 and the rows that write it none at all: a
//! saddle that only Adam's noise leaves. Written with features of the old state, a new
//! channel has something to be read for. Measured, this is not what holds a widened
//! model back (docs/EXPERIMENTS.md): widening the hidden-128 damage model from Z = 32 to
//! 64, the new reading columns were at 1.1% of the old ones' norm after 526 updates with 0
//! rows, and at 1.2% after 500 with these writes; zeroing them then moved -log p(x | mu)
//! of 256 validation images by 0.03 nats: the new channels carried nothing yet.
use super::{Decoder, Params, Vnca};
use crate::config::DecoderKind;
use crate::noise::{Noise, NoiseSource};
use tch::Tensor;

/// The new channels' write weights ~ U(-b, b), b = NEW_WRITE_SCALE / sqrt(hidden): a
/// tenth of a fresh layer's (PyTorch's default) bound, small beside trained rows (7.7% of
/// their norm in the widening above).
const NEW_WRITE_SCALE: f64 = 0.1;
/// The stream of those draws: a widening is the same every time it is done.
const NEW_WRITE_SEED: u64 = 0x77;

/// The encoder's last layer, whose `2Z` outputs are `mu` then `log sigma`.
const ENCODER_OUT: &str = "encoder.11.";

/// Copy `narrow` into `wide` (freshly initialised) so that `wide` computes the same
/// function; `wide` may be larger in `z_dim` and `hidden` only. Same sizes: a plain copy.
pub fn widen_into(narrow: &Vnca, wide: &Vnca) -> anyhow::Result<()> {
    let (n, w) = (&narrow.cfg, &wide.cfg);
    let mut same_otherwise = n.clone();
    same_otherwise.z_dim = w.z_dim;
    same_otherwise.hidden = w.hidden;
    if &same_otherwise != w {
        anyhow::bail!(
            "the model to start from differs in more than z_dim and hidden; only a narrower model of the same kind can be widened"
        );
    }
    if n.z_dim > w.z_dim || n.hidden > w.hidden {
        anyhow::bail!(
            "the model to start from is wider (z_dim {}, hidden {}) than the one to train (z_dim {}, hidden {}); a model can only be widened",
            n.z_dim,
            n.hidden,
            w.z_dim,
            w.hidden
        );
    }
    if w.decoder == DecoderKind::Deconv && (n.z_dim, n.hidden) != (w.z_dim, w.hidden) {
        anyhow::bail!("widening needs an NCA decoder; the baseline VAE (decoder = \"deconv\") can only start from a model of its own size");
    }
    let from: Params = narrow.params();
    tch::no_grad(|| {
        for (name, mut to) in wide.params() {
            let src = &from[&name];
            if name.starts_with(ENCODER_OUT) {
                widen_encoder_out(src, &mut to, n.z_dim, w.z_dim);
            } else {
                widen_layer(src, &to);
            }
        }
        if let Decoder::Nca(nca) = &wide.decoder {
            draw_new_channel_writes(nca.update_net.output_weight(), n.z_dim, w.hidden);
        }
    });
    Ok(())
}

/// The last layer's rows from `z_narrow` on ([Z, hidden, 1, 1]): U(-b, b) from a fixed
/// stream (see `NEW_WRITE_SCALE`); nothing when Z did not grow.
fn draw_new_channel_writes(out_weight: &Tensor, z_narrow: i64, hidden: i64) {
    let s = out_weight.size();
    let new_rows = s[0] - z_narrow;
    if new_rows == 0 {
        return;
    }
    let mut shape = s.clone();
    shape[0] = new_rows;
    let bound = NEW_WRITE_SCALE / (hidden as f64).sqrt();
    let u = Noise::new(NEW_WRITE_SEED).uniform(&shape); // [new, hidden, 1, 1] in [0, 1)
    let draws = (u * 2.0 - 1.0) * bound;
    out_weight.narrow(0, z_narrow, new_rows).copy_(
        &draws
            .to_kind(out_weight.kind())
            .to_device(out_weight.device()),
    );
}

/// A weight [out, in, ...] or bias [out]: the narrow tensor in the leading slice, and 0
/// from every new input to every old output. New outputs keep what `to` holds.
fn widen_layer(src: &Tensor, to: &Tensor) {
    let s = src.size();
    let mut old_out = to.narrow(0, 0, s[0]);
    if s.len() > 1 {
        let _ = old_out.narrow(1, s[1], to.size()[1] - s[1]).zero_(); // new inputs
        old_out.narrow(1, 0, s[1]).copy_(src);
    } else {
        old_out.copy_(src);
    }
}

/// The encoder's last layer, weight [2Z, F] or bias [2Z]: the narrow `mu` rows and
/// `log sigma` rows each at the head of their half; the new rows 0 (q = the prior).
fn widen_encoder_out(src: &Tensor, to: &mut Tensor, z_narrow: i64, z_wide: i64) {
    let _ = to.zero_();
    for half in 0..2 {
        to.narrow(0, half * z_wide, z_narrow)
            .copy_(&src.narrow(0, half * z_narrow, z_narrow));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, UpdateNetKind};
    use crate::noise::{Noise, NoiseSource};
    use tch::{Device, Kind};

    /// A small non-doubling model whose update net is not the identity (its last layer is
    /// filled with noise, as training would), and a wider one started from it.
    fn narrow_and_wide(kind: UpdateNetKind, dz: i64, dh: i64) -> (Vnca, Vnca) {
        let mut cfg = Config::preset("tiny-test").unwrap().model;
        cfg.decoder = DecoderKind::NonDoubling;
        cfg.update_net = kind;
        cfg.image_size = 16;
        (cfg.min_steps, cfg.max_steps, cfg.p_update) = (6, 6, 0.5);
        let narrow = cfg.init(Device::Cpu, 1);
        tch::no_grad(|| {
            for (name, mut p) in narrow.params() {
                if name.starts_with("nca.") {
                    p.copy_(&(Tensor::randn(p.size(), (Kind::Float, Device::Cpu)) * 0.1));
                }
            }
        });
        let mut wide_cfg = cfg.clone();
        wide_cfg.z_dim += dz;
        wide_cfg.hidden += dh;
        let wide = wide_cfg.init(Device::Cpu, 2);
        widen_into(&narrow, &wide).unwrap();
        (narrow, wide)
    }

    /// The same images, the same z on the old dimensions and the same update masks: the
    /// same posterior, the same likelihood, and the old channels of every cell the same.
    #[test]
    fn a_widened_model_computes_what_the_narrow_one_did() {
        for kind in [UpdateNetKind::Simple, UpdateNetKind::Residual] {
            let (narrow, wide) = narrow_and_wide(kind, 5, 7);
            let (zn, zw) = (narrow.cfg.z_dim, wide.cfg.z_dim);
            let x = Noise::new(3)
                .uniform(&[4, 1, 16, 16])
                .gt(0.5)
                .to_kind(Kind::Float);
            let (qn, qw) = (narrow.encode(&x), wide.encode(&x));
            assert!(qw.mu.narrow(1, 0, zn).allclose(&qn.mu, 1e-6, 1e-6, false));
            assert!(qw
                .log_sigma
                .narrow(1, 0, zn)
                .allclose(&qn.log_sigma, 1e-6, 1e-6, false));
            assert_eq!(
                qw.mu.narrow(1, zn, zw - zn).abs().max().double_value(&[]),
                0.0
            );
            assert_eq!(
                qw.log_sigma
                    .narrow(1, zn, zw - zn)
                    .abs()
                    .max()
                    .double_value(&[]),
                0.0
            );

            let z = Noise::new(4).normal(&[4, zw]);
            let sn = narrow.decode(&z.narrow(1, 0, zn), &mut Noise::new(5));
            let sw = wide.decode(&z, &mut Noise::new(5));
            let diff = (sw.narrow(1, 0, zn) - &sn).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "{kind:?}: old channels moved by {diff}");
            let (ln, lw) = (narrow.log_likelihood(&sn, &x), wide.log_likelihood(&sw, &x));
            assert!(
                lw.allclose(&ln, 1e-4, 1e-4, false),
                "{kind:?}: {ln} vs {lw}"
            );
            // The new channels are written from the first step, not left holding their z.
            let kept = sw.narrow(1, zn, zw - zn).select(3, 7).select(2, 7); // [4, new]
            let moved = (kept - z.narrow(1, zn, zw - zn))
                .abs()
                .max()
                .double_value(&[]);
            assert!(
                moved > 1e-3,
                "{kind:?}: the new channels were not written ({moved})"
            );
        }
    }

    /// The saddle of the module doc: with z at the posterior mean (0 on the new latent
    /// dimensions) a new channel holds only what the steps write into it. The columns that
    /// read it then get a gradient from the start, which 0 rows would not give them, and
    /// the rows that write it none yet (nothing reads it).
    #[test]
    fn the_new_channels_are_worth_reading_from_the_start() {
        let (_, wide) = narrow_and_wide(UpdateNetKind::Simple, 3, 4);
        let x = Noise::new(3)
            .uniform(&[4, 1, 16, 16])
            .gt(0.5)
            .to_kind(Kind::Float);
        let q = wide.encode(&x);
        let state = wide.decode(&q.mu, &mut Noise::new(5)); // [4, Z, 16, 16]
        (-wide.log_likelihood(&state, &x).sum(Kind::Float)).backward();
        let params = wide.params();
        let zn = wide.cfg.z_dim - 3;
        let abs_sum = |t: Tensor| t.abs().sum(Kind::Float).double_value(&[]);
        let perceive = params["nca.update_net.0.weight"].grad(); // [hidden, Z, 3, 3]
        let reads = abs_sum(perceive.narrow(1, zn, 3));
        let old_reads = abs_sum(perceive.narrow(1, 0, zn)) * 3.0 / zn as f64;
        assert!(
            reads > 1e-3 * old_reads,
            "the new channels' readers get {reads} (old ones {old_reads})"
        );
        let out = &params["nca.update_net.2.weight"]; // [Z, hidden, 1, 1]
        assert_eq!(abs_sum(out.grad().narrow(0, zn, 3)), 0.0);
        // The writes: within the bound, not 0, and the same every time.
        let rows = out.narrow(0, zn, 3);
        let bound = NEW_WRITE_SCALE / (wide.cfg.hidden as f64).sqrt();
        let largest = rows.abs().max().double_value(&[]);
        assert!(
            largest <= bound && largest > bound / 2.0,
            "{largest} vs {bound}"
        );
        let (_, again) = narrow_and_wide(UpdateNetKind::Simple, 3, 4);
        assert!(rows.equal(&again.params()["nca.update_net.2.weight"].narrow(0, zn, 3)));
    }

    #[test]
    fn only_a_narrower_model_of_the_same_kind_can_be_widened() {
        let cfg = Config::preset("tiny-test").unwrap().model;
        let narrow = cfg.init(Device::Cpu, 1);
        let mut other = cfg.clone();
        other.image_size *= 2;
        let err = widen_into(&narrow, &other.init(Device::Cpu, 1)).unwrap_err();
        assert!(
            err.to_string().contains("more than z_dim and hidden"),
            "{err}"
        );
        let mut smaller = cfg.clone();
        smaller.z_dim -= 1;
        let err = widen_into(&narrow, &smaller.init(Device::Cpu, 1)).unwrap_err();
        assert!(err.to_string().contains("can only be widened"), "{err}");
        // The same size is a plain copy.
        let same = cfg.init(Device::Cpu, 9);
        widen_into(&narrow, &same).unwrap();
        for (name, p) in narrow.params() {
            assert!(p.equal(&same.params()[&name]), "{name}");
        }
    }
}
