//! One client's simulation: the latents, the current cell states, the step counter and
//! the clock (play/pause/speed), run on a dedicated thread so that libtorch never blocks
//! the async runtime.
//!
//! libtorch tensors are `Send` but not `Sync`, so a model cannot be shared between session
//! threads; each session builds its own copy of a model from a [`ModelSnapshot`] (plain
//! CPU floats, shared read-only) the first time it uses that model.
use super::protocol::{
    encode_frame, ClientMsg, FrameHeader, LimitsInfo, ModelInfo, ServerMsg, Status, ACK_WINDOW,
    FLAG_GROWING, FLAG_PLAYING, MAX_RADIUS, MAX_SPEED, MIN_SPEED,
};
use crate::config::{Config, DecoderKind};
use crate::figures::growth::render_centred;
use crate::model::nca::double;
use crate::model::Vnca;
use crate::noise::{Noise, NoiseSource};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// A trained model's weights and config, shareable between threads.
pub struct ModelSnapshot {
    pub name: String,
    pub cfg: Config,
    weights: Vec<(String, Vec<i64>, Vec<f32>)>,
}

impl ModelSnapshot {
    /// Copies every variable of `model` to plain CPU memory.
    pub fn from_model(name: impl Into<String>, model: &Vnca, cfg: &Config) -> Self {
        let mut weights: Vec<(String, Vec<i64>, Vec<f32>)> = model
            .vs
            .variables()
            .into_iter()
            .map(|(k, t)| {
                let flat = t
                    .to_device(Device::Cpu)
                    .to_kind(Kind::Float)
                    .contiguous()
                    .view(-1);
                let v = Vec::<f32>::try_from(&flat).expect("f32 parameters convert");
                (k, t.size(), v)
            })
            .collect();
        weights.sort_by(|a, b| a.0.cmp(&b.0));
        ModelSnapshot {
            name: name.into(),
            cfg: cfg.clone(),
            weights,
        }
    }

    /// A model on `device` with these weights (for one session thread).
    pub fn instantiate(&self, device: Device) -> anyhow::Result<Vnca> {
        let model = Vnca::new(&self.cfg.model, device, 0);
        let mut vars = model.vs.variables();
        anyhow::ensure!(
            vars.len() == self.weights.len(),
            "model `{}`: {} variables, snapshot has {}",
            self.name,
            vars.len(),
            self.weights.len()
        );
        tch::no_grad(|| -> anyhow::Result<()> {
            for (name, shape, values) in &self.weights {
                let Some(var) = vars.get_mut(name) else {
                    anyhow::bail!("model `{}` has no variable `{name}`", self.name);
                };
                anyhow::ensure!(&var.size() == shape, "shape of `{name}`");
                let src = Tensor::from_slice(values).view(shape.as_slice());
                var.copy_(&src.to_device(device).to_kind(var.kind()));
            }
            Ok(())
        })?;
        Ok(model)
    }

    pub fn info(&self) -> ModelInfo {
        let m = &self.cfg.model;
        ModelInfo {
            name: self.name.clone(),
            config: self.cfg.name.clone(),
            z_dim: m.z_dim,
            image_size: m.image_size,
            channels: m.channels,
            decoder: match m.decoder {
                DecoderKind::Doubling => "doubling",
                DecoderKind::NonDoubling => "non-doubling",
            },
            growth_steps: growth_steps(&self.cfg),
        }
    }
}

/// Updates of one growth: for the doubling decoder steps_per_stage x (doublings + 1) NCA
/// steps plus the doublings; for the non-doubling one the most steps it may draw.
pub fn growth_steps(cfg: &Config) -> usize {
    match cfg.model.decoder {
        DecoderKind::Doubling => {
            cfg.model.steps_per_stage * (cfg.n_doublings() + 1) + cfg.n_doublings()
        }
        DecoderKind::NonDoubling => cfg.model.max_steps,
    }
}

