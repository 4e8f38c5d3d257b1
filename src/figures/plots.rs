//! Plots drawn with `plotters` into PNGs: training curves from a run's `metrics.jsonl`,
//! and labelled scatter plots (the t-SNE figure). Text uses DejaVu Sans Mono, embedded
//! (assets/fonts, Bitstream Vera licence), so no system font is needed.
use plotters::prelude::*;
use std::path::Path;

const FONT: &str = "vnca-mono";
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");

fn ensure_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

fn err(path: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("`{}`: cannot draw the plot: {e}", path.display())
}

/// The series of a metrics file: (step, value) per quantity.
#[derive(Default, Debug)]
pub struct Curves {
    pub loss: Vec<(f64, f64)>,
    pub recon: Vec<(f64, f64)>,
    pub kl: Vec<(f64, f64)>,
    pub eval_nll: Vec<(f64, f64)>,
}

/// Read `metrics.jsonl` (lines that do not parse are skipped: a crash may cut the last one).
pub fn read_curves(path: &Path) -> anyhow::Result<Curves> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("`{}`: {e}", path.display()))?;
    let mut c = Curves::default();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let step = v["step"].as_f64().unwrap_or(0.0);
        let get = |k: &str| v[k].as_f64();
        match v["kind"].as_str() {
            Some("train") => {
                if let (Some(l), Some(r), Some(k)) = (get("loss"), get("recon"), get("kl")) {
                    c.loss.push((step, l));
                    c.recon.push((step, r));
                    c.kl.push((step, k));
                }
            }
            Some("eval") => {
                if let Some(n) = get("nll_nats") {
                    c.eval_nll.push((step, n));
                }
            }
            _ => {}
        }
    }
    Ok(c)
}

/// Moving average over `w` points, so noisy per-step losses read as a curve.
pub fn smooth(xs: &[(f64, f64)], w: usize) -> Vec<(f64, f64)> {
    let w = w.max(1);
    let mut out = Vec::with_capacity(xs.len());
    let mut sum = 0.0;
    for i in 0..xs.len() {
        sum += xs[i].1;
        if i >= w {
            sum -= xs[i - w].1;
        }
        out.push((xs[i].0, sum / (i + 1).min(w) as f64));
    }
    out
}

/// A named line of (step, value) points and its colour.
type Series<'a> = (&'a str, &'a [(f64, f64)], RGBColor);

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    series: &[Series<'_>],
) -> Result<(), Box<dyn std::error::Error>> {
    let pts = series.iter().flat_map(|(_, s, _)| s.iter());
    let (mut x1, mut y0, mut y1) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        x1 = x1.max(x);
        if y.is_finite() {
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x1, (y0 - pad)..(y1 + pad))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .label_style((FONT, 12))
        .draw()?;
    for (name, s, color) in series {
        let c = *color;
        chart
            .draw_series(LineSeries::new(s.iter().copied(), c.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 12))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Training curves: loss, reconstruction and KL (smoothed) and validation NLL against step.
pub fn training_curves(metrics: &Path, out: &Path) -> anyhow::Result<()> {
    ensure_font();
    let c = read_curves(metrics)?;
    let w = (c.loss.len() / 50).max(1);
    let mut buf = vec![0u8; 1200 * 800 * 3];
    let draw = |buf: &mut [u8]| -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::with_buffer(buf, (1200, 800)).into_drawing_area();
        root.fill(&WHITE)?;
        let areas = root.split_evenly((2, 2));
        panel(
            &areas[0],
            "training loss (-ELBO, nats)",
            &[("loss", &smooth(&c.loss, w), BLUE)],
        )?;
        panel(
            &areas[1],
            "reconstruction -log p(x|z)",
            &[("recon", &smooth(&c.recon, w), RED)],
        )?;
        panel(
            &areas[2],
            "KL(q(z|x) || p(z))",
            &[("kl", &smooth(&c.kl, w), GREEN)],
        )?;
        panel(
            &areas[3],
            "validation NLL (nats)",
            &[("valid", &c.eval_nll, MAGENTA)],
        )?;
        root.present()?;
        Ok(())
    };
    draw(&mut buf).map_err(|e| err(out, e))?;
    save_rgb(out, 1200, 800, buf)
}

/// matplotlib's tab10 colours, for digit labels 0-9.
pub const TAB10: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A scatter of 2-D points coloured by label (0-9), with a legend.
pub fn labelled_scatter(
    points: &[[f32; 2]],
    labels: &[u8],
    title: &str,
    out: &Path,
) -> anyhow::Result<()> {
    ensure_font();
    let mut buf = vec![0u8; 900 * 800 * 3];
    let draw = |buf: &mut [u8]| -> Result<(), Box<dyn std::error::Error>> {
        let (mut x0, mut x1, mut y0, mut y1) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
        for p in points {
            (x0, x1, y0, y1) = (x0.min(p[0]), x1.max(p[0]), y0.min(p[1]), y1.max(p[1]));
        }
        let root = BitMapBackend::with_buffer(buf, (900, 800)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 20))
            .margin(15)
            .build_cartesian_2d(x0..x1 + (x1 - x0) * 0.15, y0..y1)?;
        for d in 0..10u8 {
            let color = TAB10[d as usize];
            let pts = points
                .iter()
                .zip(labels)
                .filter(|(_, &l)| l == d)
                .map(|(p, _)| (p[0], p[1]));
            chart
                .draw_series(pts.map(|(x, y)| Circle::new((x, y), 2, color.mix(0.7).filled())))?
                .label(format!("{d}"))
                .legend(move |(x, y)| Circle::new((x + 5, y), 4, color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw(&mut buf).map_err(|e| err(out, e))?;
    save_rgb(out, 900, 800, buf)
}

fn save_rgb(out: &Path, w: u32, h: u32, buf: Vec<u8>) -> anyhow::Result<()> {
    let img = image::RgbImage::from_raw(w, h, buf).expect("buffer of w*h*3 bytes");
    img.save(out).map_err(|e| err(out, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_is_a_trailing_mean() {
        let xs: Vec<(f64, f64)> = (0..5).map(|i| (i as f64, i as f64)).collect();
        let s = smooth(&xs, 2);
        assert_eq!(
            s.iter().map(|p| p.1).collect::<Vec<_>>(),
            vec![0.0, 0.5, 1.5, 2.5, 3.5]
        );
    }

    #[test]
    fn curves_and_scatter_render() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("metrics.jsonl");
        let mut text = String::new();
        for s in 1..=20 {
            text += &format!(
                "{{\"kind\":\"train\",\"step\":{s},\"loss\":{},\"recon\":1.0,\"kl\":2.0}}\n",
                100 - s
            );
        }
        text += "{\"kind\":\"eval\",\"step\":20,\"nll_nats\":90.0}\n{\"kind\":\"tra"; // a cut last line
        std::fs::write(&m, text).unwrap();
        let c = read_curves(&m).unwrap();
        assert_eq!((c.loss.len(), c.eval_nll.len()), (20, 1));
        let png = dir.path().join("curves.png");
        training_curves(&m, &png).unwrap();
        assert_eq!(image::open(&png).unwrap().width(), 1200);
        let sc = dir.path().join("s.png");
        labelled_scatter(&[[0.0, 0.0], [1.0, 1.0]], &[3, 7], "t", &sc).unwrap();
        let img = image::open(&sc).unwrap().to_rgb8();
        // Some pixel carries the tab10 colour of digit 3 (red).
        assert!(img
            .pixels()
            .any(|p| p.0[0] > 200 && p.0[1] < 90 && p.0[2] < 90));
    }
}
