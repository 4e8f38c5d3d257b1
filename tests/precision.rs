//! Mixed precision (src/precision.rs) and the numerics self-test (`vnca check`).
//! bf16 runs on the CPU too (CPU autocast), so CI, which has no GPU, asserts that a bf16
//! forward pass and training step agree with fp32 within stated tolerances. The CUDA
//! tests run when libtorch sees a GPU and are skipped, saying so on stderr, when not.
mod common;

use common::{fixture, rel_err};
use std::process::Command;
use tch::{Device, Kind, Tensor};
use vnca::config::Config;
use vnca::model::Vnca;
use vnca::noise::Noise;
use vnca::objective::elbo;
use vnca::precision::Precision;
use vnca::train::optim::{clip_grad_norm, zero_grad};

/// The small MNIST preset (Z = hidden = 32, 40 NCA steps) with its zero-initialised last
/// layer perturbed, so the NCA is not the identity and every layer carries a gradient.
fn small_model() -> Vnca {
    let cfg = Config::preset("mnist-doubling-small").unwrap();
    let model = Vnca::new(&cfg.model, Device::Cpu, 1);
    for (name, mut p) in model.params() {
        if name.starts_with("nca.update_net.5") {
            let _ = tch::no_grad(|| p.normal_(0.0, 0.02));
        }
    }
    model
}

fn images(b: i64) -> Tensor {
    tch::manual_seed(4);
    Tensor::rand([b, 1, 32, 32], (Kind::Float, Device::Cpu))
        .lt(0.25)
        .to_kind(Kind::Float)
}

/// Loss terms, gradients and gradient norm of one training step (the trainer's forward
/// under `precision`, backward, clip) with the same noise stream.
fn step(model: &Vnca, x: &Tensor, precision: Precision) -> (f64, Tensor, f64, Vec<Tensor>) {
    let params = model.params();
    zero_grad(&params);
    let terms = precision.autocast(Device::Cpu, || elbo(model, x, 1.0, &mut Noise::new(9)));
    assert_eq!(terms.loss.kind(), Kind::Float, "the loss stays float32");
    assert_eq!(terms.kl.kind(), Kind::Float, "the KL stays float32");
    terms.loss.backward();
    let norm = clip_grad_norm(&params, 1e9);
    let grads = params.values().map(|p| p.grad().copy()).collect();
    (
        terms.loss.double_value(&[]),
        terms.recon.copy(),
        norm,
        grads,
    )
}

/// A bf16 training step agrees with fp32: loss within 1 % (measured: 0.1 %), per-image
/// log p(x|z) within 2 % of its scale, gradient norm within 5 %, and the gradient as a
/// whole points the same way (cosine > 0.99). bf16's 8-bit mantissa rounds each product
/// input by up to 2^-9 ~ 0.2 %; the 40 NCA steps accumulate in float32, which keeps
/// the compounded error near that size instead of 40 times it.
#[test]
fn bf16_training_step_agrees_with_fp32_on_the_cpu() {
    let model = small_model();
    let x = images(4);
    let (l32, r32, n32, g32) = step(&model, &x, Precision::Fp32);
    let (l16, r16, n16, g16) = step(&model, &x, Precision::Bf16);
    assert!(!vnca::precision::autocast_enabled(Device::Cpu));
    let dl = (l16 - l32).abs() / l32.abs();
    assert!(dl < 1e-2, "loss {l16} vs {l32}: {dl}");
    let dr = rel_err(&r16, &r32);
    assert!(dr < 2e-2, "log p(x|z) rel err {dr}");
    let dn = (n16 - n32).abs() / n32;
    assert!(dn < 5e-2, "grad norm {n16} vs {n32}");
    let flat = |g: &[Tensor]| Tensor::cat(&g.iter().map(|t| t.view(-1)).collect::<Vec<_>>(), 0);
    let (a, b) = (flat(&g16), flat(&g32));
    let cos = (&a * &b).sum(Kind::Double).double_value(&[])
        / (a.norm().double_value(&[]) * b.norm().double_value(&[]));
    assert!(cos > 0.99, "gradient cosine {cos}");
    // And bf16 really ran: not bit-identical to fp32.
    assert_ne!(l16, l32);
}

