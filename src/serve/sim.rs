//! The simulation of one batch under one model: latents, the current cell states, the
//! growth schedule and the step counter. No clock and no I/O, so it is testable alone;
//! the session ([`super::session`]) drives it.
use super::protocol::{FrameHeader, FLAG_GROWING, FLAG_PLAYING};
use crate::model::nca::double;
use crate::model::Vnca;
use crate::noise::{Noise, NoiseSource};
use tch::{Device, Kind, Tensor};

/// A rendered frame: the header and its u8 pixels.
pub struct Frame {
    pub header: FrameHeader,
    pub pixels: Vec<u8>,
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        super::protocol::encode_frame(&self.header, &self.pixels)
    }
}

/// How the slider's t mixes the two latents of a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// z = cos(t pi/2) z_a + sin(t pi/2) z_b: for independent standard normal z_a, z_b
    /// every z on the path is standard normal too (two draws from the prior).
    Spherical,
    /// z = (1 - t) z_a + t z_b: between two encodings (a drawing and a test digit), which
    /// are not independent draws from the prior.
    Linear,
}

pub struct Sim {
    pub model: Vnca,
    schedule: Vec<bool>,
    noise: Noise,
    z_a: Tensor, // [N, Z]
    z_b: Tensor, // [N, Z]
    path: Path,
    t: f64,
    /// Seed of the noise (update masks, the non-doubling step count) of a growth done at
    /// once for the slider: the same for every t, so that the slider morphs the picture
    /// instead of redrawing it.
    morph_seed: u64,
    state: Tensor, // [N, Z, h, w], h = w = the current grid
    /// Index of the next op in `schedule`; past the end, NCA steps at full size.
    pos: usize,
    step: u32,
    generation: u32,
}

impl Sim {
    /// `n` samples from the prior, growth starting at the seed.
    pub fn new(model: Vnca, n: usize, seed: u64) -> Self {
        let mut sim = Sim {
            model,
            schedule: Vec::new(),
            noise: Noise::new(seed),
            z_a: Tensor::zeros([1], (Kind::Float, Device::Cpu)),
            z_b: Tensor::zeros([1], (Kind::Float, Device::Cpu)),
            path: Path::Spherical,
            t: 0.0,
            morph_seed: seed,
            state: Tensor::zeros([1], (Kind::Float, Device::Cpu)),
            pos: 0,
            step: 0,
            generation: 0,
        };
        sim.new_latents(n, None);
        sim
    }

    pub fn batch(&self) -> usize {
        self.z_a.size()[0] as usize
    }

