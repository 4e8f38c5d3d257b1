//! Evaluation: the encoder's input range of colour models and the deterministic
//! posterior-mean evaluation against a PyTorch fixture (tools/make_colour_fixtures.py),
//! and one step count T per image in the non-doubling model's IWAE.
mod common;

use common::{fixture, rel_err};
use tch::{Device, Kind, Tensor};
use vnca::checkpoint::Loaded;
use vnca::config::{Config, EncoderInput};
use vnca::model::Vnca;
use vnca::noise::Noise;
use vnca::objective::{iwae, posterior_mean_terms};

/// The fixture's colour doubling model: the `emoji-doubling-small` architecture at
/// Z = 12, hidden 16, encoder width 4, 16x16 RGB, 2 steps per stage.
fn colour_model(input: EncoderInput) -> Vnca {
    let mut cfg = Config::preset("emoji-doubling-small").unwrap().model;
    cfg.z_dim = 12;
    cfg.hidden = 16;
    cfg.encoder_width = 4;
    cfg.image_size = 16;
    cfg.steps_per_stage = 2;
    cfg.encoder_input = input;
    let model = Vnca::new(&cfg, Device::Cpu, 0);
    Loaded::read(&fixture("colour_weights.safetensors"))
        .unwrap()
        .load_model(&model)
        .unwrap();
    model
}

fn io() -> Loaded {
    Loaded::read(&fixture("colour_io.safetensors")).unwrap()
}

#[test]
fn doubling_colour_presets_feed_the_encoder_signed_images_as_the_reference() {
    for name in [
        "celeba-doubling-64",
        "celeba-doubling-64-beta100",
        "emoji-doubling-64",
        "emoji-doubling-small",
    ] {
        let cfg = Config::preset(name).unwrap();
        assert_eq!(cfg.model.encoder_input, EncoderInput::Signed, "{name}");
    }
    // The non-doubling CelebA run (a17aafd) and every MNIST run feed [0, 1].
    for name in [
        "celeba-nondoubling-damage-32",
        "mnist-doubling",
        "mnist-nondoubling-damage",
    ] {
        let cfg = Config::preset(name).unwrap();
        assert_eq!(cfg.model.encoder_input, EncoderInput::Unit, "{name}");
    }
    // A config written before the key existed (every older checkpoint's) reads as `unit`,
    // the range it was trained with.
    let old = Config::preset("emoji-doubling-small")
        .unwrap()
        .to_toml()
        .replace("encoder_input = \"signed\"\n", "");
    assert!(!old.contains("encoder_input"));
    let cfg = Config::from_toml_str(&old, "old.toml").unwrap();
    assert_eq!(cfg.model.encoder_input, EncoderInput::Unit);
}

#[test]
fn signed_encoder_input_matches_pytorch() {
    let io = io();
    let x = io.tensor("input.x", &[3, 3, 16, 16]).unwrap();
    let signed = colour_model(EncoderInput::Signed).encode(&x);
    let e = rel_err(&signed.mu, &io.tensor("expected.mu", &[3, 12]).unwrap());
    assert!(e < 1e-4, "mu rel err {e}");
    let want = io.tensor("expected.log_sigma", &[3, 12]).unwrap();
    let e = rel_err(&signed.log_sigma, &want);
    assert!(e < 1e-4, "log sigma rel err {e}");
    // The same weights fed [0, 1] give the other encoding, and the two differ.
    let unit = colour_model(EncoderInput::Unit).encode(&x);
    let want_unit = io.tensor("expected.mu_unit", &[3, 12]).unwrap();
    assert!(rel_err(&unit.mu, &want_unit) < 1e-4);
    assert!(rel_err(&unit.mu, &signed.mu) > 1e-2);
}

/// `vnca eval --posterior-mean`'s quantities against PyTorch computing them the way the
/// reference's doubling colour runs do (x * 2 - 1 into the encoder and the DML loss), to
/// a relative 1e-4: what a checkpoint converted from those runs must reproduce.
#[test]
fn posterior_mean_terms_match_pytorch_for_a_colour_doubling_model() {
    let io = io();
    let x = io.tensor("input.x", &[3, 3, 16, 16]).unwrap();
    let model = colour_model(EncoderInput::Signed);
    let (log_px, kl) = tch::no_grad(|| posterior_mean_terms(&model, &x, &mut Noise::new(0)));
    let want = io.tensor("expected.log_px_mu", &[3]).unwrap();
    let e = rel_err(&log_px, &want);
    assert!(e < 1e-4, "log p(x|mu) rel err {e}: {log_px} vs {want}");
    let e = rel_err(&kl, &io.tensor("expected.kl", &[3]).unwrap());
    assert!(e < 1e-4, "KL rel err {e}");
    // Deterministic: another noise seed gives the same numbers, bit for bit.
    let (again, _) = tch::no_grad(|| posterior_mean_terms(&model, &x, &mut Noise::new(99)));
    assert!(again.equal(&log_px));
}