/// fp32 through `Precision::autocast` is the plain computation, bit for bit (so the
/// default keeps every pinned CPU result and bit-exact resume).
#[test]
fn fp32_and_tf32_are_bit_identical_to_no_precision_on_the_cpu() {
    let model = small_model();
    let x = images(2);
    let plain = elbo(&model, &x, 1.0, &mut Noise::new(9)).loss;
    for p in [Precision::Fp32, Precision::Tf32] {
        p.configure();
        let got = p.autocast(Device::Cpu, || {
            elbo(&model, &x, 1.0, &mut Noise::new(9)).loss
        });
        assert!(got.equal(&plain), "{p}");
    }
    Precision::Fp32.configure();
}

/// The fixture self-test passes on the CPU in every precision, with each precision's
/// tolerances, and names what it compared.
#[test]
fn check_passes_on_the_cpu_in_every_precision() {
    let dir = fixture("");
    for p in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
        let r = vnca::check::run(&dir, Device::Cpu, p).unwrap();
        assert!(r.passed, "{}", r.table());
        assert_eq!(r.rows.len(), 15);
        let worst = r.rows.iter().map(|r| r.rel_err).fold(0.0, f64::max);
        if p == Precision::Bf16 {
            // bf16 really changes the numbers (not silently fp32).
            assert!(worst > 1e-4, "bf16 errors suspiciously small: {worst}");
        } else {
            assert!(worst < 1e-4, "{p}: {worst}");
        }
    }
}

#[test]
fn check_command_reports_and_fails_clearly_without_fixtures() {
    let bin = env!("CARGO_BIN_EXE_vnca");
    let out = Command::new(bin)
        .args(["check", "--precision", "bf16", "--fixtures"])
        .arg(fixture(""))
        .output()
        .unwrap();
    assert_succeeded(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("precision bf16") && text.contains("15 passed, 0 failed"),
        "{text}"
    );
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .args(["check", "--fixtures"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: no fixtures in"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// `train --precision bf16` trains (loss finite, checkpoint written, the precision
/// recorded in the run's config) on the CPU.
#[test]
fn train_in_bf16_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vnca"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "--threads",
            "1",
            "train",
            "--preset",
            "tiny-test",
            "--steps",
            "3",
        ])
        .args(["--precision", "bf16", "--quiet", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_succeeded(&out);
    let config = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
    assert!(config.contains("precision = \"bf16\""), "{config}");
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"nll_nats\""), "{metrics}");
    assert!(dir.path().join("latest.safetensors").exists());
}

fn assert_succeeded(out: &std::process::Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
}

fn cuda() -> Option<Device> {
    if tch::Cuda::is_available() {
        Some(Device::Cuda(0))
    } else {
        eprintln!("skipped: libtorch sees no CUDA device (CUDA tests run only on a GPU)");
        None
    }
}

/// On a GPU: the fixtures in fp32, tf32 and bf16 within `vnca::check::tolerances`.
#[test]
fn cuda_check_passes_in_every_precision() {
    let Some(dev) = cuda() else { return };
    for p in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
        let r = vnca::check::run(&fixture(""), dev, p).unwrap();
        assert!(r.passed, "{}", r.table());
    }
    Precision::Fp32.configure();
}

/// On a GPU: a bf16 training step on CUDA agrees with the fp32 step on the CPU, and the
/// autocast region is CUDA's (the CPU's stays off).
#[test]
fn cuda_bf16_training_step_agrees_with_cpu_fp32() {
    let Some(dev) = cuda() else { return };
    let model = small_model();
    let x = images(4);
    let (l32, ..) = step(&model, &x, Precision::Fp32);
    let mut gpu = small_model();
    gpu.vs.set_device(dev);
    let loss = Precision::Bf16.autocast(dev, || {
        assert!(vnca::precision::autocast_enabled(dev));
        assert!(!vnca::precision::autocast_enabled(Device::Cpu));
        elbo(&gpu, &x.to_device(dev), 1.0, &mut Noise::new(9)).loss
    });
    loss.backward();
    let l16 = loss.double_value(&[]);
    assert!((l16 - l32).abs() / l32.abs() < 1e-2, "{l16} vs {l32}");
}