    pub fn step_count(&self) -> u32 {
        self.step
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Carries the generation counter over from another simulation (a model switch), so
    /// that it stays monotonic within a session.
    pub fn continue_generations(&mut self, from: &Sim) {
        self.generation = self.generation.max(from.generation.wrapping_add(1));
    }

    pub fn t(&self) -> f64 {
        self.t
    }

    pub fn growing(&self) -> bool {
        self.pos < self.schedule.len()
    }

    /// Updates of this generation's growth (its schedule's length).
    pub fn growth_len(&self) -> usize {
        self.schedule.len()
    }

    pub fn image_size(&self) -> i64 {
        self.model.cfg.image_size
    }

    /// Two fresh latents per sample from the prior (from the session's stream, or from
    /// `seed`), and growth from the interpolated z.
    pub fn new_latents(&mut self, n: usize, seed: Option<u64>) {
        if let Some(s) = seed {
            self.noise = Noise::new(s);
        }
        let z = self.model.cfg.z_dim;
        let (a, b) = (
            self.noise.normal(&[n as i64, z]),
            self.noise.normal(&[n as i64, z]),
        );
        self.set_latents(a, b, Path::Spherical);
    }

    /// Given latents z_a, z_b [N, Z] (a drawing's encoding and a test digit's, say),
    /// t = 0, and growth from the seed.
    pub fn set_latents(&mut self, z_a: Tensor, z_b: Tensor, path: Path) {
        self.z_a = z_a.to_device(Device::Cpu);
        self.z_b = z_b.to_device(Device::Cpu);
        self.path = path;
        self.t = 0.0;
        self.morph_seed = self.noise.uniform(&[1]).double_value(&[0]).to_bits();
        self.restart();
    }

    /// Moves along the path between the latents. A growth under way starts again from
    /// the seed; a finished one is replaced by the whole growth of the new z at once, so
    /// that moving the slider morphs the finished pictures (playing or paused).
    pub fn set_t(&mut self, t: f64) {
        self.t = t.clamp(0.0, 1.0);
        if self.growing() {
            self.restart();
        } else {
            self.grow_at_once();
        }
    }

    /// The current z: [N, Z].
    pub fn z(&self) -> Tensor {
        let (a, b) = match self.path {
            Path::Spherical => {
                let angle = self.t * std::f64::consts::FRAC_PI_2;
                (angle.cos(), angle.sin())
            }
            Path::Linear => (1.0 - self.t, self.t),
        };
        &self.z_a * a + &self.z_b * b
    }

    /// Back to the seed of the current z (a new generation, with its own schedule: the
    /// non-doubling decoder draws its number of steps).
    pub fn restart(&mut self) {
        let z = self.z().to_device(self.model.device());
        self.state = self.model.nca().seed(&z);
        self.schedule = self.model.nca().schedule(&mut self.noise);
        self.pos = 0;
        self.step = 0;
        self.generation = self.generation.wrapping_add(1);
    }

    /// The whole growth of the current z in one go, with the morph seed's noise: a new
    /// generation, shown at the end of its growth.
    pub fn grow_at_once(&mut self) {
        let mut noise = Noise::new(self.morph_seed);
        let z = self.z().to_device(self.model.device());
        let seed = self.model.nca().seed(&z);
        self.schedule = self.model.nca().schedule(&mut noise);
        self.state = tch::no_grad(|| {
            let mut s = seed;
            for &double_here in &self.schedule {
                s = if double_here {
                    double(&s)
                } else {
                    self.model.nca().step(&s, &mut noise)
                };
            }
            s
        });
        self.pos = self.schedule.len();
        self.step = self.schedule.len() as u32;
        self.generation = self.generation.wrapping_add(1);
    }

    /// One update: the next op of the growth schedule, then NCA steps at full size.
    /// Returns false when the states stopped being finite (then nothing changes).
    pub fn advance(&mut self) -> bool {
        let next = tch::no_grad(|| {
            if self.pos < self.schedule.len() && self.schedule[self.pos] {
                double(&self.state)
            } else {
                self.model.nca().step(&self.state, &mut self.noise)
            }
        });
        if !bool::try_from(next.isfinite().all()).unwrap_or(false) {
            return false;
        }
        self.state = next;
        if self.pos < self.schedule.len() {
            self.pos += 1;
        }
        self.step = self.step.saturating_add(1);
        true
    }

    /// Zeroes every channel of the cells of `sample` whose centres lie within `radius` of
    /// (x, y), in pixel coordinates of the final image (the grid is centred in it, as the
    /// frames show it). Returns the number of cells erased.
    pub fn erase(&mut self, sample: usize, x: f64, y: f64, radius: f64) -> usize {
        let s = self.state.size();
        let (n, h, w) = (s[0] as usize, s[2] as usize, s[3] as usize);
        if sample >= n {
            return 0;
        }
        let size = self.image_size() as usize;
        let (top, left) = ((size - h) / 2, (size - w) / 2);
        let mut keep = vec![1f32; n * h * w];
        let mut erased = 0;
        for i in 0..h {
            for j in 0..w {
                let cy = (top + i) as f64 + 0.5;
                let cx = (left + j) as f64 + 0.5;
                if (cx - x).powi(2) + (cy - y).powi(2) <= radius * radius {
                    keep[sample * h * w + i * w + j] = 0.0;
                    erased += 1;
                }
            }
        }
        if erased > 0 {
            let keep = Tensor::from_slice(&keep)
                .view([n as i64, 1, h as i64, w as i64])
                .to_device(self.state.device())
                .to_kind(self.state.kind());
            // In place: keeps the state's channels-last layout.
            tch::no_grad(|| {
                let _ = self.state.g_mul_(&keep);
            });
        }
        erased
    }

    /// The current states rendered (likelihood mean, centred at the final size).
    pub fn frame(&self, playing: bool) -> Frame {
        let size = self.image_size();
        let img = tch::no_grad(|| {
            self.model
                .render_centred(&self.state, size)
                .nan_to_num(0.0, 1.0, 0.0)
                .clamp(0.0, 1.0)
                .g_mul_scalar(255.0)
                .round()
                .to_kind(Kind::Uint8)
                .to_device(Device::Cpu)
                .contiguous()
        }); // [N, C, size, size]
        let c = img.size()[1];
        let pixels = Vec::<u8>::try_from(&img.view(-1)).expect("u8 pixels convert");
        let mut flags = 0;
        if self.growing() {
            flags |= FLAG_GROWING;
        }
        if playing {
            flags |= FLAG_PLAYING;
        }
        Frame {
            header: FrameHeader {
                channels: c as u8,
                n: self.batch() as u16,
                size: size as u16,
                grid: self.state.size()[2] as u16,
                generation: self.generation,
                step: self.step,
                flags,
            },
            pixels,
        }
    }
}
