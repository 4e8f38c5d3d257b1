//! Checkpoints, and every name in them. One safetensors file holds:
//! - the model's parameters under the reference's `state_dict` names (`encoder.0.weight`,
//!   ..., `nca.update_net.5.bias`), so a reference checkpoint converted with
//!   `tools/convert_reference_checkpoint.py` loads as a bare weights file;
//! - in a run's `latest`: Adam's moments (`adam.m.<param>`, `adam.v.<param>`) and, for
//!   pool runs, the damage pool in pool order (`pool.images` [N, C, S, S], `pool.states`
//!   [N, Z, S, S]);
//! - header metadata: `format`, the run's `config` (TOML) and its `state` (`TrainState` as
//!   JSON: the step, every random stream, the data position, the best validation NLL).
//!
//! This module is the only place that knows these names. Files are written atomically: a
//! temporary file in the same directory, fsync, rename, fsync of the directory, so a
//! crash, Ctrl-C or full disk mid-write leaves the previous checkpoint intact.
use crate::config::Config;
use crate::dataset::EpochSampler;
use crate::model::Params;
use crate::model::Vnca;
use crate::noise::Noise;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const FORMAT: &str = "vnca-checkpoint/1";

/// Tensors of a `latest` checkpoint that are not model parameters.
const TRAINING_STATE_PREFIXES: [&str; 2] = ["adam.", "pool."];
const ADAM_M: &str = "adam.m.";
const ADAM_V: &str = "adam.v.";
const POOL_IMAGES: &str = "pool.images";
const POOL_STATES: &str = "pool.states";

/// Everything besides tensors that a resumed run needs to continue exactly as if it had
/// never stopped: the step, every random stream and the best validation score. (Files
/// written before version 0.2 also carry `adam_step`, always equal to `step`; it is
/// ignored.)
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    /// Gradient updates completed (also Adam's step count).
    pub step: u64,
    /// Model noise (reparameterisation, update masks).
    pub noise: Noise,
    /// Data order.
    pub sampler: EpochSampler,
    /// Best validation NLL so far (nats), for the `best` checkpoint.
    pub best_val: Option<f64>,
}

/// What a run's `latest` checkpoint holds besides the model's parameters.
pub struct Training {
    pub state: TrainState,
    /// Adam's first and second moments by parameter name.
    pub adam_m: Params,
    pub adam_v: Params,
    /// The damage pool, images [N, C, S, S] and states [N, Z, S, S], in pool order.
    pub pool: Option<(Tensor, Tensor)>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("`{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{path}`: not a valid safetensors file: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    #[error("`{path}`: tensor `{name}` is missing; is this a checkpoint of a different model?")]
    Missing { path: PathBuf, name: String },
    #[error("`{path}`: tensor `{name}` has shape {found:?}, the model expects {expected:?} (wrong preset/config?)")]
    Shape {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<i64>,
    },
    #[error("`{path}`: tensor `{name}` has dtype {found}, expected F32")]
    Dtype {
        path: PathBuf,
        name: String,
        found: String,
    },
    #[error("`{path}`: unexpected tensor `{name}` that the model does not have")]
    Unexpected { path: PathBuf, name: String },
}

/// What a checkpoint holds besides tensors.
#[derive(Clone, Debug, Default)]
pub struct Meta {
    /// The run's config as TOML, when saved by `vnca train`.
    pub config: Option<String>,
    /// The training state as JSON (`TrainState`).
    pub state: Option<String>,
}

impl Meta {
    /// The metadata of a run's checkpoints.
    pub fn of_run(cfg: &Config, state: &TrainState) -> Meta {
        Meta {
            config: Some(cfg.to_toml()),
            state: Some(serde_json::to_string(state).expect("TrainState serialises")),
        }
    }
}

/// Any tensor as f32 values on the CPU, flattened in row-major order (what a checkpoint
/// stores; also `serve`'s weight snapshots).
pub fn to_f32_vec(t: &Tensor) -> Vec<f32> {
    let flat = t
        .to_device(tch::Device::Cpu)
        .to_kind(tch::Kind::Float)
        .contiguous()
        .view(-1);
    Vec::<f32>::try_from(&flat).expect("a float tensor converts to Vec<f32>")
}

fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let v = to_f32_vec(t);
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Serialise named tensors and metadata into safetensors bytes (all stored as F32).
pub fn to_bytes(tensors: &BTreeMap<String, Tensor>, meta: &Meta) -> Vec<u8> {
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let shape = t.size().iter().map(|&d| d as usize).collect();
            (n.clone(), shape, tensor_bytes(t))
        })
        .collect();
    let views = owned.iter().map(|(n, shape, bytes)| {
        let view = TensorView::new(Dtype::F32, shape.clone(), bytes).expect("consistent view");
        (n.clone(), view)
    });
    let mut info = HashMap::from([("format".to_string(), FORMAT.to_string())]);
    if let Some(c) = &meta.config {
        info.insert("config".into(), c.clone());
    }
    if let Some(s) = &meta.state {
        info.insert("state".into(), s.clone());
    }
    safetensors::tensor::serialize(views, &Some(info)).expect("safetensors serialisation")
}

/// Write `bytes` to `path` atomically (temp file in the same directory, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Save the model's parameters, optional extra tensors (optimizer moments) and metadata.
pub fn save(
    path: &Path,
    model: &Vnca,
    extra: &BTreeMap<String, Tensor>,
    meta: &Meta,
) -> Result<(), CheckpointError> {
    let mut all: BTreeMap<String, Tensor> = model.vs.variables().into_iter().collect();
    for (k, v) in extra {
        all.insert(k.clone(), v.shallow_clone());
    }
    write_atomic(path, &to_bytes(&all, meta))
}

