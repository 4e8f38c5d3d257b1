//! `vnca info`: presets, model summary, parameter count.
use super::ArchArgs;
use crate::config::{Config, DecoderKind, UpdateNetKind, DEFAULT_PRESET, PRESETS};
use crate::model::Vnca;

pub(super) fn cmd_info(a: ArchArgs) -> anyhow::Result<()> {
    if a.list {
        for (name, text) in PRESETS {
            let first = text.lines().next().unwrap_or("").trim_start_matches("# ");
            println!("{name:24} {first}");
        }
        return Ok(());
    }
    let cfg = a
        .explicit()?
        .map_or_else(|| Config::preset(DEFAULT_PRESET), Ok)?;
    let model = Vnca::new(&cfg.model, tch::Device::Cpu, 0);
    let m = &cfg.model;
    println!("config       {}", cfg.name);
    println!(
        "libtorch     {} (tch {}), CUDA devices {}, cuDNN {}",
        crate::precision::torch_version(),
        crate::tch_compat::TCH_VERSION,
        tch::Cuda::device_count(),
        if tch::Cuda::cudnn_is_available() {
            "yes"
        } else {
            "no"
        }
    );
    println!(
        "encoder      5 x conv5x5 (width {} doubling), linear -> 2 x {}",
        m.encoder_width, m.z_dim
    );
    match m.decoder {
        DecoderKind::Doubling => println!(
            "decoder      doubling NCA: 2x2 seed, {} doublings to {}x{}, {} steps/stage = {} steps, p_update {}",
            cfg.n_doublings(),
            m.image_size,
            m.image_size,
            m.steps_per_stage,
            model.nca().n_steps(),
            m.p_update
        ),
        DecoderKind::NonDoubling => println!(
            "decoder      non-doubling NCA: z in every cell of {}x{}, T ~ U{{{}..{}}} steps, p_update {}",
            m.image_size, m.image_size, m.min_steps, m.max_steps, m.p_update
        ),
        DecoderKind::Deconv => println!(
            "decoder      deconvolutional (baseline VAE): linear -> {} x 2 x 2, {} x convT5x5 stride 2 to {}x{}, convT5x5 -> 1",
            m.encoder_width << cfg.n_doublings(),
            cfg.n_doublings(),
            m.image_size,
            m.image_size
        ),
    }
    match (m.decoder, m.update_net) {
        (DecoderKind::Deconv, _) => {}
        (_, UpdateNetKind::Residual) => println!(
            "update net   conv3x3 {} -> {}, {} residual 1x1 blocks, conv1x1 -> {}",
            m.z_dim, m.hidden, m.n_residual, m.z_dim
        ),
        (_, UpdateNetKind::Simple) => println!(
            "update net   conv3x3 {} -> {}, ELU, conv1x1 -> {}",
            m.z_dim, m.hidden, m.z_dim
        ),
    }
    let mut vars: Vec<_> = model.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let count = |prefix: &str| -> i64 {
        vars.iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, t)| t.numel() as i64)
            .sum()
    };
    let (decoder, name) = match m.decoder {
        DecoderKind::Deconv => (count("decoder."), "decoder"),
        _ => (count("nca."), "update net"),
    };
    println!(
        "parameters   {} (encoder {}, {name} {decoder})",
        model.n_parameters(),
        count("encoder."),
    );
    Ok(())
}