/// A small non-doubling model with T ~ U{2..9} and p_update = 1, its last layer made
/// non-zero so the step count matters.
fn grid_model() -> Vnca {
    let mut cfg = Config::preset("mnist-nondoubling-damage-small")
        .unwrap()
        .model;
    cfg.z_dim = 8;
    cfg.hidden = 8;
    cfg.encoder_width = 2;
    cfg.min_steps = 2;
    cfg.max_steps = 9;
    cfg.p_update = 1.0;
    let model = Vnca::new(&cfg, Device::Cpu, 4);
    for (name, mut p) in model.params() {
        if name.starts_with("nca.update_net.2") {
            let _ = tch::no_grad(|| p.normal_(0.0, 0.1));
        }
    }
    model
}

fn digits(n: i64) -> Tensor {
    tch::manual_seed(8);
    Tensor::rand([n, 1, 28, 28], (Kind::Float, Device::Cpu))
        .lt(0.3)
        .to_kind(Kind::Float)
}

#[test]
fn rows_frozen_at_their_own_step_count_equal_separate_growths() {
    let model = grid_model();
    let z = Tensor::randn([3, 8], (Kind::Float, Device::Cpu));
    let seed = model.nca().seed(&z);
    let mut noise = Noise::new(0);
    let together = tch::no_grad(|| model.nca().grow_rows(&seed, &[2, 7, 4], &mut noise));
    for (i, t) in [2usize, 7, 4].into_iter().enumerate() {
        let alone = tch::no_grad(|| {
            model
                .nca()
                .grow_rows(&seed.narrow(0, i as i64, 1), &[t], &mut noise)
        });
        let e = rel_err(&together.narrow(0, i as i64, 1), &alone);
        assert!(e < 1e-6, "row {i} (T = {t}): rel err {e}");
    }
    // Different T give different states (the counts are not ignored).
    let two = tch::no_grad(|| model.nca().grow_rows(&seed, &[2, 2, 2], &mut noise));
    assert!(rel_err(&together.narrow(0, 1, 1), &two.narrow(0, 1, 1)) > 1e-3);
}

/// One T per image: an image's IWAE estimate is the same whether it is evaluated alone,
/// in a batch of 5, or with its K samples split across decode chunks (7 rows per chunk,
/// K = 4), because every image draws its own noise and T in image order. With one T per
/// decode call (the old behaviour) batches of 5 shared one draw.
#[test]
fn iwae_estimate_does_not_depend_on_batching() {
    let model = grid_model();
    let x = digits(5);
    let k = 4;
    let per_image = |batch: i64, chunk: i64| -> Vec<f64> {
        let mut noise = Noise::new(11);
        let mut out = Vec::new();
        for start in (0..5).step_by(batch as usize) {
            let len = batch.min(5 - start);
            let lb = tch::no_grad(|| iwae(&model, &x.narrow(0, start, len), k, chunk, &mut noise));
            out.extend(Vec::<f64>::try_from(lb.to_kind(Kind::Double)).unwrap());
        }
        out
    };
    let alone = per_image(1, 4);
    for (batch, chunk) in [(5, 20), (5, 7), (2, 3), (5, 1)] {
        let got = per_image(batch, chunk);
        for (i, (a, b)) in alone.iter().zip(&got).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * a.abs(),
                "image {i}, batch {batch}, chunk {chunk}: {a} vs {b}"
            );
        }
    }
    // The images did not all run the same T: their bounds are not a shared-T artefact.
    let mut noise = Noise::new(11);
    let steps: Vec<usize> = (0..5)
        .map(|_| {
            let _ = vnca::noise::NoiseSource::normal(&mut noise, &[1, k, 8]);
            model.nca().draw_steps(&mut noise).unwrap()
        })
        .collect();
    assert!(steps.iter().any(|&t| t != steps[0]), "{steps:?}");
}
