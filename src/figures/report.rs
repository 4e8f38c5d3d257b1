//! `vnca figures`: every picture of the paper that this model type supports, for any
//! checkpoint (the paper's figures, arXiv 2201.12360): prior samples (means and binary draws), test
//! reconstructions, growth sequences (grid and GIF), damage and recovery (grid and GIF),
//! latent interpolations between test digits and between prior draws, the t-SNE of
//! posterior means by digit, and the run's training curves.
use super::anim::write_gif;
use super::grid::write_grid;
use super::growth::{frames_as_rows, growth_frames, recovery_frames};
use super::plots::{labelled_scatter, training_curves};
use super::tsne;
use crate::dataset::Split;
use crate::model::Vnca;
use crate::noise::{Noise, NoiseSource};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

pub struct FigureOptions {
    pub seed: u64,
    /// Digit pairs for the posterior-mean interpolations (the reference showed 2->7, 5->3, 4->8).
    pub digit_pairs: Vec<(u8, u8)>,
    /// NCA steps after the damage.
    pub recovery_steps: usize,
    /// Side of the erased square (None: half the image side, the paper's damage).
    pub damage_size: Option<i64>,
    /// Test images in the t-SNE of posterior means (0: no t-SNE).
    pub tsne_points: usize,
    /// The run's metrics file, for the training curves (None: no curves).
    pub metrics: Option<PathBuf>,
}

impl Default for FigureOptions {
    fn default() -> Self {
        FigureOptions {
            seed: 0,
            digit_pairs: vec![(2, 7), (5, 3), (4, 8)],
            recovery_steps: 24,
            damage_size: None,
            tsne_points: 5000,
            metrics: None,
        }
    }
}

/// Write every figure into `out`; returns the files written.
pub fn write_all(
    model: &Vnca,
    test: &Split,
    out: &Path,
    o: &FigureOptions,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("`{}`: {e}", out.display()))?;
    let mut noise = Noise::new(o.seed);
    tch::manual_seed(o.seed as i64); // the Bernoulli draws of samples_binary.png
    let size = model.cfg.image_size;
    let dev = model.device();
    let mut written = Vec::new();
    let mut put = |name: &str| {
        let p = out.join(name);
        written.push(p.clone());
        p
    };
    tch::no_grad(|| -> anyhow::Result<()> {
        // Prior samples: the Bernoulli means and one binary draw of each.
        let z = noise.normal(&[64, model.cfg.z_dim]).to_device(dev);
        let (frames, last) = growth_frames(model, &z, &mut noise);
        let mean = frames.last().expect("at least one frame").shallow_clone();
        write_grid(&put("samples.png"), &mean, 8, 2)?;
        write_grid(&put("samples_binary.png"), &mean.bernoulli(), 8, 2)?;

        // Growth of the first samples: one row per sample, one column per state.
        let few: Vec<Tensor> = frames.iter().map(|f| f.narrow(0, 0, 4)).collect();
        write_grid(
            &put("growth.png"),
            &frames_as_rows(&few),
            few.len() as i64,
            1,
        )?;
        let sixteen: Vec<Tensor> = frames.iter().map(|f| f.narrow(0, 0, 16)).collect();
        write_gif(&put("growth.gif"), &sixteen, 4, 4, 120)?;

        // Damage: erase a square of half the side at a random place, let the cells recover.
        let side = o.damage_size.unwrap_or(size / 2).clamp(1, size);
        let u = noise.uniform(&[2]);
        let place =
            |i: i64| ((u.double_value(&[i]) * (size - side + 1) as f64) as i64).min(size - side);
        let (top, left) = (place(0), place(1));
        let rec = recovery_frames(
            model,
            &last.narrow(0, 0, 8),
            (top, left, side),
            o.recovery_steps,
            &mut noise,
        );
        let shown: Vec<Tensor> = rec.iter().step_by(2).map(|f| f.shallow_clone()).collect();
        write_grid(
            &put("recovery.png"),
            &frames_as_rows(&shown),
            shown.len() as i64,
            1,
        )?;
        write_gif(&put("recovery.gif"), &rec, 4, 4, 150)?;

        // Reconstructions: rows of 8 test images, each followed by its reconstruction.
        let x = test.range(0, 32.min(test.len()), size, dev);
        let q = model.encode(&x);
        let recon = model.render_mean(&model.decode(&q.mu, &mut noise));
        let rows: Vec<Tensor> = (0..x.size()[0])
            .step_by(8)
            .flat_map(|s| {
                let len = 8.min(x.size()[0] - s);
                [x.narrow(0, s, len), recon.narrow(0, s, len)]
            })
            .collect();
        write_grid(&put("reconstructions.png"), &Tensor::cat(&rows, 0), 8, 2)?;

        // Interpolations: 8 evenly spaced points between posterior means of two test
        // digits (first test image of each label), and between two prior draws.
        let mut ends: Vec<(Tensor, Tensor)> = Vec::new();
        if let Some(labels) = &test.labels {
            let labels = Vec::<u8>::try_from(labels).unwrap_or_default();
            for &(a, b) in &o.digit_pairs {
                let find = |d: u8| labels.iter().position(|&l| l == d);
                if let (Some(i), Some(j)) = (find(a), find(b)) {
                    let xi = test.range(i as i64, 1, size, dev);
                    let xj = test.range(j as i64, 1, size, dev);
                    ends.push((model.encode(&xi).mu, model.encode(&xj).mu));
                }
            }
        }
        let p = noise.normal(&[2, model.cfg.z_dim]).to_device(dev);
        ends.push((p.narrow(0, 0, 1), p.narrow(0, 1, 1)));
        let ts = Tensor::linspace(0.0, 1.0, 8, (Kind::Float, dev)).unsqueeze(1); // [8, 1]
        let rows: Vec<Tensor> = ends
            .iter()
            .map(|(a, b)| {
                let z = a * (1.0 - &ts) + b * &ts; // [8, Z]
                model.render_mean(&model.decode(&z, &mut noise))
            })
            .collect();
        write_grid(&put("interpolation.png"), &Tensor::cat(&rows, 0), 8, 2)?;
        Ok(())
    })?;
    if o.tsne_points > 0 && test.labels.is_some() {
        let (means, labels) = tsne::posterior_means(model, test, o.tsne_points, o.seed)?;
        let emb = tsne::embed(&means, o.seed);
        let title = format!("t-SNE of posterior means, {} test images", labels.len());
        labelled_scatter(&emb, &labels, &title, &put("tsne.png"))?;
    }
    if let Some(m) = o.metrics.as_ref().filter(|m| m.is_file()) {
        training_curves(m, &put("training_curves.png"))?;
    }
    Ok(written)
}