/// The settings every session shares.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub device: Device,
    /// Samples shown at first.
    pub default_batch: usize,
    /// Most samples a client may ask for.
    pub max_batch: usize,
    /// Steps per second at first.
    pub default_speed: f64,
    /// After growth, a session that has had no message for this many steps pauses itself
    /// (an open, forgotten tab does not burn CPU for ever).
    pub idle_steps: u64,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            device: Device::Cpu,
            default_batch: 16,
            max_batch: 64,
            default_speed: 15.0,
            idle_steps: 3000,
        }
    }
}

impl SessionOptions {
    pub fn limits(&self) -> LimitsInfo {
        LimitsInfo {
            max_message_bytes: super::protocol::MAX_MESSAGE_BYTES,
            max_batch: self.max_batch,
            min_speed: MIN_SPEED,
            max_speed: MAX_SPEED,
            max_radius: MAX_RADIUS,
            idle_steps: self.idle_steps,
        }
    }
}

/// A rendered frame: the header and its u8 pixels.
pub struct Frame {
    pub header: FrameHeader,
    pub pixels: Vec<u8>,
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        encode_frame(&self.header, &self.pixels)
    }
}

/// The simulation of one batch under one model (no clock, no I/O): testable on its own.
pub struct Sim {
    pub model: Vnca,
    schedule: Vec<bool>,
    noise: Noise,
    z_a: Tensor,
    z_b: Tensor,
    t: f64,
    state: Tensor,
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
            t: 0.0,
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

    /// Two fresh latents per sample (from the session's stream, or from `seed`), and
    /// growth from the interpolated z.
    pub fn new_latents(&mut self, n: usize, seed: Option<u64>) {
        if let Some(s) = seed {
            self.noise = Noise::new(s);
        }
        let z = self.model.cfg.z_dim;
        self.z_a = self.noise.normal(&[n as i64, z]);
        self.z_b = self.noise.normal(&[n as i64, z]);
        self.restart();
    }

    pub fn set_t(&mut self, t: f64) {
        self.t = t.clamp(0.0, 1.0);
        self.restart();
    }

    /// Spherical interpolation z = cos(t pi/2) z_a + sin(t pi/2) z_b: for independent
    /// standard normal z_a, z_b every z on the path is standard normal too.
    pub fn z(&self) -> Tensor {
        let a = (self.t * std::f64::consts::FRAC_PI_2).cos();
        let b = (self.t * std::f64::consts::FRAC_PI_2).sin();
        &self.z_a * a + &self.z_b * b
    }

    /// Back to the seed of the current z (a new generation, with its own schedule: the
    /// non-doubling decoder draws its number of steps).
    pub fn restart(&mut self) {
        let z = self.z().to_device(self.model.device());
        self.state = self.model.nca.seed(&z);
        self.schedule = self.model.nca.schedule(&mut self.noise);
        self.pos = 0;
        self.step = 0;
        self.generation = self.generation.wrapping_add(1);
    }

