//! Image grids as PNG files (`torchvision.utils.make_grid`-like).
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Tile images [N, C, H, W] (C = 1 or 3, values in [0, 1]) into a grid with `ncol`
/// columns and a `pad`-pixel grey border, and write it as an 8-bit PNG.
pub fn write_grid(path: &Path, images: &Tensor, ncol: i64, pad: i64) -> anyhow::Result<()> {
    let img = tile(images, ncol, pad);
    img.save(path)
        .map_err(|e| anyhow::anyhow!("`{}`: cannot write PNG: {e}", path.display()))
}

/// The tiled grid as an RGB image.
pub fn tile(images: &Tensor, ncol: i64, pad: i64) -> image::RgbImage {
    let s = images.size();
    let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
    let ncol = ncol.clamp(1, n.max(1));
    let nrow = (n + ncol - 1) / ncol;
    let (gw, gh) = (ncol * (w + pad) + pad, nrow * (h + pad) + pad);
    let rgb = if c == 1 {
        images.repeat([1, 3, 1, 1])
    } else {
        images.shallow_clone()
    };
    let bytes = (rgb.clamp(0.0, 1.0) * 255.0)
        .round()
        .to_kind(Kind::Uint8)
        .to_device(Device::Cpu)
        .permute([0, 2, 3, 1]) // [N, H, W, 3]
        .contiguous();
    let data = Vec::<u8>::try_from(bytes.view(-1)).expect("u8 tensor");
    let mut out = image::RgbImage::from_pixel(gw as u32, gh as u32, image::Rgb([128, 128, 128]));
    for i in 0..n {
        let (r, col) = (i / ncol, i % ncol);
        let (x0, y0) = (pad + col * (w + pad), pad + r * (h + pad));
        for y in 0..h {
            for x in 0..w {
                let o = (((i * h + y) * w + x) * 3) as usize;
                let px = image::Rgb([data[o], data[o + 1], data[o + 2]]);
                out.put_pixel((x0 + x) as u32, (y0 + y) as u32, px);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_with_padding() {
        let imgs = Tensor::cat(
            &[
                Tensor::zeros([1, 1, 2, 2], (Kind::Float, Device::Cpu)),
                Tensor::ones([1, 1, 2, 2], (Kind::Float, Device::Cpu)),
            ],
            0,
        );
        let g = tile(&imgs, 2, 1);
        assert_eq!((g.width(), g.height()), (7, 4));
        assert_eq!(g.get_pixel(1, 1).0, [0, 0, 0]);
        assert_eq!(g.get_pixel(4, 2).0, [255, 255, 255]);
        assert_eq!(g.get_pixel(0, 0).0, [128, 128, 128]);
    }
}