/// Save a run's `latest`: the model, Adam's moments and the pool (when given) under their
/// names, and the run's metadata.
pub fn save_training(
    path: &Path,
    model: &Vnca,
    cfg: &Config,
    training: &Training,
) -> Result<(), CheckpointError> {
    let mut extra = BTreeMap::new();
    for (prefix, moments) in [(ADAM_M, &training.adam_m), (ADAM_V, &training.adam_v)] {
        for (name, t) in moments {
            extra.insert(format!("{prefix}{name}"), t.shallow_clone());
        }
    }
    if let Some((images, states)) = &training.pool {
        extra.insert(POOL_IMAGES.into(), images.shallow_clone()); // [N, C, S, S]
        extra.insert(POOL_STATES.into(), states.shallow_clone()); // [N, Z, S, S]
    }
    save(path, model, &extra, &Meta::of_run(cfg, &training.state))
}

/// A checkpoint read into memory: raw file bytes, parsed on demand.
pub struct Loaded {
    pub path: PathBuf,
    bytes: Vec<u8>,
    pub meta: Meta,
}

impl Loaded {
    pub fn read(path: &Path) -> Result<Loaded, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Loaded::from_bytes(path, bytes)
    }

    /// A checkpoint already in memory (a model embedded in the binary); `path` names it
    /// in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Loaded, CheckpointError> {
        let corrupt = |e: safetensors::SafeTensorError| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            msg: format!("{e:?}"),
        };
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(corrupt)?;
        SafeTensors::deserialize(&bytes).map_err(corrupt)?;
        let info = header.metadata().clone().unwrap_or_default();
        let meta = Meta {
            config: info.get("config").cloned(),
            state: info.get("state").cloned(),
        };
        Ok(Loaded {
            path: path.to_path_buf(),
            bytes,
            meta,
        })
    }

    fn parsed(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("validated in read()")
    }

    pub fn names(&self) -> Vec<String> {
        self.parsed().names().into_iter().cloned().collect()
    }

    /// The tensor `name` as F32 with the `expected` shape, on the CPU.
    pub fn tensor(&self, name: &str, expected: &[i64]) -> Result<Tensor, CheckpointError> {
        let st = self.parsed();
        let view = st.tensor(name).map_err(|_| CheckpointError::Missing {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        if view.dtype() != Dtype::F32 {
            return Err(CheckpointError::Dtype {
                path: self.path.clone(),
                name: name.to_string(),
                found: format!("{:?}", view.dtype()),
            });
        }
        let found: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        if found != expected {
            return Err(CheckpointError::Shape {
                path: self.path.clone(),
                name: name.to_string(),
                found: view.shape().to_vec(),
                expected: expected.to_vec(),
            });
        }
        let v: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Tensor::from_slice(&v).view(expected))
    }

    /// The shape of tensor `name`, if the file holds it.
    pub fn shape(&self, name: &str) -> Option<Vec<i64>> {
        let st = self.parsed();
        let view = st.tensor(name).ok()?;
        Some(view.shape().iter().map(|&d| d as i64).collect())
    }

    /// Restore a run from its `latest`: the model's parameters into `model`, and the
    /// training state, Adam's moments (shaped like the parameters) and the pool (when the
    /// file holds one) returned.
    pub fn load_training(&self, model: &Vnca) -> anyhow::Result<Training> {
        self.load_model(model)?;
        let params = model.params();
        let moments = |prefix: &str| -> Result<Params, CheckpointError> {
            params
                .iter()
                .map(|(name, p)| {
                    Ok((
                        name.clone(),
                        self.tensor(&format!("{prefix}{name}"), &p.size())?,
                    ))
                })
                .collect()
        };
        let (adam_m, adam_v) = (moments(ADAM_M)?, moments(ADAM_V)?);
        let pool = match self.shape(POOL_STATES) {
            Some(shape) => {
                let (c, z, side) = (model.cfg.channels, model.cfg.z_dim, model.cfg.image_size);
                let n = shape[0];
                Some((
                    self.tensor(POOL_IMAGES, &[n, c, side, side])?,
                    self.tensor(POOL_STATES, &[n, z, side, side])?,
                ))
            }
            None => None,
        };
        let json = self.meta.state.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "`{}` holds weights only, no training state",
                self.path.display()
            )
        })?;
        let state: TrainState = serde_json::from_str(json).map_err(|e| {
            anyhow::anyhow!("`{}`: unreadable training state: {e}", self.path.display())
        })?;
        Ok(Training {
            state,
            adam_m,
            adam_v,
            pool,
        })
    }

    /// Copy every model parameter from the file into `model`. Training state (names
    /// starting with one of `TRAINING_STATE_PREFIXES`) may be present besides; any other
    /// stray tensor is an error, as it means the file belongs to a different architecture.
    pub fn load_model(&self, model: &Vnca) -> Result<(), CheckpointError> {
        let vars = model.vs.variables();
        for name in self.names() {
            let training_state = TRAINING_STATE_PREFIXES.iter().any(|p| name.starts_with(p));
            if !vars.contains_key(&name) && !training_state {
                return Err(CheckpointError::Unexpected {
                    path: self.path.clone(),
                    name: crate::data::error::escape_controls(&name),
                });
            }
        }
        let mut sorted: Vec<_> = vars.into_iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut var) in sorted {
            let t = self.tensor(&name, &var.size())?;
            tch::no_grad(|| var.copy_(&t));
        }
        Ok(())
    }
}
