//! The Rust model against PyTorch: fixtures written by tools/make_fixtures.py (a PyTorch
//! re-implementation of the reference architecture, same state_dict names).
mod common;

use common::{fixture, rel_err, FixedNoise};
use tch::{Device, Kind, Tensor};
use vnca::checkpoint::Loaded;
use vnca::config::Config;
use vnca::model::Vnca;
use vnca::objective::{elbo, iwae};

const TOL: f64 = 1e-4;

fn tiny_model() -> (Vnca, Loaded) {
    let cfg = Config::preset("tiny-test").unwrap();
    let model = Vnca::new(&cfg.model, Device::Cpu, 0);
    // The weights file is a bare safetensors state_dict, as a converted reference checkpoint.
    Loaded::read(&fixture("tiny_weights.safetensors"))
        .unwrap()
        .load_model(&model)
        .unwrap();
    let io = Loaded::read(&fixture("tiny_io.safetensors")).unwrap();
    (model, io)
}

fn get(io: &Loaded, name: &str, shape: &[i64]) -> Tensor {
    io.tensor(name, shape).unwrap()
}

/// A model of `cfg` with the fixture's weights (`NAME_weights.safetensors`, a bare
/// state_dict), and the fixture's inputs and expected values (`NAME_io.safetensors`).
fn fixture_model(cfg: &vnca::config::ModelConfig, name: &str) -> (Vnca, Loaded) {
    let model = Vnca::new(cfg, Device::Cpu, 0);
    Loaded::read(&fixture(&format!("{name}_weights.safetensors")))
        .unwrap()
        .load_model(&model)
        .unwrap();
    let io = Loaded::read(&fixture(&format!("{name}_io.safetensors"))).unwrap();
    (model, io)
}

/// Every parameter's gradient (after `backward`) against the fixture's `grad.<name>`.
fn assert_gradients_match(model: &Vnca, io: &Loaded) {
    for (name, p) in model.params() {
        let e = rel_err(&p.grad(), &get(io, &format!("grad.{name}"), &p.size()));
        assert!(e < 1e-3, "d loss / d {name}: rel err {e}");
    }
}

#[test]
fn encoder_decoder_and_elbo_match_pytorch() {
    let (model, io) = tiny_model();
    let x = get(&io, "input.x", &[3, 1, 32, 32]);
    let eps = get(&io, "input.eps", &[3, 1, 8]);

    let q = model.encode(&x);
    let e = rel_err(&q.mu, &get(&io, "expected.mu", &[3, 8]));
    assert!(e < TOL, "mu rel err {e}");
    let e = rel_err(&q.log_sigma, &get(&io, "expected.log_sigma", &[3, 8]));
    assert!(e < TOL, "log_sigma rel err {e}");

    let z = q.sample_with(&eps).squeeze_dim(1);
    let mut none = FixedNoise(Default::default());
    let state = model.decode(&z, &mut none);
    let e = rel_err(&state, &get(&io, "expected.state", &[3, 8, 32, 32]));
    assert!(e < TOL, "final state rel err {e}");

    let mut noise = FixedNoise([eps].into());
    let terms = elbo(&model, &x, 1.0, &mut noise);
    let e = rel_err(&(-&terms.recon), &get(&io, "expected.log_px_z", &[3]));
    assert!(e < TOL, "log p(x|z) rel err {e}");
    let e = rel_err(&terms.kl, &get(&io, "expected.kl", &[3]));
    assert!(e < TOL, "KL rel err {e}");
    let e = rel_err(&terms.loss, &get(&io, "expected.loss", &[]));
    assert!(e < TOL, "loss rel err {e}");
}

#[test]
fn gradients_match_pytorch() {
    let (model, io) = tiny_model();
    let x = get(&io, "input.x", &[3, 1, 32, 32]);
    let eps = get(&io, "input.eps", &[3, 1, 8]);
    let mut noise = FixedNoise([eps].into());
    elbo(&model, &x, 1.0, &mut noise).loss.backward();
    for (name, p) in model.params() {
        let want = get(&io, &format!("grad.{name}"), &p.size());
        let e = rel_err(&p.grad(), &want);
        assert!(e < 1e-3, "d loss / d {name}: rel err {e}");
    }
}

