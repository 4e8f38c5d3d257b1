//! `vnca check`: the model against the PyTorch fixtures (tests/fixtures, written by
//! tools/make_fixtures.py and tools/make_dml_fixtures.py) on any device and precision,
//! with stated tolerances. The numerics tests assert the same on the CPU in fp32; this
//! lets a user with a new GPU (or a new libtorch) see that the model computes there what
//! PyTorch computes, before training on it.
//!
//! Compared: the encoder's mu and log sigma, the final NCA state, log p(x|z), the KL and
//! the loss of the tiny doubling model; the gradient of the loss for every parameter;
//! IWAE-5; the same for the non-doubling model (28x28, simple update net); the
//! discretized logistic mixture's log-probability (K = 1, 4). Error measure: max |a - b|
//! over max |b| per tensor (`rel_err`), so a tensor's tolerance is relative to its scale.
//!
//! Tolerances (each is a few times the largest error measured, see docs/BENCHMARKS.md):
//! - fp32: 1e-4 on values, 1e-3 on gradients: the numerics tests' own; float32 rounding
//!   differs between PyTorch's and our operation order, and between CPU and GPU kernels.
//! - tf32: 1e-2 / 3e-2: TF32 rounds the inputs of every product to a 10-bit mantissa
//!   (relative 2^-11 ~ 5e-4), compounded over 10 NCA steps and 5 encoder layers.
//! - bf16: 2e-2 / 6e-2: bf16 keeps an 8-bit mantissa (relative 2^-9 ~ 2e-3 per
//!   rounding). Measured on the CPU (libtorch 2.13): at most 4.4e-3 on values (the
//!   final state) and 1.2e-2 on gradients (encoder.2.weight, whose gradient passes back
//!   through every bf16 layer). The likelihood stays float32, so its
//!   check keeps the fp32 tolerance in every precision.
use crate::checkpoint::Loaded;
use crate::config::Config;
use crate::likelihood::logistic_mixture;
use crate::model::Vnca;
use crate::noise::{FixedNoise, FixedNormalsHalfUniform, Noise};
use crate::objective::{elbo, iwae};
use crate::precision::Precision;
use anyhow::Context;
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// max |a - b| / max |b| (with a floor of 1e-6 on the scale): the relative error of a
/// tensor against a reference, computed in float64 on the CPU.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_device(Device::Cpu).to_kind(Kind::Double);
    let b = b.to_device(Device::Cpu).to_kind(Kind::Double);
    let scale = b.abs().max().double_value(&[]).max(1e-6);
    (a - &b).abs().max().double_value(&[]) / scale
}

/// (values, gradients) tolerances of a precision; see the module doc for why.
pub fn tolerances(p: Precision) -> (f64, f64) {
    match p {
        Precision::Fp32 => (1e-4, 1e-3),
        Precision::Tf32 => (1e-2, 3e-2),
        Precision::Bf16 => (2e-2, 6e-2),
    }
}

/// The fp32 tolerance on values: for what stays float32 in every precision.
const FP32_TOL: f64 = 1e-4;

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub rel_err: f64,
    pub tol: f64,
    pub ok: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub device: String,
    pub precision: Precision,
    pub torch: String,
    pub rows: Vec<Row>,
    pub passed: bool,
}

impl CheckReport {
    /// A Markdown table, failing rows marked.
    pub fn table(&self) -> String {
        let mut s = format!(
            "numerics against the PyTorch fixtures: device {}, precision {}, libtorch {}\n\n\
             | tensor | rel. error | tolerance | |\n|---|---|---|---|\n",
            self.device, self.precision, self.torch
        );
        for r in &self.rows {
            let mark = if r.ok { "ok" } else { "FAIL" };
            s += &format!(
                "| {} | {:.2e} | {:.0e} | {mark} |\n",
                r.name, r.rel_err, r.tol
            );
        }
        let failed = self.rows.iter().filter(|r| !r.ok).count();
        s += &format!("\n{} passed, {failed} failed\n", self.rows.len() - failed);
        s
    }
}

