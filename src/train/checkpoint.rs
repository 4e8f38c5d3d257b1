//! Checkpoints: one safetensors file holding the model's parameters under the reference's
//! `state_dict` names, the Adam moments (`adam.m.<name>`, `adam.v.<name>`) and, in the
//! header metadata, the run's config (TOML) and the training state (step, RNG streams,
//! data position) as JSON. A bare weights file (only the parameters) loads too, so a
//! reference checkpoint converted with `tools/convert_reference_checkpoint.py` evaluates here.
//!
//! Files are written atomically: a temporary file in the same directory, fsync, rename,
//! fsync of the directory. A crash, Ctrl-C or full disk mid-write leaves the previous
//! checkpoint intact.
use crate::model::Vnca;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const FORMAT: &str = "vnca-checkpoint/1";

/// Tensors of a `latest` checkpoint that are not model parameters: the Adam moments
/// (`adam.m.<name>`, `adam.v.<name>`) and the damage pool (`pool.images`, `pool.states`).
pub const TRAINING_STATE_PREFIXES: [&str; 2] = ["adam.", "pool."];

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
    /// The training state as JSON (see `train::state::TrainState`).
    pub state: Option<String>,
}

fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let v = crate::model::steps::to_f32_vec(t);
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
                    name,
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
