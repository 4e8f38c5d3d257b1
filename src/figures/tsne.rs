//! t-SNE of posterior means coloured by digit (the paper's Figure 5 right): `n` test
//! images drawn with a seeded permutation, encoded to mu(x), embedded in 2-D with the
//! Barnes-Hut t-SNE of the maintained `bhtsne` crate (perplexity 30, 1000 iterations,
//! theta 0.5, as scikit-learn's defaults that the reference used), seeded initial layout.
use crate::dataset::Split;
use crate::model::Vnca;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;
use tch::{Device, Kind};

/// Posterior means of `n` random images of `split` (which must have labels): ([n][Z], labels).
pub fn posterior_means(
    model: &Vnca,
    split: &Split,
    n: usize,
    seed: u64,
) -> anyhow::Result<(Vec<Vec<f32>>, Vec<u8>)> {
    let labels = split.labels.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "the `{}` split has no labels to colour a t-SNE by",
            split.name
        )
    })?;
    let labels = Vec::<u8>::try_from(labels)?;
    let mut idx: Vec<i64> = (0..split.len()).collect();
    idx.shuffle(&mut Pcg64::seed_from_u64(seed));
    idx.truncate(n.min(idx.len()));
    let mut means = Vec::with_capacity(idx.len());
    tch::no_grad(|| -> anyhow::Result<()> {
        for chunk in idx.chunks(256) {
            let x = split.batch(chunk, model.cfg.image_size, model.device());
            let mu = model
                .encode(&x)
                .mu
                .to_device(Device::Cpu)
                .to_kind(Kind::Float); // [b, Z]
            let z = mu.size()[1] as usize;
            let flat = Vec::<f32>::try_from(mu.reshape(-1))?;
            means.extend(flat.chunks(z).map(|c| c.to_vec()));
        }
        Ok(())
    })?;
    Ok((means, idx.iter().map(|&i| labels[i as usize]).collect()))
}

/// 2-D t-SNE embedding of `points`.
pub fn embed(points: &[Vec<f32>], seed: u64) -> Vec<[f32; 2]> {
    let mut rng = Pcg64::seed_from_u64(seed);
    let init: Vec<f32> = (0..points.len() * 2)
        .map(|_| rng.gen_range(-1e-4..1e-4))
        .collect();
    let refs: Vec<&[f32]> = points.iter().map(|p| p.as_slice()).collect();
    let emb = bhtsne::tSNE::<f32, &[f32], 2>::new(&refs)
        .perplexity(30.0)
        .epochs(1000)
        .initial_embedding(init)
        .barnes_hut(0.5, |a, b| {
            a.iter()
                .zip(b.iter())
                .map(|(x, y)| (x - y).powi(2))
                .sum::<f32>()
                .sqrt()
        })
        .embedding();
    emb.chunks(2).map(|c| [c[0], c[1]]).collect()
}

/// Mean distance to the centroid of one's own label over mean distance to other labels'
/// centroids: < 1 when the labels form clusters (a number to test the embedding with).
pub fn cluster_ratio(points: &[[f32; 2]], labels: &[u8]) -> f64 {
    let mut c = [[0f64; 3]; 10];
    for (p, &l) in points.iter().zip(labels) {
        let e = &mut c[l as usize % 10];
        e[0] += p[0] as f64;
        e[1] += p[1] as f64;
        e[2] += 1.0;
    }
    let cent: Vec<Option<(f64, f64)>> = c
        .iter()
        .map(|e| (e[2] > 0.0).then(|| (e[0] / e[2], e[1] / e[2])))
        .collect();
    let d = |p: &[f32; 2], q: (f64, f64)| {
        ((p[0] as f64 - q.0).powi(2) + (p[1] as f64 - q.1).powi(2)).sqrt()
    };
    let (mut own, mut other, mut n_other) = (0.0f64, 0.0f64, 0.0f64);
    for (p, &l) in points.iter().zip(labels) {
        own += d(p, cent[l as usize % 10].expect("own label present"));
        for (k, q) in cent.iter().enumerate() {
            if let (true, Some(q)) = (k != l as usize % 10, q) {
                other += d(p, *q);
                n_other += 1.0;
            }
        }
    }
    (own / points.len() as f64) / (other / n_other.max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_well_separated_clusters() {
        // Three Gaussian blobs in 10-D: t-SNE must keep them apart.
        let mut rng = Pcg64::seed_from_u64(1);
        let mut pts = Vec::new();
        let mut labels = Vec::new();
        for k in 0..3u8 {
            for _ in 0..60 {
                pts.push(
                    (0..10)
                        .map(
                            |d| if d == k as usize { 10.0 } else { 0.0 } + rng.gen_range(-0.5..0.5),
                        )
                        .collect(),
                );
                labels.push(k);
            }
        }
        let e = embed(&pts, 0);
        assert_eq!(e.len(), 180);
        let r = cluster_ratio(&e, &labels);
        assert!(r < 0.3, "clusters not separated: ratio {r}");
        // And a shuffled labelling is not clustered.
        let mut shuffled = labels.clone();
        shuffled.shuffle(&mut rng);
        assert!(cluster_ratio(&e, &shuffled) > 0.8);
    }
}
