//! The WebSocket protocol of `vnca serve` (endpoint `/ws`, one independent session per
//! connection).
//!
//! # Client -> server: JSON text messages
//! At most [`MAX_MESSAGE_BYTES`] bytes each; every field is checked (type, range, no
//! unknown fields). A message that fails gets `{"type":"error","message":...}` back and the
//! session goes on; binary messages are refused the same way.
//!
//! | message | effect |
//! |---|---|
//! | `{"type":"play"}` / `{"type":"pause"}` | run / stop the clock |
//! | `{"type":"step"}` | one update now (useful while paused) |
//! | `{"type":"speed","steps_per_second":S}` | S in [[`MIN_SPEED`], [`MAX_SPEED`]] |
//! | `{"type":"erase","sample":I,"x":X,"y":Y,"radius":R}` | zero every channel of the cells of sample I whose centres lie within R of (X, Y); X, Y in [0, size] are pixel coordinates of the final image (a growing grid is centred, so one cell = one pixel at every stage); R in (0, [`MAX_RADIUS`]] |
//! | `{"type":"new_latents"}` or `{"type":"new_latents","seed":N}` | draw two new latents per sample from the prior and grow again |
//! | `{"type":"interpolate","t":T}` | T in [0, 1]: every sample's z = cos(T pi/2) z_a + sin(T pi/2) z_b (stays N(0, I)); after a drawing z = (1 - T) z_a + T z_b. A growth under way starts again; a finished one is replaced by the finished growth of the new z (the pictures morph) |
//! | `{"type":"draw","size":S,"pixels":[...],"z":"mean"}` | a drawn digit: S x S grey levels 0..=255 (0 = background), row-major, S = the model's `draw_size`; binarized and padded as the training data, encoded (`"z"`: `"mean"` of q(z\|x), or `"sample"`), grown as one sample; z_b becomes the encoding of test digit `"test_digit":K` (optional; default: a random one) |
//! | `{"type":"restart"}` | grow again from the current latents |
//! | `{"type":"model","index":I}` | switch to loaded model I (new latents) |
//! | `{"type":"batch","n":N}` | show N samples, 1 <= N <= the server's max batch (new latents) |
//! | `{"type":"ack"}` | the client has shown a frame; see flow control below |
//!
//! A message that starts a new growth (`restart`, `new_latents`, `model`, `batch`, `draw`)
//! also starts the clock. After its growth a model not trained to heal stops (a `status`
//! with `playing: false`, phase `grown` and a notice); `play` or `step` runs it on.
//!
//! Flow control: a client that connects to `/ws?ack=1` promises to send `ack` for every
//! frame it has shown, and is then never more than [`ACK_WINDOW`] frames ahead of its
//! acks: the simulation waits for the next `ack` before it runs on. The page does this,
//! so a slow device or a busy tab sees recent frames, not a backlog. Other clients are
//! paced by TCP alone (the server's send buffer is small, but the client's receive
//! buffer may hold hundreds of frames), and their acks are ignored. `ack` does not
//! count as input for the idle pause.
//!
//! # Server -> client
//! Text messages, JSON with a `type`: `hello` (once, first: the models and the limits),
//! `status` (after every change of the session's settings: model, batch, playing, speed,
//! t, generation, step, phase (`growing`; `grown`: a model not trained to heal stops
//! after its growth; `healing`: NCA steps after growth of a model trained to heal;
//! `past training`: steps a person asked for beyond a non-healing model's growth),
//! source (`prior` or `drawing`, with the test digit), and an optional `notice`), `error`
//! (`message`; when the
//! server is full it is followed by a close with code 1013).
//!
//! Binary messages are frames, one per update (and one after each edit), in order:
//! a [`HEADER_BYTES`]-byte little-endian header, then `n * channels * size * size` u8
//! pixels (sample-major, then channel, row, column; 0 = black, 255 = white: the
//! likelihood's mean x 255). Header: `b"VNCA"`, version u8 (= [`VERSION`]), channels u8,
//! n u16, size u16, grid u16 (side of the current cell grid, centred in the image),
//! generation u32 (+1 at every regrowth), step u32 (updates since the seed: NCA steps and
//! doublings), flags u32 (bit 0: still growing, bit 1: playing).
use serde::Serialize;
use serde_json::{Map, Value};

