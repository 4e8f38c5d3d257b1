//! Animated GIFs of frame sequences (growth, recovery), each frame a tiled grid.
use super::grid::tile;
use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame, RgbaImage};
use std::path::Path;
use tch::Tensor;

/// Write frames [T][N, C, S, S] as a looping GIF: each frame tiles the N images in `ncol`
/// columns, scaled up `scale` times (nearest) so small digits are visible; `delay_ms` per
/// frame, the last one held 1.5 s.
pub fn write_gif(
    path: &Path,
    frames: &[Tensor],
    ncol: i64,
    scale: u32,
    delay_ms: u32,
) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).map_err(|e| anyhow::anyhow!("`{}`: {e}", path.display()))?;
    let mut enc = GifEncoder::new_with_speed(std::io::BufWriter::new(file), 10);
    enc.set_repeat(Repeat::Infinite)?;
    for (i, f) in frames.iter().enumerate() {
        let rgb = tile(f, ncol, 1);
        let big = image::imageops::resize(
            &rgb,
            rgb.width() * scale,
            rgb.height() * scale,
            image::imageops::FilterType::Nearest,
        );
        let rgba: RgbaImage = image::DynamicImage::ImageRgb8(big).to_rgba8();
        let ms = if i + 1 == frames.len() {
            1500
        } else {
            delay_ms
        };
        enc.encode_frame(Frame::from_parts(
            rgba,
            0,
            0,
            Delay::from_numer_denom_ms(ms, 1),
        ))
        .map_err(|e| anyhow::anyhow!("`{}`: {e}", path.display()))?;
    }
    Ok(())
}
