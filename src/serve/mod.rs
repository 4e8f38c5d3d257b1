//! `vnca serve`: a local web page where a batch of samples grows from the prior step by
//! step, streamed over a WebSocket; click or drag to erase cells and watch the NCA heal
//! them, draw new latents, interpolate between two, switch models.
//!
//! - [`protocol`]: the messages (JSON from the client, validated; binary frames back).
//! - [`session`]: one client's simulation, on its own thread.
//! - [`server`]: axum routes, the WebSocket connection, the session cap.
//! - `page.html`: the page (inline script and style, works offline).
pub mod protocol;
pub mod server;
pub mod session;

pub use server::{router, serve, ServeOptions};
pub use session::{ModelSnapshot, SessionOptions};

use std::path::{Path, PathBuf};

/// The shipped models (in `models/`, trained by their presets on a CPU; README), in the
/// order the page lists them. The first is the default of `figures` and `sample`.
pub const SHIPPED: [&str; 3] = [
    "mnist-doubling-small",
    "mnist-nondoubling-damage-small",
    "emoji-doubling-small",
];

/// The checkpoint of shipped model `name` in the crate's directory.
pub fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(format!("{name}.safetensors"))
}

/// The checkpoint used when none is named: `models/mnist-doubling-small.safetensors`.
pub fn default_checkpoint() -> PathBuf {
    shipped(SHIPPED[0])
}

/// What `serve` shows when no checkpoint is named: every shipped model that is present
/// (the first one must be).
pub fn default_checkpoints() -> Vec<PathBuf> {
    let mut out = vec![default_checkpoint()];
    out.extend(
        SHIPPED[1..]
            .iter()
            .map(|n| shipped(n))
            .filter(|p| p.is_file()),
    );
    out
}

/// A short name for a checkpoint: its file stem, with the directory in front for a run's
/// generic `latest`/`best` files (`runs/x/best.safetensors` -> `x/best`).
pub fn model_name(path: &Path) -> String {
    let stem = path.file_stem().map_or_else(
        || path.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    let parent = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|p| p.to_string_lossy().into_owned());
    match parent {
        Some(dir) if matches!(stem.as_str(), "latest" | "best") => format!("{dir}/{stem}"),
        _ => stem,
    }
}

/// Loads every checkpoint (each carries its config) into a snapshot sessions can share.
pub fn load_models(paths: &[PathBuf], device: tch::Device) -> anyhow::Result<Vec<ModelSnapshot>> {
    anyhow::ensure!(!paths.is_empty(), "no checkpoint to serve");
    let mut out = Vec::new();
    for p in paths {
        anyhow::ensure!(
            p.is_file(),
            "checkpoint `{}` not found (train one with `vnca train`, then pass --checkpoint runs/<name>/best.safetensors)",
            p.display()
        );
        let (model, cfg) = crate::restore::load_model(p, None, device)?;
        anyhow::ensure!(
            cfg.model.image_size <= u16::MAX as i64 && cfg.model.channels <= u8::MAX as i64,
            "`{}`: image size or channel count too large to stream",
            p.display()
        );
        out.push(ModelSnapshot::from_model(model_name(p), &model, &cfg));
    }
    Ok(out)
}
