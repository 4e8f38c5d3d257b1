//! The discretized logistic mixture likelihood (src/likelihood/logistic_mixture.rs)
//! against PyTorch fixtures written by tools/make_dml_fixtures.py, and against the
//! properties that define it: finite differences, bins summing to one, and sampling
//! statistics.
mod common;

use common::{fixture, FixedNoise};
use std::collections::HashMap;
use tch::{Kind, Tensor};
use vnca::likelihood::logistic_mixture::{log_prob, sample, sample_mean, CHANNELS_PER_MIX};
use vnca::noise::{Noise, NoiseSource};

fn fixtures() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture("dml.safetensors"))
        .expect("tests/fixtures/dml.safetensors (tools/make_dml_fixtures.py)")
        .into_iter()
        .collect()
}

fn get<'a>(f: &'a HashMap<String, Tensor>, name: &str) -> &'a Tensor {
    f.get(name)
        .unwrap_or_else(|| panic!("fixture tensor {name} missing"))
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).contiguous().view(-1)).unwrap()
}

/// max over elements of |a - b| / (|b| + floor).
fn max_rel(a: &Tensor, b: &Tensor, floor: f64) -> f64 {
    to_vec(a)
        .iter()
        .zip(to_vec(b))
        .map(|(a, b)| (a - b).abs() / (b.abs() + floor))
        .fold(0.0, f64::max)
}

