//! Checkpoints: bit-exact round trip, exact resume, and clear errors for bad files.
mod common;

use std::path::Path;
use tch::Device;
use vnca::checkpoint::{self, Loaded, Meta};
use vnca::config::Config;
use vnca::model::Vnca;
use vnca::train::{train, TrainOptions};

fn tiny(steps: u64, eval_every: u64) -> Config {
    let mut cfg = Config::preset("tiny-test").unwrap();
    cfg.data.path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/binarized_mnist.vbm.gz");
    cfg.train.steps = steps;
    cfg.train.eval_every = eval_every;
    cfg
}

fn opts(out: &Path, resume: bool) -> TrainOptions {
    TrainOptions {
        out: out.to_path_buf(),
        device: Device::Cpu,
        resume,
        quiet: true,
        overwrite: false,
        backend: None,
    }
}

fn param_bytes(path: &Path, model: &Vnca) -> Vec<(String, Vec<f32>)> {
    let ck = Loaded::read(path).unwrap();
    let mut out = Vec::new();
    for (name, p) in model.params() {
        let t = ck.tensor(&name, &p.size()).unwrap();
        out.push((name, Vec::<f32>::try_from(t.view(-1)).unwrap()));
    }
    out
}

fn train_losses(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"train\""))
        // step_seconds differs between runs; everything else must be identical.
        .map(|l| l.split(",\"step_seconds\"").next().unwrap().to_string())
        .collect()
}

#[test]
fn save_load_round_trip_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::preset("tiny-test").unwrap();
    let a = Vnca::new(&cfg.model, Device::Cpu, 1);
    let path = dir.path().join("w.safetensors");
    let meta = Meta {
        config: Some(cfg.to_toml()),
        state: Some("{}".into()),
    };
    checkpoint::save(&path, &a, &Default::default(), &meta).unwrap();
    let b = Vnca::new(&cfg.model, Device::Cpu, 2);
    let ck = Loaded::read(&path).unwrap();
    ck.load_model(&b).unwrap();
    assert_eq!(ck.meta.config.as_deref(), Some(cfg.to_toml().as_str()));
    for (name, p) in a.params() {
        assert!(
            p.equal(&b.params()[&name]),
            "{name} differs after round trip"
        );
    }
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("w.safetensors")]);
}

#[test]
fn resume_continues_bit_exactly() {
    let straight = tempfile::tempdir().unwrap();
    train(&tiny(6, 3), &opts(straight.path(), false)).unwrap();
    let split = tempfile::tempdir().unwrap();
    train(&tiny(3, 3), &opts(split.path(), false)).unwrap();
    train(&tiny(6, 3), &opts(split.path(), true)).unwrap();

    assert_eq!(train_losses(straight.path()), train_losses(split.path()));
    assert_eq!(train_losses(split.path()).len(), 6);
    let model = Vnca::new(&tiny(1, 1).model, Device::Cpu, 0);
    let a = param_bytes(&straight.path().join("latest.safetensors"), &model);
    let b = param_bytes(&split.path().join("latest.safetensors"), &model);
    assert_eq!(
        a, b,
        "weights after 6 steps differ between straight and resumed runs"
    );
}

/// A learning rate decayed to 0 leaves the weights where they were, and a run resumed
/// inside the decay continues bit-exactly (the rate depends on the update alone).
#[test]
fn lr_decay_to_zero_stops_the_weights_and_resumes_exactly() {
    // lr at updates 1, 2, 3: train.lr, half of it, 0.
    let decaying = |steps| {
        let mut cfg = tiny(steps, 1);
        cfg.train.lr_decay = Some(vnca::config::LrDecay {
            start: 1,
            end: 3,
            final_lr: 0.0,
        });
        cfg
    };
    let model = Vnca::new(&tiny(1, 1).model, Device::Cpu, 0);
    let weights = |dir: &Path| param_bytes(&dir.join("latest.safetensors"), &model);
    let straight = tempfile::tempdir().unwrap();
    train(&decaying(3), &opts(straight.path(), false)).unwrap();
    let split = tempfile::tempdir().unwrap();
    train(&decaying(1), &opts(split.path(), false)).unwrap();
    let after_1 = weights(split.path());
    train(&decaying(2), &opts(split.path(), true)).unwrap();
    let after_2 = weights(split.path());
    train(&decaying(3), &opts(split.path(), true)).unwrap();
    let after_3 = weights(split.path());
    assert_ne!(
        after_1, after_2,
        "update 2, at half the lr, did not move the weights"
    );
    assert_eq!(after_2, after_3, "update 3, at lr 0, moved the weights");
    assert_eq!(train_losses(straight.path()), train_losses(split.path()));
    assert_eq!(
        weights(straight.path()),
        after_3,
        "resumed inside the decay, the weights differ"
    );
}

