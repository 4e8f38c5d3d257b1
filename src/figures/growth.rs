//! Growth and damage-recovery sequences: every NCA state of a few samples rendered as the
//! likelihood's mean, smaller grids centred on a black canvas of the final size (as the
//! reference's figures), as a frame grid (PNG) and an animation (GIF).
use crate::model::nca::damage;
use crate::model::Vnca;
use crate::noise::NoiseSource;
use tch::Tensor;

/// Grow `z` [N, Z] and return every state rendered: frames [T][N, C, S, S] (45 frames for
/// the paper's 32x32 model: seed, 40 steps, 4 fresh doublings), and the final state.
pub fn growth_frames(
    model: &Vnca,
    z: &Tensor,
    noise: &mut dyn NoiseSource,
) -> (Vec<Tensor>, Tensor) {
    let size = model.cfg.image_size;
    let mut frames = Vec::new();
    let last = tch::no_grad(|| {
        model.nca().grow(z, noise, &mut |s| {
            frames.push(model.render_centred(s, size))
        })
    });
    (frames, last)
}

/// Damage the final states and run `steps` more NCA steps at full size: frames
/// [before, damaged, after step 1, ..., after step `steps`].
pub fn recovery_frames(
    model: &Vnca,
    state: &Tensor,
    square: (i64, i64, i64),
    steps: usize,
    noise: &mut dyn NoiseSource,
) -> Vec<Tensor> {
    tch::no_grad(|| {
        let mut frames = vec![model.render_mean(state)];
        let s = damage(state, square.0, square.1, square.2);
        frames.push(model.render_mean(&s));
        let _last = model
            .nca()
            .run_steps(&s, steps, noise, &mut |s| frames.push(model.render_mean(s)));
        frames
    })
}

/// Frames [T][N, C, S, S] -> one grid tensor [N*T, C, S, S], a row per sample.
pub fn frames_as_rows(frames: &[Tensor]) -> Tensor {
    let stacked = Tensor::stack(frames, 1); // [N, T, C, S, S]
    let s = stacked.size();
    stacked.reshape([s[0] * s[1], s[2], s[3], s[4]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn frames_cover_every_state_at_full_size() {
        let cfg = Config::preset("tiny-test").unwrap();
        let model = Vnca::new(&cfg.model, tch::Device::Cpu, 0);
        let mut noise = crate::noise::Noise::new(0);
        let z = noise.normal(&[3, cfg.model.z_dim]);
        let (frames, last) = growth_frames(&model, &z, &mut noise);
        assert_eq!(frames.len(), 1 + model.nca().n_steps() + cfg.n_doublings());
        assert!(frames.iter().all(|f| f.size() == [3, 1, 32, 32]));
        // The seed frame shows a 2x2 grid in the centre, black around it.
        let seed = &frames[0];
        assert_eq!(
            seed.narrow(2, 0, 15)
                .abs()
                .sum(tch::Kind::Float)
                .double_value(&[]),
            0.0
        );
        let rec = recovery_frames(&model, &last, (8, 8, 16), 4, &mut noise);
        assert_eq!(rec.len(), 6);
        let d = damage(&last, 8, 8, 16);
        assert_eq!(
            d.narrow(2, 8, 16)
                .narrow(3, 8, 16)
                .abs()
                .sum(tch::Kind::Float)
                .double_value(&[]),
            0.0
        );
        assert_eq!(
            frames_as_rows(&frames).size(),
            [3 * frames.len() as i64, 1, 32, 32]
        );
    }
}
