//! Every preset in configs/ trains (one step, batch 2) and evaluates (IWAE-2 on two test
//! images) on its real data reader: the shipped binarized MNIST, the Noto emoji font, and
//! for CelebA a miniature copy in the standard layout generated here (CelebA itself may
//! not be redistributed).
use std::path::Path;
use tch::Device;
use vnca::config::{Config, PRESETS};
use vnca::noise::Noise;
use vnca::train::{train, TrainOptions};

fn mini_celeba(dir: &Path) {
    std::fs::create_dir_all(dir.join("img_align_celeba")).unwrap();
    let mut part = String::new();
    for i in 0..6u8 {
        let img = image::RgbImage::from_fn(178, 218, |x, y| {
            image::Rgb([i * 40, (x % 256) as u8, (y % 256) as u8])
        });
        let name = format!("{:06}.jpg", i + 1);
        img.save(dir.join("img_align_celeba").join(&name)).unwrap();
        part += &format!("{name} {}\n", i / 2);
    }
    std::fs::write(dir.join("list_eval_partition.txt"), part).unwrap();
}

#[test]
fn every_preset_trains_and_evaluates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let celeba = tmp.path().join("celeba");
    mini_celeba(&celeba);
    tch::set_num_threads(2);
    for (name, _) in PRESETS {
        let mut cfg = Config::preset(name).unwrap();
        cfg.train.batch_size = 2;
        cfg.train.steps = 1;
        cfg.train.eval_every = 1;
        cfg.train.eval_images = 2;
        cfg.data.limit = Some(16);
        cfg.data.path = match cfg.data.dataset.as_str() {
            "celeba" => celeba.clone(),
            _ => root.join(&cfg.data.path),
        };
        if let Some(p) = cfg.train.pool.as_mut() {
            p.size = 4;
        }
        let out = tmp.path().join(name);
        let opts = TrainOptions {
            out: out.clone(),
            device: Device::Cpu,
            resume: false,
            quiet: true,
            overwrite: false,
            backend: None,
        };
        let s = train(&cfg, &opts).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(s.steps, 1, "{name}");
        assert!(s.last_loss.is_finite(), "{name}");
        let (model, cfg) =
            vnca::restore::load_model(&out.join("latest.safetensors"), None, Device::Cpu).unwrap();
        let mut cfg = cfg;
        cfg.data.path = match cfg.data.dataset.as_str() {
            "celeba" => celeba.clone(),
            _ => root.join(&cfg.data.path),
        };
        let test = vnca::dataset::load_split(&cfg, "test").unwrap();
        let opts = vnca::eval::EvalOptions {
            limit: Some(2),
            batch: 2,
            max_decode: 4,
        };
        let r = vnca::eval::nll(&model, &test, 2, &opts, &mut Noise::new(0), &mut |_| {});
        assert_eq!(r.n_images, 2, "{name}");
        assert!(
            r.nll_nats.is_finite() && r.nll_nats > 0.0,
            "{name}: {}",
            r.nll_nats
        );
        eprintln!(
            "{name}: loss {:.1}, test NLL (IWAE-2, 2 images) {:.1} nats",
            s.last_loss, r.nll_nats
        );
    }
}