#[test]
fn iwae_matches_pytorch_and_does_not_depend_on_chunking() {
    let (model, io) = tiny_model();
    let x = get(&io, "input.x", &[3, 1, 32, 32]);
    let eps = get(&io, "input.eps_iw", &[3, 5, 8]);
    let want = get(&io, "expected.iwae", &[3]);
    for chunk in [15, 4, 1] {
        let mut noise = FixedNoise([eps.shallow_clone()].into());
        let got = tch::no_grad(|| iwae(&model, &x, 5, chunk, &mut noise));
        let e = rel_err(&got, &want);
        assert!(e < TOL, "IWAE (chunk {chunk}) rel err {e}");
    }
}

/// Central finite differences of the full loss (encoder, 10-step NCA, Bernoulli, KL)
/// in float64 against autograd, on random coordinates of every parameter tensor.
#[test]
fn gradients_match_finite_differences() {
    let (mut model, io) = tiny_model();
    model.vs.double();
    let x = get(&io, "input.x", &[3, 1, 32, 32]).to_kind(Kind::Double);
    let eps = get(&io, "input.eps", &[3, 1, 8]).to_kind(Kind::Double);
    let loss_of = |m: &Vnca| {
        let mut noise = FixedNoise([eps.shallow_clone()].into());
        elbo(m, &x, 1.0, &mut noise).loss
    };
    loss_of(&model).backward();
    let h = 1e-6;
    let (mut checked, mut significant) = (0, 0);
    for (name, p) in model.params() {
        let grad = p.grad().view(-1);
        let flat = p.detach().view(-1);
        let n = flat.size()[0];
        for k in 0..3 {
            let i = (k * 7919 + name.len() as i64 * 31) % n;
            let orig = flat.double_value(&[i]);
            let set = |v: f64| {
                let _ = tch::no_grad(|| flat.get(i).fill_(v));
            };
            set(orig + h);
            let up = tch::no_grad(|| loss_of(&model).double_value(&[]));
            set(orig - h);
            let down = tch::no_grad(|| loss_of(&model).double_value(&[]));
            set(orig);
            let fd = (up - down) / (2.0 * h);
            let ad = grad.double_value(&[i]);
            let tol = 1e-4 * ad.abs().max(1.0);
            assert!(
                (fd - ad).abs() < tol,
                "{name}[{i}]: finite difference {fd} vs autograd {ad}"
            );
            checked += 1;
            significant += usize::from(ad.abs() > 1e-2);
        }
    }
    assert!(checked >= 3 * 18);
    // Most checked coordinates carry a real gradient, so agreement is not 0 == 0.
    assert!(
        significant * 2 > checked,
        "{significant} of {checked} significant"
    );
}

/// Every paper preset has the reference's parameter count (docs/REFERENCE.md §4), which pins the
/// encoder padding of 28x28 inputs, the simple update net and the 64x64 encoder.
#[test]
fn paper_presets_have_the_reference_parameter_counts() {
    for (preset, total, encoder) in [
        ("mnist-doubling", 6_585_088, 5_402_880),
        ("mnist-nondoubling-damage", 5_042_304, 4_878_336),
        ("celeba-doubling-64", 9_732_416, 8_550_208),
        ("celeba-doubling-64-beta100", 9_732_416, 8_550_208),
        ("emoji-doubling-64", 9_732_416, 8_550_208),
        ("celeba-nondoubling-damage-32", 5_864_640, 5_404_480),
    ] {
        let cfg = Config::preset(preset).unwrap();
        let model = Vnca::new(&cfg.model, Device::Cpu, 0);
        assert_eq!(model.n_parameters(), total, "{preset}");
        let enc: i64 = model
            .params()
            .iter()
            .filter(|(n, _)| n.starts_with("encoder."))
            .map(|(_, t)| t.numel() as i64)
            .sum();
        assert_eq!(enc, encoder, "{preset} encoder");
    }
    // The simple update net's names: Sequential(Conv3x3, ELU, Conv1x1 without bias).
    let cfg = Config::preset("mnist-nondoubling-damage").unwrap();
    let vars = Vnca::new(&cfg.model, Device::Cpu, 0).vs.variables();
    assert!(
        vars.contains_key("nca.update_net.0.bias") && vars.contains_key("nca.update_net.2.weight")
    );
    assert!(!vars.contains_key("nca.update_net.2.bias"));
    assert_eq!(vars["encoder.0.weight"].size(), [32, 1, 5, 5]);
}