/// A tiny non-doubling model with pool and damage training.
fn tiny_pool(steps: u64, eval_every: u64) -> Config {
    let mut cfg = Config::preset("mnist-nondoubling-damage-small").unwrap();
    cfg.data.path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/binarized_mnist.vbm.gz");
    (cfg.model.z_dim, cfg.model.hidden, cfg.model.encoder_width) = (8, 8, 2);
    (cfg.model.min_steps, cfg.model.max_steps) = (2, 4);
    cfg.train.batch_size = 4;
    cfg.train.pool.as_mut().unwrap().size = 6;
    cfg.train.eval_images = 4;
    cfg.train.eval_iw_samples = 1;
    cfg.train.steps = steps;
    cfg.train.eval_every = eval_every;
    cfg
}

#[test]
fn resume_of_a_pool_run_continues_bit_exactly() {
    // The pool feeds half of every batch from step 2 on and is full from step 3; a resume
    // at step 3 must restore its images, damaged states and order.
    let straight = tempfile::tempdir().unwrap();
    train(&tiny_pool(7, 3), &opts(straight.path(), false)).unwrap();
    let split = tempfile::tempdir().unwrap();
    train(&tiny_pool(3, 3), &opts(split.path(), false)).unwrap();
    let ck = Loaded::read(&split.path().join("latest.safetensors")).unwrap();
    assert_eq!(ck.shape("pool.states"), Some(vec![6, 8, 28, 28]));
    assert_eq!(ck.shape("pool.images"), Some(vec![6, 1, 28, 28]));
    train(&tiny_pool(7, 3), &opts(split.path(), true)).unwrap();

    assert_eq!(train_losses(straight.path()), train_losses(split.path()));
    assert_eq!(train_losses(split.path()).len(), 7);
    let model = Vnca::new(&tiny_pool(1, 1).model, Device::Cpu, 0);
    let a = param_bytes(&straight.path().join("latest.safetensors"), &model);
    let b = param_bytes(&split.path().join("latest.safetensors"), &model);
    assert_eq!(
        a, b,
        "weights differ between straight and resumed pool runs"
    );

    // Without the pool in the checkpoint, the resumed run starts from an empty pool and
    // so departs from the straight one at step 4.
    let mut lean = tiny_pool(3, 3);
    lean.train.pool.as_mut().unwrap().save = false;
    let unsaved = tempfile::tempdir().unwrap();
    train(&lean, &opts(unsaved.path(), false)).unwrap();
    let ck = Loaded::read(&unsaved.path().join("latest.safetensors")).unwrap();
    assert_eq!(ck.shape("pool.states"), None);
    lean.train.steps = 7;
    train(&lean, &opts(unsaved.path(), true)).unwrap();
    let losses = train_losses(unsaved.path());
    assert_eq!(losses[..3], train_losses(straight.path())[..3]);
    assert_ne!(losses[3], train_losses(straight.path())[3]);
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny(50, 1);
    cfg.train.lr = 1e12; // blows the weights up within a few steps
    let err = train(&cfg, &opts(dir.path(), false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("non-finite"), "{err}");
    let step: u64 = err["step ".len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let ck = Loaded::read(&dir.path().join("latest.safetensors")).unwrap();
    let state: serde_json::Value = serde_json::from_str(ck.meta.state.as_deref().unwrap()).unwrap();
    assert_eq!(
        state["step"].as_u64().unwrap(),
        step - 1,
        "latest must be the step before the failure"
    );
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        assert!(!name.contains(".tmp"), "left a temporary file {name}");
    }
}

#[test]
fn bad_checkpoints_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Truncated file.
    let good = std::fs::read(common::fixture("tiny_weights.safetensors")).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &good[..good.len() / 2]).unwrap();
    let err = Loaded::read(&cut).err().unwrap().to_string();
    assert!(
        err.contains("cut.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );
    // Garbage.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"hello world, not a checkpoint").unwrap();
    assert!(Loaded::read(&junk).is_err());
    // Weights of another architecture.
    let cfg = Config::preset("mnist-doubling-small").unwrap();
    let model = Vnca::new(&cfg.model, Device::Cpu, 0);
    let err = Loaded::read(&common::fixture("tiny_weights.safetensors"))
        .unwrap()
        .load_model(&model)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has shape") && err.contains("wrong preset"),
        "{err}"
    );
    // Missing file.
    let err = Loaded::read(&dir.path().join("nope.safetensors"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nope.safetensors"), "{err}");
}