/// Largest client message accepted (bytes of JSON text).
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Messages larger than this are not even read: the WebSocket layer closes the connection
/// (code 1009); between this and [`MAX_MESSAGE_BYTES`] they get an error reply.
pub const HARD_MAX_MESSAGE_BYTES: usize = 64 * 1024;
pub const MIN_SPEED: f64 = 0.5;
pub const MAX_SPEED: f64 = 60.0;
pub const MAX_RADIUS: f64 = 64.0;
pub const VERSION: u8 = 1;
pub const MAGIC: &[u8; 4] = b"VNCA";
pub const HEADER_BYTES: usize = 24;
pub const FLAG_GROWING: u32 = 1;
pub const FLAG_PLAYING: u32 = 2;

/// A validated client message.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientMsg {
    Play,
    Pause,
    Step,
    Speed(f64),
    Erase {
        sample: usize,
        x: f64,
        y: f64,
        radius: f64,
    },
    NewLatents(Option<u64>),
    Interpolate(f64),
    Restart,
    Model(usize),
    Batch(usize),
    /// One frame shown (flow control).
    Ack,
    /// A drawn digit (grey levels, row-major); sizes are checked by the session.
    Draw {
        size: usize,
        pixels: Vec<u8>,
        z: Posterior,
        test_digit: Option<usize>,
    },
}

/// Which z of q(z|x) a drawing is grown from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Posterior {
    Mean,
    Sample,
}

/// Largest drawing side accepted by the parser (the session then wants its model's).
pub const MAX_DRAW_SIZE: u64 = 64;

/// Frames a client that acks may be ahead of its last `ack`.
pub const ACK_WINDOW: u64 = 4;

/// Why a message was refused; its text goes back to the client.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(msg.into()))
}

