//! One client's session: a [`Sim`] with a clock (play/pause/speed), flow control and the
//! client's messages, run on a dedicated thread so that libtorch never blocks the async
//! runtime.
//!
//! After its growth a model that was not trained to heal stops (pauses, with a notice):
//! the doubling models were trained to produce an image after exactly their schedule's
//! steps, and run on they dissolve within seconds. A model trained with damage (pool
//! training) runs on by itself: that is the healing the page shows.
use super::drawing;
use super::protocol::{
    ClientMsg, LimitsInfo, Posterior, ServerMsg, Status, TestDigit, ACK_WINDOW, MAX_RADIUS,
    MAX_SPEED, MIN_SPEED,
};
use super::sim::{Path, Sim};
use super::snapshot::ModelSnapshot;
use crate::model::Vnca;
use crate::noise::Noise;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::Device;

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
    /// Run on after growth also with models not trained to heal (by default they stop;
    /// the protocol and load tests want an endless stream of frames).
    pub run_past_growth: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            device: Device::Cpu,
            default_batch: 16,
            max_batch: 64,
            default_speed: 15.0,
            idle_steps: 3000,
            run_past_growth: false,
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

/// What a session thread sends to its connection.
#[derive(Debug)]
pub enum Outgoing {
    Text(String),
    Binary(Vec<u8>),
    /// Close the connection with this code and reason.
    Close(u16, String),
}

/// Flow control (protocol.rs): an acking client gets at most [`ACK_WINDOW`] frames
/// ahead of its acks; other clients are paced by TCP alone. The window is computed here
/// only, when a frame goes out or an ack comes in; the session reads `open`.
struct Flow {
    /// Frames sent and not yet acked; None for a client that does not ack.
    unacked: Option<u64>,
    /// Another frame may go out now.
    open: bool,
}

impl Flow {
    fn new(acks: bool) -> Self {
        Flow {
            unacked: acks.then_some(0),
            open: true,
        }
    }

    fn sent(&mut self) {
        self.count(|n| n + 1);
    }

    fn acked(&mut self) {
        self.count(|n| n.saturating_sub(1));
    }

    fn count(&mut self, f: impl Fn(u64) -> u64) {
        if let Some(n) = self.unacked.as_mut() {
            *n = f(*n);
            self.open = *n < ACK_WINDOW;
        }
    }
}

/// The last drawing, kept so that a model switch can encode it again.
struct Drawing {
    size: usize,
    pixels: Vec<u8>,
    z: Posterior,
    test_digit: TestDigit,
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
    /// Steps since the last message (for the idle pause).
    idle: u64,
    notice: Option<String>,
    drawing: Option<Drawing>,
    flow: Flow,
    status_due: bool,
    frame_due: bool,
    next_tick: Instant,
}

impl Runner {
    fn heals(&self) -> bool {
        self.models[self.model_index].heals()
    }

