//! `vnca damage-eval`: how well grown images survive damage, as numbers (the paper only
//! shows pictures, Figures 9-10). For N images: encode (posterior mean), grow, and score
//! log p(x | state) before damage; zero a square of every channel of the cells
//! (`damage_size`, default half the side, at a uniformly drawn place per image) and
//! score again; then run more NCA steps at full size and score after each of the given
//! step counts. Reported as mean and standard error over the images, in nats per image.
//!
//! Growth and damage draw from one noise stream, the recovery steps of each batch from
//! their own, all from `seed`: a value does not depend on which other recovery step counts
//! are asked for, and two checkpoints are measured on the same draws.
use crate::dataset::Split;
use crate::eval::summarize;
use crate::model::nca::damage_random;
use crate::model::Vnca;
use crate::noise::Noise;
use serde::Serialize;
use tch::{Kind, Tensor};

#[derive(Clone, Debug, Serialize)]
pub struct Stage {
    /// "grown", "damaged" or "recovered".
    pub stage: String,
    /// NCA steps run since the damage.
    pub steps_after_damage: usize,
    /// Mean over images of log p(x | state), nats per image.
    pub log_px_nats: f64,
    pub stderr: f64,
    /// log p(x | state) of each image, in split order (for `--per-example`).
    #[serde(skip)]
    pub per_image: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DamageReport {
    pub n_images: usize,
    pub damage_size: i64,
    pub split: String,
    pub stages: Vec<Stage>,
}

/// Run the evaluation on the first `n` images of `split`, `batch` at a time.
pub fn damage_eval(
    model: &Vnca,
    split: &Split,
    n: usize,
    damage_size: i64,
    recovery_steps: &[usize],
    batch: i64,
    seed: u64,
) -> DamageReport {
    let mut noise = Noise::new(seed);
    let mut steps: Vec<usize> = recovery_steps.to_vec();
    steps.sort_unstable();
    steps.dedup();
    let n = (n as i64).min(split.len());
    let size = model.cfg.image_size;
    let nca = model.nca();
    // per stage: per-image log p
    let mut scores: Vec<Vec<f64>> = vec![Vec::new(); 2 + steps.len()];
    tch::no_grad(|| {
        let mut start = 0;
        while start < n {
            let len = batch.min(n - start);
            let x = split.range(start, len, size, model.device());
            let z = model.encode(&x).mu;
            let mut state = model.decode(&z, &mut noise);
            let mut push = |k: usize, s: &Tensor| {
                let lp = model
                    .log_likelihood(s, &x)
                    .to_kind(Kind::Double)
                    .to_device(tch::Device::Cpu);
                scores[k].extend(Vec::<f64>::try_from(lp).expect("f64 scores"));
            };
            push(0, &state);
            state = damage_random(&state, damage_size, &mut noise);
            push(1, &state);
            let mut healing_noise =
                Noise::new(seed ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(start as u64 + 1));
            let mut done = 0;
            for (k, &target) in steps.iter().enumerate() {
                let more = target - done;
                state = nca.run_steps(&state, more, &mut healing_noise, &mut |_| {});
                done = target;
                push(2 + k, &state);
            }
            start += len;
        }
    });
    let stage = |name: &str, after: usize, v: &[f64]| {
        // summarize() reports the mean NLL; here the scores are log-likelihoods.
        let r = summarize(v, 1, "", 0.0, 1);
        Stage {
            stage: name.to_string(),
            steps_after_damage: after,
            log_px_nats: r.nll_nats,
            stderr: r.nll_stderr,
            per_image: v.to_vec(),
        }
    };
    let mut stages = vec![
        stage("grown", 0, &scores[0]),
        stage("damaged", 0, &scores[1]),
    ];
    for (k, &s) in steps.iter().enumerate() {
        stages.push(stage("recovered", s, &scores[2 + k]));
    }
    DamageReport {
        n_images: n as usize,
        damage_size,
        split: split.name.clone(),
        stages,
    }
}

/// The report as a Markdown table.
pub fn table(r: &DamageReport) -> String {
    let mut s = format!(
        "{} images of the {} split, {}x{} damage\n\n| stage | steps after damage | log p(x) (nats) | ± s.e. |\n|---|---|---|---|\n",
        r.n_images, r.split, r.damage_size, r.damage_size
    );
    for st in &r.stages {
        s += &format!(
            "| {} | {} | {:.2} | {:.2} |\n",
            st.stage, st.steps_after_damage, st.log_px_nats, st.stderr
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn stages_in_order_and_damage_hurts_an_identity_nca() {
        // A fresh model's NCA is the identity (zero last layer): the grown state is z
        // everywhere, damage sets logits to 0, and steps change nothing afterwards.
        let mut cfg = Config::preset("mnist-nondoubling-damage-small").unwrap();
        cfg.model.min_steps = 2;
        cfg.model.max_steps = 2;
        let model = Vnca::new(&cfg.model, tch::Device::Cpu, 0);
        let set = crate::data::ImageSet {
            images: (0..5 * 784).map(|i| u8::from(i % 7 == 0)).collect(),
            labels: None,
            rows: 28,
            cols: 28,
        };
        let split = Split::from_image_set("test", &set);
        let r = damage_eval(&model, &split, 5, 14, &[3, 1], 2, 0);
        assert_eq!(r.n_images, 5);
        let names: Vec<_> = r
            .stages
            .iter()
            .map(|s| (s.stage.as_str(), s.steps_after_damage))
            .collect();
        assert_eq!(
            names,
            [
                ("grown", 0),
                ("damaged", 0),
                ("recovered", 1),
                ("recovered", 3)
            ]
        );
        assert!(
            (r.stages[2].log_px_nats - r.stages[1].log_px_nats).abs() < 1e-4,
            "identity NCA does not change"
        );
        assert!(r
            .stages
            .iter()
            .all(|s| s.log_px_nats < 0.0 && s.stderr >= 0.0));
        assert!(table(&r).contains("| recovered | 3 |"));
        // Side 0 erases nothing and draws the same: "damaged" is "grown", image by image,
        // and the later stages are those of the same run without damage.
        let none = damage_eval(&model, &split, 5, 0, &[3, 1], 2, 0);
        assert_eq!(none.stages[1].per_image, none.stages[0].per_image);
        assert_eq!(none.stages[0].per_image, r.stages[0].per_image);
        assert_ne!(none.stages[1].per_image, r.stages[1].per_image);
        for s in &r.stages {
            assert_eq!(s.per_image.len(), 5);
            let mean = s.per_image.iter().sum::<f64>() / 5.0;
            assert!(
                (mean - s.log_px_nats).abs() < 1e-9,
                "{mean} vs {}",
                s.log_px_nats
            );
        }
    }
}
