//! What ships inside the binary: the trained models of `models/` and the binarized MNIST
//! test digits, embedded at compile time (`include_bytes!`), so that an installed binary
//! (`cargo install --path .`) shows them without the source tree and without a data
//! directory. `sample`, `figures` and `serve` name a model by path or by one of these names.
//!
//! Layering: this module sits below `figures`, `serve` and `cli` (all three use it) and
//! above `restore` and `data`, which do the reading.
use crate::checkpoint::Loaded;
use crate::config::Config;
use crate::data::ImageSet;
use crate::model::Vnca;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

/// One model shipped in the binary (its checkpoint carries its config).
#[derive(Debug)]
pub struct ShippedModel {
    pub name: &'static str,
    bytes: &'static [u8],
}

/// The shipped models (trained by their presets on a CPU; README), in the order the web
/// page lists them. The first is the default of `sample`, `figures` and `serve`.
pub static MODELS: [ShippedModel; 3] = [
    ShippedModel {
        name: "mnist-doubling-small",
        bytes: include_bytes!("../models/mnist-doubling-small.safetensors"),
    },
    ShippedModel {
        name: "mnist-nondoubling-damage-h256",
        bytes: include_bytes!("../models/mnist-nondoubling-damage-h256.safetensors"),
    },
    ShippedModel {
        name: "emoji-doubling-small",
        bytes: include_bytes!("../models/emoji-doubling-small.safetensors"),
    },
];

/// The default model's name (the first of [`MODELS`]).
pub const DEFAULT: &str = "mnist-doubling-small";

/// The shipped binarized MNIST (data/binarized_mnist.vbm.gz; data/README.md): its test
/// split is what the web page interpolates a drawing towards.
const MNIST: &[u8] = include_bytes!("../data/binarized_mnist.vbm.gz");

/// The shipped model called `name`.
pub fn find(name: &str) -> Option<&'static ShippedModel> {
    MODELS.iter().find(|m| m.name == name)
}

fn names() -> String {
    MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

/// Where a model comes from: a checkpoint file, or a model shipped in the binary.
#[derive(Clone, Debug)]
pub enum ModelSource {
    File(PathBuf),
    Shipped(&'static ShippedModel),
}

impl ModelSource {
    /// The default model: the first shipped one.
    pub fn default_model() -> Self {
        ModelSource::Shipped(find(DEFAULT).expect("the default model is shipped"))
    }

    /// Every shipped model, the default first.
    pub fn all_shipped() -> Vec<Self> {
        MODELS.iter().map(ModelSource::Shipped).collect()
    }

    /// The file, for a model read from one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ModelSource::File(p) => Some(p),
            ModelSource::Shipped(_) => None,
        }
    }

    /// A short name: a shipped model's name, or a file's stem with the directory in
    /// front for a run's generic `latest`/`best` files (`runs/x/best.safetensors` ->
    /// `x/best`).
    pub fn short_name(&self) -> String {
        let path = match self {
            ModelSource::Shipped(m) => return m.name.to_string(),
            ModelSource::File(p) => p,
        };
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

    /// The model and its config; `explicit` overrides the config the checkpoint carries.
    pub fn load(
        &self,
        explicit: Option<Config>,
        device: tch::Device,
    ) -> anyhow::Result<(Vnca, Config)> {
        match self {
            ModelSource::File(p) => {
                anyhow::ensure!(
                    p.is_file(),
                    "checkpoint `{}` not found: no such file, and not the name of a shipped \
                     model ({}); train one with `vnca train`, then pass \
                     runs/<name>/best.safetensors",
                    p.display(),
                    names()
                );
                crate::restore::load_model(p, explicit, device)
            }
            ModelSource::Shipped(m) => {
                let label = Path::new("<shipped>").join(format!("{}.safetensors", m.name));
                let ck = Loaded::from_bytes(&label, m.bytes.to_vec())?;
                crate::restore::load_checkpoint(ck, explicit, device)
            }
        }
    }
}

/// As `--checkpoint` takes it: the path, or the shipped model's name.
impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::File(p) => write!(f, "{}", p.display()),
            ModelSource::Shipped(m) => write!(f, "{}", m.name),
        }
    }
}

/// `--checkpoint X`: an existing file is read; otherwise the name of a shipped model
/// (`mnist-nondoubling-damage-h256`) picks it; anything else stays a path, and loading
/// it says that it was found neither way.
impl FromStr for ModelSource {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let p = PathBuf::from(s);
        Ok(match find(s) {
            Some(m) if !p.is_file() => ModelSource::Shipped(m),
            _ => ModelSource::File(p),
        })
    }
}

/// The shipped binarized MNIST test digits (10,000 of 28x28, {0, 1}, labelled), decoded
/// once on first use.
pub fn mnist_test() -> anyhow::Result<&'static ImageSet> {
    static TEST: OnceLock<Result<ImageSet, String>> = OnceLock::new();
    TEST.get_or_init(|| {
        crate::data::packed::read_packed_bytes(Path::new("<shipped binarized MNIST>"), MNIST)
            .map(|d| d.test)
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_pick_shipped_models_and_paths_stay_paths() {
        let s: ModelSource = "mnist-nondoubling-damage-h256".parse().unwrap();
        assert!(matches!(s, ModelSource::Shipped(m) if m.name == "mnist-nondoubling-damage-h256"));
        let f: ModelSource = "runs/x/best.safetensors".parse().unwrap();
        assert_eq!(f.path(), Some(Path::new("runs/x/best.safetensors")));
        assert_eq!(f.short_name(), "x/best");
        let e = ModelSource::File("/nonexistent/m.safetensors".into())
            .load(None, tch::Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not found") && e.contains("mnist-doubling-small"),
            "{e}"
        );
    }

    #[test]
    fn every_shipped_model_and_the_test_digits_load_from_the_binary() {
        for m in ModelSource::all_shipped() {
            let (_, cfg) = m.load(None, tch::Device::Cpu).unwrap();
            assert_eq!(cfg.name, m.short_name());
        }
        let test = mnist_test().unwrap();
        assert_eq!((test.len(), test.rows, test.cols), (10_000, 28, 28));
        assert!(test.images.iter().all(|&p| p <= 1));
    }
}