    fn phase(&self) -> &'static str {
        if self.sim.growing() {
            "growing"
        } else if self.heals() {
            "healing"
        } else if self.sim.step_count() as usize > self.sim.growth_len() {
            "past training"
        } else {
            "grown"
        }
    }

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
            phase: self.phase(),
            source: if self.drawing.is_some() {
                "drawing"
            } else {
                "prior"
            },
            test_digit: self.drawing.as_ref().map(|d| d.test_digit),
            notice: self.notice.take(),
        })
    }

    /// A growth just ended (by the clock, or all at once for the slider): a model not
    /// trained to heal stops here.
    fn growth_ended(&mut self) {
        if self.playing && !self.heals() && !self.opts.run_past_growth {
            self.playing = false;
            self.notice = Some(format!(
                "grown in {} steps; this model was trained to grow, not to heal or to persist \
                 past its growth, so it stops here (Play runs it on anyway; Regrow grows again)",
                self.sim.growth_len()
            ));
            self.status_due = true;
        }
    }

    fn switch_model(&mut self, index: usize) -> anyhow::Result<()> {
        if index == self.model_index {
            return Ok(());
        }
        let model = match self.built[index].take() {
            Some(m) => m,
            None => self.models[index].instantiate(self.opts.device)?,
        };
        let (n, t) = (self.sim.batch(), self.sim.t());
        let old = std::mem::replace(&mut self.sim, Sim::new(model, n, rand::random()));
        self.sim.continue_generations(&old);
        self.built[self.model_index] = Some(old.model);
        self.model_index = index;
        let redraw = self.drawing.take();
        match redraw {
            Some(d) if self.models[index].draw_size() == Some(d.size) => {
                let k = d.test_digit.index;
                self.draw(d.size, d.pixels, d.z, Some(k))
                    .map_err(anyhow::Error::msg)?;
            }
            _ => self.sim.set_t(t),
        }
        Ok(())
    }

    /// Encodes a drawing (and the test digit at the slider's other end) and grows it.
    fn draw(
        &mut self,
        size: usize,
        pixels: Vec<u8>,
        z: Posterior,
        test_digit: Option<usize>,
    ) -> Result<(), String> {
        let snap = &self.models[self.model_index];
        let Some(side) = snap.draw_size() else {
            return Err(format!(
                "model `{}` takes no drawings (it was not trained on binarized MNIST); \
                 choose an MNIST model",
                snap.name
            ));
        };
        if size != side {
            return Err(format!(
                "the drawing is {size}x{size}; model `{}` takes {side}x{side}",
                snap.name
            ));
        }
        let n_test = drawing::test_digits().map_err(|e| e.to_string())?;
        let index = test_digit.unwrap_or_else(|| rand::random::<usize>() % n_test);
        let model = &self.sim.model;
        let x = drawing::model_input(model, &pixels, size)?;
        let (xt, label) = drawing::test_digit(model, index).map_err(|e| e.to_string())?;
        let mut noise = Noise::new(rand::random());
        let z_a = drawing::encode(model, &x, z, &mut noise); // [1, Z]
        let z_b = drawing::encode(model, &xt, Posterior::Mean, &mut noise); // [1, Z]
        self.sim.set_latents(z_a, z_b, Path::Linear);
        self.drawing = Some(Drawing {
            size,
            pixels,
            z,
            test_digit: TestDigit { index, label },
        });
        Ok(())
    }

    /// Applies one message: Ok((settings changed, picture changed)) says whether a status
    /// and a frame go out; Err is an error reply (the session goes on).
    fn apply(&mut self, msg: ClientMsg) -> Result<(bool, bool), String> {
        // Every message but `ack` changes settings (a status goes out); all but these
        // also change the picture.
        let picture = !matches!(
            msg,
            ClientMsg::Play | ClientMsg::Pause | ClientMsg::Speed(_)
        );
        if msg != ClientMsg::Ack {
            self.idle = 0;
        }
        // A new growth is there to be watched: it starts the clock (also after a model
        // stopped at the end of its last growth).
        let grows = matches!(
            msg,
            ClientMsg::Restart
                | ClientMsg::NewLatents(_)
                | ClientMsg::Model(_)
                | ClientMsg::Batch(_)
                | ClientMsg::Draw { .. }
        );
        match msg {
            ClientMsg::Ack => {
                // Flow control only; not input for the idle pause.
                self.flow.acked();
                return Ok((false, false));
            }
            ClientMsg::Play => {
                if !self.playing {
                    self.next_tick = Instant::now();
                }
                self.playing = true;
            }
            ClientMsg::Pause => self.playing = false,
            ClientMsg::Speed(s) => self.speed = s,
            ClientMsg::Step => {
                if !self.sim.advance() {
                    self.playing = false;
                    self.notice = Some(diverged());
                }
                // The phase may change (grown -> past training).
                return Ok((true, true));
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
                self.drawing = None;
                let n = self.sim.batch();
                self.sim.new_latents(n, seed);
            }
            ClientMsg::Interpolate(t) => {
                self.sim.set_t(t);
                if !self.sim.growing() {
                    self.growth_ended();
                }
            }
            ClientMsg::Restart => self.sim.restart(),
            ClientMsg::Model(i) => {
                if i >= self.models.len() {
                    return Err(format!(
                        "model index {i} is out of range: {} model(s) loaded",
                        self.models.len()
                    ));
                }
                self.switch_model(i)
                    .map_err(|e| format!("cannot load model {i}: {e:#}"))?;
            }
            ClientMsg::Batch(n) => {
                if n > self.opts.max_batch {
                    return Err(format!(
                        "batch {n} is too large: at most {} samples",
                        self.opts.max_batch
                    ));
                }
                self.drawing = None;
                self.sim.new_latents(n, None);
            }
            ClientMsg::Draw {
                size,
                pixels,
                z,
                test_digit,
            } => self.draw(size, pixels, z, test_digit)?,
        }
        if grows && !self.playing {
            self.playing = true;
            self.next_tick = Instant::now();
        }
        Ok((true, picture))
    }

    /// Handles one message, queueing the replies it needs. False: the client is gone.
    fn handle(&mut self, msg: ClientMsg, send: &impl Fn(Outgoing) -> bool) -> bool {
        match self.apply(msg) {
            Ok((status, picture)) => {
                self.status_due |= status;
                self.frame_due |= picture;
                true
            }
            Err(e) => send(Outgoing::Text(ServerMsg::error(e).to_json())),
        }
    }

    /// How long to wait for a message: until the next tick when the clock runs and a
    /// step may go out, else until a message comes.
    fn wait(&self) -> Duration {
        if self.playing && self.flow.open && !self.frame_due {
            self.next_tick.saturating_duration_since(Instant::now())
        } else {
            Duration::from_secs(3600)
        }
    }

    /// The clock: one update when it is due (and the client can take its frame).
    fn tick(&mut self) {
        let now = Instant::now();
        if !(self.playing && now >= self.next_tick && self.flow.open && !self.frame_due) {
            return;
        }
        let was_growing = self.sim.growing();
        if self.sim.advance() {
            self.frame_due = true;
            if was_growing && !self.sim.growing() {
                self.growth_ended();
            }
            if !self.sim.growing() {
                self.idle += 1;
            }
            if self.playing && self.idle >= self.opts.idle_steps {
                self.playing = false;
                self.notice = Some(format!(
                    "paused after {} steps without input (press play to go on)",
                    self.opts.idle_steps
                ));
                self.status_due = true;
            }
        } else {
            self.playing = false;
            self.notice = Some(diverged());
            self.status_due = true;
            self.frame_due = true;
        }
        self.next_tick = (self.next_tick + Duration::from_secs_f64(1.0 / self.speed)).max(now);
    }

    /// Sends the status and the frame that are due (the frame only into an open window).
    /// False: the client is gone.
    fn flush(&mut self, send: &impl Fn(Outgoing) -> bool) -> bool {
        if self.status_due {
            let s = self.status();
            if !send(Outgoing::Text(s.to_json())) {
                return false;
            }
            self.status_due = false;
        }
        if self.frame_due && self.flow.open {
            if !send(Outgoing::Binary(self.sim.frame(self.playing).encode())) {
                return false;
            }
            self.frame_due = false;
            self.flow.sent();
        }
        true
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
        drawing: None,
        flow: Flow::new(acks),
        status_due: true,
        frame_due: true,
        next_tick: Instant::now(),
    };
    // Each turn: send what is due, wait for messages or the next tick, handle them
    // (everything queued at once: a drag sends many erases, one frame goes out after),
    // then the clock.
    loop {
        if !r.flush(&send) {
            return;
        }
        match commands.recv_timeout(r.wait()) {
            Ok(m) => {
                if !r.handle(m, &send) {
                    return;
                }
                while let Ok(m) = commands.try_recv() {
                    if !r.handle(m, &send) {
                        return;
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        r.tick();
    }
}