/// The update net's multiply-adds per cell (the FLOPs `vnca bench` divides by), written out
/// by hand for both kinds: the simple net has no residual blocks, whatever `n_residual` says.
#[test]
fn update_net_multiply_adds_per_cell_follow_its_kind() {
    for (preset, macs) in [
        // 3x3 conv 256 -> 256, 4 blocks of two 1x1 convs 256 -> 256, 1x1 conv 256 -> 256.
        ("mnist-doubling", 256 * 9 * 256 + 8 * 256 * 256 + 256 * 256),
        // 3x3 conv 32 -> 128, 1x1 conv 128 -> 32.
        ("mnist-nondoubling-damage-h128", 32 * 9 * 128 + 128 * 32),
        // 3x3 conv 32 -> 256, 1x1 conv 256 -> 32.
        ("mnist-nondoubling-damage-h256", 32 * 9 * 256 + 256 * 32),
    ] {
        let cfg = Config::preset(preset).unwrap();
        let model = Vnca::new(&cfg.model, Device::Cpu, 0);
        assert_eq!(model.nca().update_net.macs_per_cell(), macs, "{preset}");
    }
}

#[test]
fn paper_preset_has_the_reference_parameter_count() {
    let cfg = Config::preset("mnist-doubling").unwrap();
    let model = Vnca::new(&cfg.model, Device::Cpu, 0);
    assert_eq!(model.n_parameters(), 6_585_088);
    let vars = model.vs.variables();
    for key in [
        "encoder.0.weight",
        "encoder.8.bias",
        "encoder.11.weight",
        "nca.update_net.0.weight",
        "nca.update_net.1.delegate.0.weight",
        "nca.update_net.4.delegate.2.bias",
        "nca.update_net.5.bias",
    ] {
        assert!(vars.contains_key(key), "missing {key}");
    }
    assert_eq!(vars["encoder.11.weight"].size(), [512, 2048]);
    // The last update layer starts at zero: the NCA is the identity at initialisation.
    assert_eq!(
        vars["nca.update_net.5.weight"]
            .abs()
            .sum(Kind::Float)
            .double_value(&[]),
        0.0
    );
    // PyTorch default init bound 1/sqrt(fan_in) for the first encoder conv (fan_in 25).
    let w = &vars["encoder.0.weight"];
    assert!(w.abs().max().double_value(&[]) <= 0.2 + 1e-7);
    assert!(w.abs().max().double_value(&[]) > 0.19);
}

/// Runs the plain ELBO backward and the recomputing one on the same inputs and noise
/// (`noise()` makes a fresh, identical stream each time) and asserts equal losses and
/// equal gradients of every parameter.
fn assert_recompute_matches(
    model: &Vnca,
    x: &Tensor,
    beta: f64,
    noise: &dyn Fn() -> Box<dyn vnca::noise::NoiseSource>,
) {
    let plain = elbo(model, x, beta, noise().as_mut());
    plain.loss.backward();
    let grads: Vec<(String, Tensor)> = model
        .params()
        .into_iter()
        .map(|(n, p)| (n, p.grad().copy()))
        .collect();
    for (_, p) in model.params() {
        let _ = p.grad().zero_();
    }
    let re = vnca::objective::elbo_recompute(model, x, beta, noise().as_mut());
    assert!(rel_err(&re.loss, &plain.loss) < 1e-6);
    // Nothing was accumulated before the caller's backward: the objective only builds a loss.
    for (name, p) in model.params() {
        let g = p.grad();
        assert!(
            !g.defined() || g.abs().max().double_value(&[]) == 0.0,
            "{name}: gradient before backward"
        );
    }
    re.loss.backward();
    for (name, g) in grads {
        let e = rel_err(&model.params()[&name].grad(), &g);
        assert!(e < 1e-4, "{name}: recomputed gradient rel err {e}");
    }
}

/// Gradient checkpointing (recompute every step in the backward pass) gives the same
/// loss and gradients as keeping the graph, including through the doublings and the seed.
#[test]
fn recomputation_gives_the_same_gradients() {
    let (model, io) = tiny_model();
    let x = get(&io, "input.x", &[3, 1, 32, 32]);
    let eps = get(&io, "input.eps", &[3, 1, 8]);
    assert_recompute_matches(&model, &x, 2.0, &|| {
        Box::new(FixedNoise([eps.shallow_clone()].into()))
    });
}

