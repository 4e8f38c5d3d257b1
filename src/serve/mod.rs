//! `vnca serve`: a local web page where a batch of samples grows from the prior step by
//! step, streamed over a WebSocket; click or drag to erase cells and watch a model trained
//! to heal regrow them, draw a digit and watch the model encode and grow it, interpolate
//! between two latents, switch models.
//!
//! - [`protocol`]: the messages (JSON from the client, validated; binary frames back).
//! - [`snapshot`]: a trained model shared by the sessions (plain floats, per-thread copies).
//! - [`sim`]: the simulation of one batch (growth schedule, steps, erase, frames).
//! - [`drawing`]: a drawn digit binarized, padded and encoded as the training data.
//! - [`session`]: one client's clock, flow control and messages, on its own thread.
//! - [`server`]: axum routes, the WebSocket connection, the session cap.
//! - `page.html`: the page (inline script and style, works offline).
pub mod drawing;
pub mod protocol;
pub mod server;
pub mod session;
pub mod sim;
pub mod snapshot;

pub use server::{router, serve, ServeOptions};
pub use session::SessionOptions;
pub use snapshot::ModelSnapshot;

use crate::shipped::ModelSource;

/// Loads every model (each checkpoint carries its config) into a snapshot sessions can
/// share.
pub fn load_models(
    sources: &[ModelSource],
    device: tch::Device,
) -> anyhow::Result<Vec<ModelSnapshot>> {
    anyhow::ensure!(!sources.is_empty(), "no checkpoint to serve");
    let mut out = Vec::new();
    for src in sources {
        let (model, cfg) = src.load(None, device)?;
        model
            .require_nca("vnca serve")
            .map_err(|e| anyhow::anyhow!("{src}: {e}"))?;
        anyhow::ensure!(
            cfg.model.image_size <= u16::MAX as i64 && cfg.model.channels <= u8::MAX as i64,
            "{src}: image size or channel count too large to stream"
        );
        out.push(ModelSnapshot::from_model(src.short_name(), &model, &cfg));
    }
    Ok(out)
}