/// A client-chosen name as shown in an error: at most 40 characters, control characters
/// and line separators replaced, so the error stays one short line.
fn shown_name(s: &str) -> String {
    s.chars()
        .take(40)
        .map(|c| {
            if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

/// A client-sent number as shown in an error: as written when short, else in exponent
/// form (`{}` writes 1e308 with 309 digits).
fn shown_number(x: f64) -> String {
    let s = x.to_string();
    if s.len() <= 24 {
        s
    } else {
        format!("{x:e}")
    }
}

/// Checks that `obj` has exactly the fields `allowed` (plus `type`).
fn only_fields(
    obj: &Map<String, Value>,
    kind: &str,
    allowed: &[&str],
) -> Result<(), ProtocolError> {
    for k in obj.keys() {
        if k != "type" && !allowed.contains(&k.as_str()) {
            let shown = shown_name(k);
            return err(format!("unknown field `{shown}` in a `{kind}` message"));
        }
    }
    Ok(())
}

fn number(obj: &Map<String, Value>, kind: &str, field: &str) -> Result<f64, ProtocolError> {
    match obj.get(field) {
        None => err(format!("`{kind}` needs the field `{field}`")),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() => Ok(x),
            _ => err(format!("`{field}` of `{kind}` must be a finite number")),
        },
    }
}

fn in_range(x: f64, lo: f64, hi: f64, kind: &str, field: &str) -> Result<f64, ProtocolError> {
    if (lo..=hi).contains(&x) {
        Ok(x)
    } else {
        err(format!(
            "`{field}` of `{kind}` must be in [{lo}, {hi}], got {}",
            shown_number(x)
        ))
    }
}

fn index(obj: &Map<String, Value>, kind: &str, field: &str) -> Result<u64, ProtocolError> {
    match obj.get(field) {
        None => err(format!("`{kind}` needs the field `{field}`")),
        Some(v) => match v.as_u64() {
            Some(i) => Ok(i),
            None => err(format!(
                "`{field}` of `{kind}` must be a non-negative integer"
            )),
        },
    }
}

/// Parses and validates one client text message. Ranges that depend on the session (the
/// sample index against the batch, the model index, the batch against the server's cap,
/// the point against the image size) are checked by the session, which replies the same way.
pub fn parse_client_message(text: &str) -> Result<ClientMsg, ProtocolError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return err(format!(
            "message too large: {} bytes (at most {MAX_MESSAGE_BYTES})",
            text.len()
        ));
    }
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return err(format!("not valid JSON: {e}")),
    };
    let Value::Object(obj) = value else {
        return err("a message must be a JSON object with a `type`");
    };
    let kind = match obj.get("type") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return err("`type` must be a string"),
        None => return err("a message must have a `type`"),
    };
    let msg = match kind {
        "play" | "pause" | "step" | "restart" | "ack" => {
            only_fields(&obj, kind, &[])?;
            match kind {
                "play" => ClientMsg::Play,
                "pause" => ClientMsg::Pause,
                "step" => ClientMsg::Step,
                "ack" => ClientMsg::Ack,
                _ => ClientMsg::Restart,
            }
        }
        "speed" => {
            only_fields(&obj, kind, &["steps_per_second"])?;
            let s = number(&obj, kind, "steps_per_second")?;
            ClientMsg::Speed(in_range(s, MIN_SPEED, MAX_SPEED, kind, "steps_per_second")?)
        }
        "erase" => {
            only_fields(&obj, kind, &["sample", "x", "y", "radius"])?;
            let sample = index(&obj, kind, "sample")?;
            let x = number(&obj, kind, "x")?;
            let y = number(&obj, kind, "y")?;
            let radius = number(&obj, kind, "radius")?;
            if !(radius > 0.0 && radius <= MAX_RADIUS) {
                return err(format!(
                    "`radius` of `erase` must be in (0, {MAX_RADIUS}], got {}",
                    shown_number(radius)
                ));
            }
            ClientMsg::Erase {
                sample: usize::try_from(sample).unwrap_or(usize::MAX),
                x,
                y,
                radius,
            }
        }
        "new_latents" => {
            only_fields(&obj, kind, &["seed"])?;
            let seed = match obj.get("seed") {
                None | Some(Value::Null) => None,
                Some(_) => Some(index(&obj, kind, "seed")?),
            };
            ClientMsg::NewLatents(seed)
        }
        "interpolate" => {
            only_fields(&obj, kind, &["t"])?;
            let t = number(&obj, kind, "t")?;
            ClientMsg::Interpolate(in_range(t, 0.0, 1.0, kind, "t")?)
        }
        "model" => {
            only_fields(&obj, kind, &["index"])?;
            let i = index(&obj, kind, "index")?;
            ClientMsg::Model(usize::try_from(i).unwrap_or(usize::MAX))
        }
        "batch" => {
            only_fields(&obj, kind, &["n"])?;
            let n = index(&obj, kind, "n")?;
            if n == 0 {
                return err("`n` of `batch` must be at least 1");
            }
            ClientMsg::Batch(usize::try_from(n).unwrap_or(usize::MAX))
        }
        "draw" => {
            only_fields(&obj, kind, &["size", "pixels", "z", "test_digit"])?;
            let size = index(&obj, kind, "size")?;
            if !(1..=MAX_DRAW_SIZE).contains(&size) {
                return err(format!(
                    "`size` of `draw` must be in [1, {MAX_DRAW_SIZE}], got {size}"
                ));
            }
            let pixels = match obj.get("pixels") {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| v.as_u64().filter(|&p| p <= 255).map(|p| p as u8))
                    .collect::<Option<Vec<u8>>>(),
                Some(_) => None,
                None => return err("`draw` needs the field `pixels`"),
            };
            let Some(pixels) = pixels else {
                return err("`pixels` of `draw` must be an array of integers in [0, 255]");
            };
            let z = match obj.get("z") {
                None => Posterior::Mean,
                Some(Value::String(s)) if s == "mean" => Posterior::Mean,
                Some(Value::String(s)) if s == "sample" => Posterior::Sample,
                Some(_) => return err("`z` of `draw` must be \"mean\" or \"sample\""),
            };
            let test_digit = match obj.get("test_digit") {
                None | Some(Value::Null) => None,
                Some(_) => {
                    Some(usize::try_from(index(&obj, kind, "test_digit")?).unwrap_or(usize::MAX))
                }
            };
            ClientMsg::Draw {
                size: size as usize,
                pixels,
                z,
                test_digit,
            }
        }
        other => {
            let shown = shown_name(other);
            return err(format!(
                "unknown message type `{shown}` (play, pause, step, speed, erase, new_latents, interpolate, restart, model, batch, draw, ack)"
            ));
        }
    };
    Ok(msg)
}