    /// One update: the next op of the growth schedule, then NCA steps at full size.
    /// Returns false when the states stopped being finite (then nothing changes).
    pub fn advance(&mut self) -> bool {
        let next = tch::no_grad(|| {
            if self.pos < self.schedule.len() && self.schedule[self.pos] {
                double(&self.state)
            } else {
                self.model.nca.step(&self.state, &mut self.noise)
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
            render_centred(&self.model, &self.state, size)
                .nan_to_num(0.0, 1.0, 0.0)
                .clamp(0.0, 1.0)
                .g_mul_scalar(255.0)
                .round()
                .to_kind(Kind::Uint8)
                .to_device(Device::Cpu)
                .contiguous()
        });
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

/// What a session thread sends to its connection.
#[derive(Debug)]
pub enum Outgoing {
    Text(String),
    Binary(Vec<u8>),
    /// Close the connection with this code and reason.
    Close(u16, String),
}

/// The clock and settings around a [`Sim`], driven by client messages.
struct Runner {
    models: Arc<Vec<ModelSnapshot>>,
    opts: SessionOptions,
    /// Each model instantiated at most once per session.
    built: Vec<Option<Vnca>>,
    model_index: usize,
    sim: Sim,
    playing: bool,
    speed: f64,
    idle: u64,
    notice: Option<String>,
    /// Frames sent and not yet acked; None for a client that does not ack.
    unacked: Option<u64>,
}

impl Runner {
    fn status(&mut self) -> ServerMsg {
        ServerMsg::Status(Status {
            model: self.model_index,
            batch: self.sim.batch(),
            playing: self.playing,
            steps_per_second: self.speed,
            t: self.sim.t(),
            generation: self.sim.generation(),
            step: self.sim.step_count(),
            growth_steps: self.sim.growth_len(),
            phase: if self.sim.growing() {
                "growing"
            } else {
                "healing"
            },
            notice: self.notice.take(),
        })
    }

    fn switch_model(&mut self, index: usize) -> anyhow::Result<()> {
        if index == self.model_index {
            return Ok(());
        }
        let model = match self.built[index].take() {
            Some(m) => m,
            None => self.models[index].instantiate(self.opts.device)?,
        };
        let n = self.sim.batch();
        let t = self.sim.t();
        let old = std::mem::replace(&mut self.sim, Sim::new(model, n, rand::random()));
        self.sim.generation = old.generation; // stays monotonic within a session
        self.built[self.model_index] = Some(old.model);
        self.model_index = index;
        self.sim.t = t;
        self.sim.restart();
        Ok(())
    }

    /// Applies one message: Ok((settings changed, picture changed)) says whether a status
    /// and a frame go out; Err is an error reply (the session goes on).
    fn apply(&mut self, msg: ClientMsg) -> Result<(bool, bool), String> {
        self.idle = 0;
        match msg {
            // Flow control is handled by the session loop; an ack changes nothing here.
            ClientMsg::Ack => return Ok((false, false)),
            ClientMsg::Play => self.playing = true,
            ClientMsg::Pause => self.playing = false,
            ClientMsg::Speed(s) => self.speed = s,
            ClientMsg::Step => {
                if !self.sim.advance() {
                    self.notice = Some(diverged());
                }
                return Ok((self.notice.is_some(), true));
            }
            ClientMsg::Erase {
                sample,
                x,
                y,
                radius,
            } => {
                let n = self.sim.batch();
                if sample >= n {
                    return Err(format!(
                        "`sample` {sample} is out of range: this session shows {n} samples"
                    ));
                }
                let size = self.sim.image_size() as f64;
                if !(0.0..=size).contains(&x) || !(0.0..=size).contains(&y) {
                    return Err(format!(
                        "`x` and `y` of `erase` must be in [0, {size}] (pixels of the image)"
                    ));
                }
                self.sim.erase(sample, x, y, radius);
                return Ok((false, true));
            }
            ClientMsg::NewLatents(seed) => {
                let n = self.sim.batch();
                self.sim.new_latents(n, seed);
                return Ok((true, true));
            }
            ClientMsg::Interpolate(t) => {
                self.sim.set_t(t);
                return Ok((true, true));
            }
            ClientMsg::Restart => {
                self.sim.restart();
                return Ok((true, true));
            }
            ClientMsg::Model(i) => {
                if i >= self.models.len() {
                    return Err(format!(
                        "model index {i} is out of range: {} model(s) loaded",
                        self.models.len()
                    ));
                }
                self.switch_model(i)
                    .map_err(|e| format!("cannot load model {i}: {e:#}"))?;
                return Ok((true, true));
            }
            ClientMsg::Batch(n) => {
                if n > self.opts.max_batch {
                    return Err(format!(
                        "batch {n} is too large: at most {} samples",
                        self.opts.max_batch
                    ));
                }
                self.sim.new_latents(n, None);
                return Ok((true, true));
            }
        }
        Ok((true, false))
    }
}

fn diverged() -> String {
    "the cell states stopped being finite; paused (draw new latents or restart)".into()
}

/// A session: hello, then frames at the chosen speed, until the client goes (`commands`
/// disconnects) or stops reading (`out` closes). Runs on its own thread. `acks`: the
/// client acks every frame (flow control, see protocol.rs).
pub fn run(
    models: Arc<Vec<ModelSnapshot>>,
    opts: SessionOptions,
    acks: bool,
    commands: Receiver<ClientMsg>,
    out: tokio::sync::mpsc::Sender<Outgoing>,
) {
    let _guard = tch::no_grad_guard();
    let send = |o: Outgoing| out.blocking_send(o).is_ok();
    let hello = ServerMsg::Hello {
        version: super::protocol::VERSION,
        models: models.iter().map(ModelSnapshot::info).collect(),
        limits: opts.limits(),
    };
    if !send(Outgoing::Text(hello.to_json())) {
        return;
    }
    let model = match models[0].instantiate(opts.device) {
        Ok(m) => m,
        Err(e) => {
            let msg = ServerMsg::error(format!("cannot load the model: {e:#}"));
            send(Outgoing::Text(msg.to_json()));
            send(Outgoing::Close(1011, "model failed to load".into()));
            return;
        }
    };
    let batch = opts.default_batch.clamp(1, opts.max_batch.max(1));
    let speed = opts.default_speed.clamp(MIN_SPEED, MAX_SPEED);
    let mut r = Runner {
        built: (0..models.len()).map(|_| None).collect(),
        models: models.clone(),
        opts,
        model_index: 0,
        sim: Sim::new(model, batch, rand::random()),
        playing: true,
        speed,
        idle: 0,
        notice: None,
        unacked: acks.then_some(0),
    };
    let mut status_due = true;
    let mut frame_due = true;
    let mut next_tick = Instant::now();
    loop {
        if status_due {
            let s = r.status();
            if !send(Outgoing::Text(s.to_json())) {
                return;
            }
            status_due = false;
        }
        // Flow control (protocol.rs): an acking client gets at most ACK_WINDOW frames
        // ahead; then frames and the clock wait for its next message.
        let window_open = r.unacked.is_none_or(|n| n < ACK_WINDOW);
        if frame_due && window_open {
            if !send(Outgoing::Binary(r.sim.frame(r.playing).encode())) {
                return;
            }
            frame_due = false;
            if let Some(n) = r.unacked.as_mut() {
                *n += 1;
            }
        }
        let window_open = r.unacked.is_none_or(|n| n < ACK_WINDOW);
        // Wait for a message or the next tick.
        let wait = if r.playing && window_open && !frame_due {
            next_tick.saturating_duration_since(Instant::now())
        } else {
            Duration::from_secs(3600)
        };
        let mut handle = |m: ClientMsg, r: &mut Runner| -> bool {
            if matches!(m, ClientMsg::Ack) {
                if let Some(n) = r.unacked.as_mut() {
                    *n = n.saturating_sub(1);
                }
                return true;
            }
            let before = r.playing;
            let reply = r.apply(m);
            if r.playing && !before {
                next_tick = Instant::now();
            }
            match reply {
                Ok((status, picture)) => {
                    status_due |= status;
                    frame_due |= picture;
                    true
                }
                Err(e) => send(Outgoing::Text(ServerMsg::error(e).to_json())),
            }
        };
        match commands.recv_timeout(wait) {
            Ok(m) => {
                if !handle(m, &mut r) {
                    return;
                }
                // Everything queued meanwhile (a drag sends many erases): one frame after.
                while let Ok(m) = commands.try_recv() {
                    if !handle(m, &mut r) {
                        return;
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if r.notice.is_some() {
            r.playing = false;
            status_due = true;
        }
        let now = Instant::now();
        let window_open = r.unacked.is_none_or(|n| n < ACK_WINDOW);
        if r.playing && now >= next_tick && window_open && !frame_due {
            if r.sim.advance() {
                frame_due = true;
                if !r.sim.growing() {
                    r.idle += 1;
                }
                if r.idle >= r.opts.idle_steps {
                    r.playing = false;
                    r.notice = Some(format!(
                        "paused after {} steps without input (press play to go on)",
                        r.opts.idle_steps
                    ));
                    status_due = true;
                    frame_due = true;
                }
            } else {
                r.playing = false;
                r.notice = Some(diverged());
                status_due = true;
                frame_due = true;
            }
            let period = Duration::from_secs_f64(1.0 / r.speed);
            next_tick += period;
            if next_tick < now {
                next_tick = now;
            }
        }
    }
}