/// The same with stochastic updates (p_update = 0.5): the recomputation reuses each
/// step's stored mask.
#[test]
fn recomputation_reuses_the_update_masks() {
    let mut cfg = Config::preset("tiny-test").unwrap();
    cfg.model.p_update = 0.5;
    let model = Vnca::new(&cfg.model, Device::Cpu, 3);
    for (name, mut p) in model.params() {
        if name.starts_with("nca.update_net.5") {
            let _ = tch::no_grad(|| p.normal_(0.0, 0.05));
        }
    }
    let x = Tensor::rand([2, 1, 32, 32], (Kind::Float, Device::Cpu))
        .lt(0.3)
        .to_kind(Kind::Float);
    assert_recompute_matches(&model, &x, 1.0, &|| Box::new(vnca::noise::Noise::new(5)));
}

/// The non-doubling model against PyTorch: 28x28 input (encoder padding 4), z in every
/// cell of the 28x28 grid, the simple update net, 3 steps; outputs and gradients.
#[test]
fn nondoubling_model_matches_pytorch() {
    let mut cfg = Config::preset("mnist-nondoubling-damage-small").unwrap();
    cfg.model.z_dim = 8;
    cfg.model.hidden = 16;
    cfg.model.encoder_width = 4;
    cfg.model.min_steps = 3;
    cfg.model.max_steps = 3;
    cfg.model.p_update = 1.0;
    let (model, io) = fixture_model(&cfg.model, "nondoubling");
    let x = get(&io, "input.x", &[3, 1, 28, 28]);
    let eps = get(&io, "input.eps", &[3, 1, 8]);
    let q = model.encode(&x);
    assert!(rel_err(&q.mu, &get(&io, "expected.mu", &[3, 8])) < TOL);
    assert!(rel_err(&q.log_sigma, &get(&io, "expected.log_sigma", &[3, 8])) < TOL);
    // The step count is drawn from the noise (one uniform); with min = max it is 3.
    let mut noise = vnca::noise::Noise::new(0);
    let state = model.decode(&q.sample_with(&eps).squeeze_dim(1), &mut noise);
    let e = rel_err(&state, &get(&io, "expected.state", &[3, 8, 28, 28]));
    assert!(e < TOL, "final state rel err {e}");
    let mut fixed = FixedUniform(FixedNoise([eps].into()));
    let terms = elbo(&model, &x, 1.0, &mut fixed);
    let e = rel_err(&terms.loss, &get(&io, "expected.loss", &[]));
    assert!(e < TOL, "loss rel err {e}");
    terms.loss.backward();
    assert_gradients_match(&model, &io);
}

/// Fixed normals, and uniforms of 0.5 for the step-count draw.
struct FixedUniform(FixedNoise);

impl vnca::noise::NoiseSource for FixedUniform {
    fn normal(&mut self, shape: &[i64]) -> Tensor {
        self.0.normal(shape)
    }
    fn mask(&mut self, shape: &[i64], p: f64) -> Tensor {
        self.0.mask(shape, p)
    }
    fn uniform(&mut self, shape: &[i64]) -> Tensor {
        Tensor::full(shape, 0.5, (Kind::Float, Device::Cpu))
    }
}

/// The baseline VAE (`mnist-vae-baseline` at the tiny widths: Z = 8, encoder width 4)
/// against PyTorch: the decoder's logits, the ELBO and every gradient.
#[test]
fn deconv_baseline_matches_pytorch() {
    let mut cfg = Config::preset("mnist-vae-baseline").unwrap();
    cfg.model.z_dim = 8;
    cfg.model.encoder_width = 4;
    let (model, io) = fixture_model(&cfg.model, "deconv");
    let x = get(&io, "input.x", &[3, 1, 32, 32]);
    let eps = get(&io, "input.eps", &[3, 1, 8]);
    let q = model.encode(&x);
    let mut none = FixedNoise(Default::default());
    let logits = model.decode(&q.sample_with(&eps).squeeze_dim(1), &mut none);
    let e = rel_err(&logits, &get(&io, "expected.logits", &[3, 1, 32, 32]));
    assert!(e < TOL, "logits rel err {e}");
    let terms = elbo(&model, &x, 1.0, &mut FixedNoise([eps].into()));
    let e = rel_err(&terms.loss, &get(&io, "expected.loss", &[]));
    assert!(e < TOL, "loss rel err {e}");
    terms.loss.backward();
    assert_gradients_match(&model, &io);
}