/// One loaded model as the client sees it.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub config: String,
    pub z_dim: i64,
    pub image_size: i64,
    pub channels: i64,
    /// "doubling" (grows from a 2x2 seed; not trained to heal) or "non-doubling" (the
    /// full grid from the start; the damage presets are trained to heal).
    pub decoder: &'static str,
    /// Updates of one growth (NCA steps and doublings) after the seed; for the
    /// non-doubling decoder the most it may draw (`status` says this growth's).
    pub growth_steps: usize,
    /// Trained to regrow damage (pool and damage training): runs on after growth.
    pub heals: bool,
    /// The colour of an erased (all-zero) cell, for drawing an erase at once.
    pub erased_rgb: [u8; 3],
    /// The side of the drawings it encodes (`draw`), or null when it takes none.
    pub draw_size: Option<usize>,
}

/// The limits the client should respect (the server enforces them anyway).
#[derive(Clone, Debug, Serialize)]
pub struct LimitsInfo {
    pub max_message_bytes: usize,
    pub max_batch: usize,
    pub min_speed: f64,
    pub max_speed: f64,
    pub max_radius: f64,
    pub idle_steps: u64,
}

/// The session's settings, sent after each change.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub model: usize,
    pub batch: usize,
    pub playing: bool,
    pub steps_per_second: f64,
    pub t: f64,
    pub generation: u32,
    pub step: u32,
    /// Updates of this generation's growth schedule.
    pub growth_steps: usize,
    /// "growing", "grown", "healing" or "past training" (see the module doc).
    pub phase: &'static str,
    /// "prior" (samples of the prior) or "drawing" (one sample: the drawn digit).
    pub source: &'static str,
    /// With a drawing: the test digit the slider's other end encodes, and its label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_digit: Option<TestDigit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
}

/// The test digit at the far end of a drawing's interpolation.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct TestDigit {
    pub index: usize,
    pub label: u8,
}

/// Text messages from the server.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Hello {
        version: u8,
        models: Vec<ModelInfo>,
        limits: LimitsInfo,
    },
    Status(Status),
    Error {
        message: String,
    },
}

impl ServerMsg {
    pub fn error(message: impl Into<String>) -> Self {
        ServerMsg::Error {
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages serialise")
    }
}

/// The header of a binary frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub channels: u8,
    pub n: u16,
    pub size: u16,
    pub grid: u16,
    pub generation: u32,
    pub step: u32,
    pub flags: u32,
}

impl FrameHeader {
    pub fn pixel_bytes(&self) -> usize {
        self.n as usize * self.channels as usize * self.size as usize * self.size as usize
    }
}

/// Header + pixels -> one binary message.
pub fn encode_frame(h: &FrameHeader, pixels: &[u8]) -> Vec<u8> {
    assert_eq!(pixels.len(), h.pixel_bytes(), "frame pixel count");
    let mut out = Vec::with_capacity(HEADER_BYTES + pixels.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(h.channels);
    out.extend_from_slice(&h.n.to_le_bytes());
    out.extend_from_slice(&h.size.to_le_bytes());
    out.extend_from_slice(&h.grid.to_le_bytes());
    out.extend_from_slice(&h.generation.to_le_bytes());
    out.extend_from_slice(&h.step.to_le_bytes());
    out.extend_from_slice(&h.flags.to_le_bytes());
    out.extend_from_slice(pixels);
    out
}

/// One binary message -> header and pixels (what a client does; used by the tests).
pub fn decode_frame(bytes: &[u8]) -> Result<(FrameHeader, &[u8]), ProtocolError> {
    if bytes.len() < HEADER_BYTES {
        return err(format!(
            "frame of {} bytes is shorter than its header",
            bytes.len()
        ));
    }
    if &bytes[0..4] != MAGIC || bytes[4] != VERSION {
        return err("not a version-1 VNCA frame");
    }
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let h = FrameHeader {
        channels: bytes[5],
        n: u16_at(6),
        size: u16_at(8),
        grid: u16_at(10),
        generation: u32_at(12),
        step: u32_at(16),
        flags: u32_at(20),
    };
    let pixels = &bytes[HEADER_BYTES..];
    if pixels.len() != h.pixel_bytes() {
        return err(format!(
            "frame has {} pixel bytes, its header says {}",
            pixels.len(),
            h.pixel_bytes()
        ));
    }
    Ok((h, pixels))
}
