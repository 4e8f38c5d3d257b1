//! Loading a trained model for evaluation, sampling or figures, from a run's checkpoint
//! (which carries its config) or from a bare safetensors weights file plus a config.
use crate::checkpoint::Loaded;
use crate::config::Config;
use crate::model::Vnca;
use anyhow::Context;
use std::path::Path;
use tch::Device;

/// The architecture comes from, in order: `explicit` (--config/--preset), the config
/// stored in the checkpoint, `config.toml` beside it.
pub fn load_model(
    path: &Path,
    explicit: Option<Config>,
    device: Device,
) -> anyhow::Result<(Vnca, Config)> {
    load_checkpoint(Loaded::read(path)?, explicit, device)
}

/// [`load_model`] for a checkpoint already read (from a file or from memory).
pub fn load_checkpoint(
    ck: Loaded,
    explicit: Option<Config>,
    device: Device,
) -> anyhow::Result<(Vnca, Config)> {
    let path = ck.path.clone();
    let cfg = match explicit {
        Some(c) => c,
        None => match &ck.meta.config {
            Some(text) => {
                Config::from_toml_str(text, &format!("config stored in {}", path.display()))?
            }
            None => {
                let beside = path.with_file_name("config.toml");
                if beside.exists() {
                    Config::from_file(&beside)?
                } else {
                    anyhow::bail!(
                        "`{}` is a bare weights file with no config; name the architecture with --preset or --config",
                        path.display()
                    )
                }
            }
        },
    };
    let model = Vnca::new(&cfg.model, device, 0);
    ck.load_model(&model)
        .with_context(|| format!("loading weights for preset/config `{}`", cfg.name))?;
    Ok((model, cfg))
}