/// The channels of each parameter group in the [N, C, H, W] state, for K components.
fn groups(k: i64, c: i64) -> Vec<(&'static str, Vec<i64>)> {
    let mut g: Vec<(&'static str, Vec<i64>)> = ["logits", "means", "log-scales", "coeffs"]
        .into_iter()
        .map(|n| (n, vec![]))
        .collect();
    for ch in 0..CHANNELS_PER_MIX * k {
        let slot = if ch < k {
            0
        } else {
            1 + (ch - k) % (3 * k) / k
        };
        g[slot as usize].1.push(ch);
    }
    g.push(("unused", (CHANNELS_PER_MIX * k..c).collect()));
    g
}

#[test]
fn log_prob_matches_pytorch_in_f32_and_f64() {
    let f = fixtures();
    for k in [1, 4] {
        let params = get(&f, &format!("k{k}.params"));
        let x = get(&f, &format!("k{k}.x"));
        let want = get(&f, &format!("k{k}.log_prob"));
        assert_eq!(want.size(), [3]);

        let got = log_prob(params, x, k);
        assert_eq!(got.kind(), Kind::Float);
        let e = max_rel(&got, want, 1.0);
        assert!(e < 1e-4, "K={k} f32: rel err {e}: {got} vs {want}");

        let got = log_prob(&params.to_kind(Kind::Double), x, k);
        assert_eq!(got.kind(), Kind::Double);
        let e = max_rel(&got, want, 1.0);
        assert!(e < 1e-10, "K={k} f64: rel err {e}: {got} vs {want}");
    }
}

#[test]
fn gradients_match_pytorch_in_f32_and_f64() {
    let f = fixtures();
    for k in [1, 4] {
        let x = get(&f, &format!("k{k}.x"));
        let want = get(&f, &format!("k{k}.grad"));
        let c = want.size()[1];
        for (kind, tol) in [(Kind::Float, 1e-3), (Kind::Double, 1e-8)] {
            let params = get(&f, &format!("k{k}.params"))
                .to_kind(kind)
                .detach()
                .set_requires_grad(true);
            log_prob(&params, x, k).sum(None::<Kind>).backward();
            let grad = params.grad();
            for (name, chans) in groups(k, c) {
                let idx = Tensor::from_slice(&chans);
                let (g, w) = (grad.index_select(1, &idx), want.index_select(1, &idx));
                if name == "unused" {
                    assert_eq!(g.abs().max().double_value(&[]), 0.0, "K={k}: unused grad");
                    continue;
                }
                // Relative per element, with a floor of 1e-3 of the group's largest
                // gradient (the clamped log-scales have exactly zero gradient).
                let floor = (w.abs().max().double_value(&[]) * 1e-3).max(1e-12);
                let e = max_rel(&g, &w, floor);
                assert!(e < tol, "K={k} {kind:?}: d/d {name}: rel err {e}");
            }
        }
    }
}

#[test]
fn result_does_not_depend_on_memory_layout() {
    let f = fixtures();
    let params = get(&f, "k4.params");
    let x = get(&f, "k4.x");
    let want = log_prob(params, x, 4);
    // Channels-last strides, as a state that went through permutes would have.
    let channels_last = params
        .permute([0, 2, 3, 1])
        .contiguous()
        .permute([0, 3, 1, 2]);
    assert!(!channels_last.is_contiguous());
    let got = log_prob(&channels_last, &x.to_kind(Kind::Double), 4);
    assert!(max_rel(&got, &want, 1.0) < 1e-6);
    // One image at a time gives the batch's per-image values.
    for i in 0..3 {
        let one = log_prob(&params.narrow(0, i, 1), &x.narrow(0, i, 1), 4);
        assert!(max_rel(&one, &want.narrow(0, i, 1), 1.0) < 1e-6);
    }
}

/// Central differences of sum(log_prob) in f64 against autograd, on coordinates of every
/// parameter group (the kink of the log-scale clamp at -7 is skipped).
#[test]
fn gradients_match_finite_differences() {
    let f = fixtures();
    for k in [1, 4] {
        let params = get(&f, &format!("k{k}.params"))
            .to_kind(Kind::Double)
            .detach()
            .set_requires_grad(true);
        let x = get(&f, &format!("k{k}.x"));
        log_prob(&params, x, k).sum(None::<Kind>).backward();
        let grad = params.grad();
        let p = params.detach();
        let size = p.size();
        let (h, w) = (size[2], size[3]);
        let mut checked = 0;
        for (name, chans) in groups(k, size[1]) {
            if name == "unused" {
                continue;
            }
            for (j, &ch) in chans.iter().enumerate().take(12) {
                let n = j as i64 % 3;
                let (i, jj) = ((j as i64 * 7 + ch) % h, (j as i64 * 3 + ch) % w);
                let at = [n, ch, i, jj];
                let orig = p.double_value(&at);
                if name == "log-scales" && orig <= -7.0 {
                    continue;
                }
                let eval = |v: f64| {
                    let q = p.copy();
                    let _ = q.get(n).get(ch).get(i).get(jj).fill_(v);
                    log_prob(&q, x, k).sum(None::<Kind>).double_value(&[])
                };
                let step = 1e-6;
                let fd = (eval(orig + step) - eval(orig - step)) / (2.0 * step);
                let ad = grad.double_value(&at);
                assert!(
                    (fd - ad).abs() < 1e-5 * ad.abs().max(1.0),
                    "K={k} {name} {at:?}: finite difference {fd} vs autograd {ad}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 4 * k.min(3), "K={k}: only {checked} checked");
    }
}

/// One-pixel parameters for the sum-to-one tests: [1, 10K, 1, 1] in f64, random
/// logits, means, log-scales in [min_log_s, 1] and coefficients. `pinned` colours get
/// mean 10 and log-scale -7 in every component: all their mass is then on level 255,
/// exactly (log P = -softplus(< -8000) = 0 in f64), whatever the coupling adds.
fn one_pixel(k: i64, seed: u64, min_log_s: f64, pinned: &[i64]) -> Tensor {
    let mut noise = Noise::new(seed);
    let p = noise
        .normal(&[1, CHANNELS_PER_MIX * k, 1, 1])
        .to_kind(Kind::Double);
    let u = noise.uniform(&[3 * k]).to_kind(Kind::Double);
    for c in 0..3 {
        let base = k + 3 * k * c;
        let mut means = p.narrow(1, base, k);
        let mut log_s = p.narrow(1, base + k, k);
        if pinned.contains(&c) {
            let _ = means.fill_(10.0);
            let _ = log_s.fill_(-7.0);
        } else {
            means.copy_(&(means.shallow_clone() * 0.6));
            let span = 1.0 - min_log_s;
            log_s.copy_(&(u.narrow(0, c * k, k).view([1, k, 1, 1]) * span + min_log_s));
        }
    }
    p
}

/// A batch of one-pixel images [256, 3, 1, 1]: `channel` runs through all 256 levels,
/// the others are at the given levels.
fn enumerate(channel: i64, levels: [f64; 3]) -> Tensor {
    let x = Tensor::from_slice(&levels)
        .view([1, 3, 1, 1])
        .repeat([256, 1, 1, 1]);
    let all = Tensor::arange(256, (Kind::Double, tch::Device::Cpu)).view([256, 1, 1]);
    x.select(1, channel).copy_(&all);
    x / 255.0
}

/// One one-pixel image [1, 3, 1, 1] at the given levels.
fn point(levels: [f64; 3]) -> Tensor {
    Tensor::from_slice(&levels).view([1, 3, 1, 1]) / 255.0
}

fn total(params: &Tensor, x: &Tensor, k: i64) -> f64 {
    let n = x.size()[0];
    let p = params.expand([n, -1, -1, -1], false);
    log_prob(&p, x, k).exp().sum(Kind::Double).double_value(&[])
}

/// The 256 bins of a channel partition the real line, so their probabilities sum to one
/// per component, and to the marginal of the earlier channels for the mixture:
/// - R, with G and B pinned to level 255: sum_r P(r, 255, 255) = 1;
/// - G at a fixed r, B pinned: sum_g P(r, g, 255) = P(r), computed as P(r, 255, 255)
///   with G pinned as well;
/// - B at fixed r, g: sum_b P(r, g, b) = P(r, g), computed as P(r, g, 255) with B pinned.
///
/// Exact up to the reference's approximation of bins under 1e-5 mass by density x width,
/// which is close while the scale s is wider than a bin (log s >= -4: 1e-6) and coarse
/// when it is narrower (down to the clamp, log s = -7: within a few 1e-6 per channel).
#[test]
fn bin_probabilities_sum_to_one() {
    for (min_log_s, tol) in [(-4.0, 1e-6), (-7.0, 2e-5)] {
        let mut compared = 0;
        for k in [1, 4] {
            for seed in 0..3u64 {
                compared += conditional_sums(k, seed + 10 * k as u64, min_log_s, tol);
            }
        }
        // The modes at least were compared in every case.
        assert!(
            compared >= 2 * 3 * 6,
            "only {compared} conditional sums compared"
        );
    }
}

/// The sums of `bin_probabilities_sum_to_one` for one parameter draw; returns how many
/// conditional sums were compared.
fn conditional_sums(k: i64, seed: u64, min_log_s: f64, tol: f64) -> usize {
    let params = |pinned: &[i64]| one_pixel(k, seed, min_log_s, pinned);
    let case = format!("K={k} seed {seed} log s >= {min_log_s}");
    let free_r = params(&[1, 2]);
    let sum = total(&free_r, &enumerate(0, [0.0, 255.0, 255.0]), k);
    assert!((sum - 1.0).abs() < tol, "{case}: sum over R = {sum}");

    // Conditioning levels: the edges, two interior ones, and the modes.
    let mode = |p: &Tensor, x: &Tensor| {
        let lp = log_prob(&p.expand([256, -1, -1, -1], false), x, k);
        lp.argmax(0, false).int64_value(&[]) as f64
    };
    let mut compared = 0;
    let r_mode = mode(&free_r, &enumerate(0, [0.0, 255.0, 255.0]));
    for r in [0.0, 77.0, 200.0, 255.0, r_mode] {
        let free_g = params(&[2]);
        let sum = total(&free_g, &enumerate(1, [r, 0.0, 255.0]), k);
        let marginal = total(&params(&[1, 2]), &point([r, 255.0, 255.0]), k);
        // Levels with essentially no mass carry no information (and may underflow).
        if marginal > 1e-30 {
            let e = (sum - marginal).abs() / marginal;
            assert!(e < tol, "{case} r={r}: sum over G {sum} vs P(r) {marginal}");
            compared += 1;
        }

        let g_mode = mode(&free_g, &enumerate(1, [r, 0.0, 255.0]));
        for g in [0.0, 128.0, 255.0, g_mode] {
            let sum = total(&params(&[]), &enumerate(2, [r, g, 0.0]), k);
            let marginal = total(&params(&[2]), &point([r, g, 255.0]), k);
            if marginal > 1e-30 {
                let e = (sum - marginal).abs() / marginal;
                assert!(
                    e < tol,
                    "{case} r={r} g={g}: sum over B {sum} vs P(r,g) {marginal}"
                );
                compared += 1;
            }
        }
    }
    compared
}

#[test]
fn samples_match_pytorch_with_fixed_uniforms() {
    let f = fixtures();
    let params = get(&f, "sample.params");
    let want = get(&f, "sample.x");
    let (u_mix, u_log) = (get(&f, "sample.u_mix"), get(&f, "sample.u_logistic"));
    for (kind, tol) in [(Kind::Float, 1e-5), (Kind::Double, 1e-12)] {
        let mut noise = FixedNoise([u_mix.copy(), u_log.copy()].into());
        let got = sample(&params.to_kind(kind), 4, &mut noise);
        assert!(
            noise.0.is_empty(),
            "sample must draw exactly the two uniform tensors"
        );
        assert_eq!(got.kind(), kind);
        assert_eq!(got.size(), want.size());
        let e = (&got.to_kind(Kind::Double) - want)
            .abs()
            .max()
            .double_value(&[]);
        assert!(e < tol, "{kind:?}: max abs err {e}");
    }
}

#[test]
fn samples_lie_in_unit_interval_and_are_seeded() {
    let f = fixtures();
    // Large means and wide scales: many draws fall outside [-1, 1] and are clamped.
    let params = get(&f, "k4.params");
    let a = sample(params, 4, &mut Noise::new(3));
    let b = sample(params, 4, &mut Noise::new(3));
    assert_eq!(a.size(), [3, 3, 3, 5]);
    assert!(a.equal(&b), "same seed, same samples");
    let (lo, hi) = (a.min().double_value(&[]), a.max().double_value(&[]));
    assert!(
        (0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi),
        "{lo} {hi}"
    );
    let big = sample(&params.repeat([40, 1, 1, 1]), 4, &mut Noise::new(4));
    let at_edges = big.eq(0.0).logical_or(&big.eq(1.0)).sum(Kind::Int64);
    assert!(at_edges.int64_value(&[]) > 0, "expected some clamped draws");
    assert!(!a.requires_grad());
}

/// K = 1 with small scales: the sample mean approaches (mu + 1) / 2 for R, and the
/// coupled means for G (mu_G + alpha r) and B (mu_B + beta r + gamma g).
#[test]
fn sample_mean_approaches_the_component_mean() {
    // Channels for K = 1: logit, then per colour (mean, log-scale, raw coefficient).
    let (mu, raw): ([f64; 3], [f64; 3]) = ([0.3, -0.2, 0.1], [0.5, -0.3, 0.8]);
    let mut v = vec![0.0];
    for c in 0..3 {
        v.extend([mu[c], -5.0, raw[c]]);
    }
    let params = Tensor::from_slice(&v)
        .view([1, 10, 1, 1])
        .repeat([2, 1, 2, 3]);
    let m = sample_mean(&params, 1, 2000, &mut Noise::new(11));
    assert_eq!(m.size(), [2, 3, 2, 3]);
    let (alpha, beta, gamma) = (raw[0].tanh(), raw[1].tanh(), raw[2].tanh());
    let r = mu[0];
    let g = mu[1] + alpha * r;
    let b = mu[2] + beta * r + gamma * g;
    for (c, want) in [r, g, b].into_iter().enumerate() {
        let got = m.select(1, c as i64);
        let e = (&got - (want + 1.0) / 2.0).abs().max().double_value(&[]);
        // Per-channel sd of one draw is s pi / sqrt(3) / 2 ~ 0.006 (B accumulates the
        // coupled noise of R and G); the mean of 2000 is within ~1e-3.
        assert!(e < 1.5e-3, "channel {c}: {got} vs {}", (want + 1.0) / 2.0);
    }
    // n = 1 is one sample from the same stream.
    let one = sample_mean(&params, 1, 1, &mut Noise::new(5));
    assert!(one.equal(&sample(&params, 1, &mut Noise::new(5))));
}

/// Gumbel-max picks component k with probability softmax(logits)_k: components with
/// well separated R means and tiny scales, counted over 20000 pixels.
#[test]
fn gumbel_max_follows_mixture_weights() {
    let k = 4i64;
    let logits = [0.5, -1.0, 1.2, 0.0];
    let r_means = [-0.75, -0.25, 0.25, 0.75];
    let mut v = vec![0.0; (CHANNELS_PER_MIX * k) as usize];
    v[..4].copy_from_slice(&logits);
    for c in 0..3usize {
        let base = (k + 3 * k * c as i64) as usize;
        for j in 0..4 {
            v[base + j] = if c == 0 { r_means[j] } else { 0.0 };
            v[base + 4 + j] = -7.0;
        }
    }
    let params = Tensor::from_slice(&v)
        .view([1, CHANNELS_PER_MIX * k, 1, 1])
        .repeat([2, 1, 100, 100]);
    let x = sample(&params, k, &mut Noise::new(21));
    let r = to_vec(&(x.select(1, 0) * 2.0 - 1.0));
    let mut counts = [0usize; 4];
    for v in &r {
        let j = r_means
            .iter()
            .position(|m| (v - m).abs() < 0.05)
            .unwrap_or_else(|| panic!("draw {v} is near no component mean"));
        counts[j] += 1;
    }
    let z: f64 = logits.iter().map(|l: &f64| l.exp()).sum();
    let n = r.len() as f64;
    for j in 0..4 {
        let p = logits[j].exp() / z;
        let sd = (p * (1.0 - p) / n).sqrt();
        let freq = counts[j] as f64 / n;
        assert!(
            (freq - p).abs() < 4.5 * sd,
            "component {j}: frequency {freq} vs weight {p} (counts {counts:?})"
        );
    }
}