/// A file or folder of the repository: under the current directory, else two levels
/// above the binary (target/release/vnca and dist/device/vnca.bin both sit there),
/// else where the sources were compiled. None when it is in none of them.
pub fn find_repo_path(rel: &str) -> Option<PathBuf> {
    let mut candidates = vec![PathBuf::from(rel)];
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.canonicalize().ok())
    {
        if let Some(root) = dir.parent().and_then(Path::parent).and_then(Path::parent) {
            candidates.push(root.join(rel));
        }
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel));
    candidates.into_iter().find(|p| p.exists())
}

struct Checker {
    rows: Vec<Row>,
    device: Device,
    precision: Precision,
    fixtures: PathBuf,
}

impl Checker {
    fn add(&mut self, name: &str, got: &Tensor, want: &Tensor, tol: f64) {
        let e = rel_err(got, want);
        self.rows.push(Row {
            name: name.to_string(),
            rel_err: e,
            tol,
            ok: e <= tol, // NaN fails
        });
    }

    fn read(&self, name: &str) -> anyhow::Result<Loaded> {
        let path = self.fixtures.join(name);
        Loaded::read(&path).with_context(|| format!("fixture `{}`", path.display()))
    }

    /// A fixture tensor on the checked device.
    fn get(&self, io: &Loaded, name: &str, shape: &[i64]) -> anyhow::Result<Tensor> {
        Ok(io.tensor(name, shape)?.to_device(self.device))
    }

    /// The tiny doubling model (tiny-test preset, 10 NCA steps): outputs, gradients, IWAE.
    fn doubling(&mut self) -> anyhow::Result<()> {
        let (tv, tg) = tolerances(self.precision);
        let cfg = Config::preset("tiny-test")?;
        let model = Vnca::new(&cfg.model, self.device, 0);
        self.read("tiny_weights.safetensors")?.load_model(&model)?;
        let io = self.read("tiny_io.safetensors")?;
        let x = self.get(&io, "input.x", &[3, 1, 32, 32])?;
        let eps = io.tensor("input.eps", &[3, 1, 8])?;
        let p = self.precision;
        self.encode_decode(
            "doubling",
            &model,
            &io,
            &x,
            &eps,
            &mut FixedNoise(Default::default()),
        )?;

        let mut noise = FixedNoise([eps.shallow_clone()].into());
        let terms = p.autocast(self.device, || elbo(&model, &x, 1.0, &mut noise));
        let want = self.get(&io, "expected.log_px_z", &[3])?;
        self.add("doubling: log p(x|z)", &(-&terms.recon), &want, tv);
        self.add(
            "doubling: KL",
            &terms.kl,
            &self.get(&io, "expected.kl", &[3])?,
            tv,
        );
        self.add(
            "doubling: loss",
            &terms.loss,
            &self.get(&io, "expected.loss", &[])?,
            tv,
        );
        terms.loss.backward();
        self.gradients("doubling", &model, &io, tg)?;

        let eps = io.tensor("input.eps_iw", &[3, 5, 8])?;
        let got = tch::no_grad(|| {
            p.autocast(self.device, || {
                iwae(&model, &x, 5, 15, &mut FixedNoise([eps].into()))
            })
        });
        let want = self.get(&io, "expected.iwae", &[3])?;
        self.add("doubling: IWAE-5", &got, &want, tv);
        Ok(())
    }

    /// mu, log sigma and the final state of z = mu + sigma * eps against the fixture's.
    fn encode_decode(
        &mut self,
        what: &str,
        model: &Vnca,
        io: &Loaded,
        x: &Tensor,
        eps: &Tensor,
        noise: &mut dyn crate::noise::NoiseSource,
    ) -> anyhow::Result<()> {
        let tv = tolerances(self.precision).0;
        let (q, state) = self.precision.autocast(self.device, || {
            let q = model.encode(x);
            let z = q.sample_with(&eps.to_device(self.device)).squeeze_dim(1);
            let state = model.decode(&z, noise); // [B, Z, S, S]
            (q, state)
        });
        let [b, z] = q.mu.size()[..] else {
            anyhow::bail!("mu is not [B, Z]")
        };
        self.add(
            &format!("{what}: mu"),
            &q.mu,
            &self.get(io, "expected.mu", &[b, z])?,
            tv,
        );
        let want = self.get(io, "expected.log_sigma", &[b, z])?;
        self.add(&format!("{what}: log sigma"), &q.log_sigma, &want, tv);
        let want = self.get(io, "expected.state", &state.size())?;
        self.add(&format!("{what}: final state"), &state, &want, tv);
        Ok(())
    }

    /// The worst gradient error over the parameters, and the parameter it is in.
    fn gradients(&mut self, what: &str, model: &Vnca, io: &Loaded, tol: f64) -> anyhow::Result<()> {
        let mut worst = (f64::NEG_INFINITY, String::new());
        for (name, p) in model.params() {
            let want = self.get(io, &format!("grad.{name}"), &p.size())?;
            let e = rel_err(&p.grad(), &want);
            // A NaN error is the worst there is.
            if e.is_nan() || e > worst.0 {
                worst = (e, name);
            }
        }
        self.rows.push(Row {
            name: format!("{what}: gradients (worst: {})", worst.1),
            rel_err: worst.0,
            tol,
            ok: worst.0 <= tol,
        });
        Ok(())
    }

    /// The non-doubling model: 28x28 input, z in every cell, simple update net, 3 steps.
    fn nondoubling(&mut self) -> anyhow::Result<()> {
        let (tv, tg) = tolerances(self.precision);
        let mut cfg = Config::preset("mnist-nondoubling-damage-small")?;
        let m = &mut cfg.model;
        (m.z_dim, m.hidden, m.encoder_width) = (8, 16, 4);
        (m.min_steps, m.max_steps, m.p_update) = (3, 3, 1.0);
        let model = Vnca::new(&cfg.model, self.device, 0);
        self.read("nondoubling_weights.safetensors")?
            .load_model(&model)?;
        let io = self.read("nondoubling_io.safetensors")?;
        let x = self.get(&io, "input.x", &[3, 1, 28, 28])?;
        let eps = io.tensor("input.eps", &[3, 1, 8])?;
        let p = self.precision;
        // The step count is drawn from the noise (one uniform); with min = max it is 3.
        self.encode_decode("non-doubling", &model, &io, &x, &eps, &mut Noise::new(0))?;
        let mut noise = FixedNormalsHalfUniform(FixedNoise([eps].into()));
        let terms = p.autocast(self.device, || elbo(&model, &x, 1.0, &mut noise));
        let want = self.get(&io, "expected.loss", &[])?;
        self.add("non-doubling: loss", &terms.loss, &want, tv);
        terms.loss.backward();
        self.gradients("non-doubling", &model, &io, tg)
    }

    /// The discretized logistic mixture (K = 1, 4): float32 in every precision.
    fn dml(&mut self) -> anyhow::Result<()> {
        let path = self.fixtures.join("dml.safetensors");
        let f: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&path)
            .with_context(|| format!("fixture `{}`", path.display()))?
            .into_iter()
            .collect();
        for k in [1, 4] {
            let get = |n: &str| {
                f.get(&format!("k{k}.{n}"))
                    .map(|t| t.to_device(self.device))
                    .with_context(|| format!("`{}` has no k{k}.{n}", path.display()))
            };
            let (params, x, want) = (get("params")?, get("x")?, get("log_prob")?);
            let got = self
                .precision
                .autocast(self.device, || logistic_mixture::log_prob(&params, &x, k));
            self.add(
                &format!("logistic mixture K={k}: log p"),
                &got,
                &want,
                FP32_TOL,
            );
        }
        Ok(())
    }
}

/// Runs every comparison on `device` in `precision` (which it configures: TF32 and
/// cuDNN switches are process-wide) against the fixtures in `fixtures`.
pub fn run(fixtures: &Path, device: Device, precision: Precision) -> anyhow::Result<CheckReport> {
    anyhow::ensure!(
        fixtures.join("tiny_io.safetensors").exists(),
        "no fixtures in `{}` (expected tiny_io.safetensors there; pass --fixtures DIR)",
        fixtures.display()
    );
    precision.configure();
    let mut c = Checker {
        rows: Vec::new(),
        device,
        precision,
        fixtures: fixtures.to_path_buf(),
    };
    c.doubling()?;
    c.nondoubling()?;
    c.dml()?;
    let passed = c.rows.iter().all(|r| r.ok);
    Ok(CheckReport {
        device: match device {
            Device::Cuda(i) => format!("cuda:{i}"),
            _ => "cpu".into(),
        },
        precision,
        torch: crate::precision::torch_version().to_string(),
        rows: c.rows,
        passed,
    })
}
