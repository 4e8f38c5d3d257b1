//! Metrics as JSON lines (`metrics.jsonl` in the run directory): one object per training
//! step and per evaluation, appended and flushed so a crash loses at most one line.
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Train {
        step: u64,
        loss: f64,
        recon: f64,
        kl: f64,
        grad_norm: f64,
        step_seconds: f64,
    },
    Eval {
        step: u64,
        split: String,
        nll_nats: f64,
        nll_stderr: f64,
        bpd: f64,
        iw_samples: i64,
        n_images: usize,
    },
}

pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("`{}`: {e}", path.display()))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn write(&mut self, r: &Record) -> anyhow::Result<()> {
        let line = serde_json::to_string(r)? + "\n";
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| anyhow::anyhow!("`{}`: {e}", self.path.display()))
    }
}

/// On resume, drop the records of steps after the checkpoint (they will be redone), so
/// the file reads as one uninterrupted run.
pub fn truncate_after(path: &Path, step: u64) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    crate::checkpoint::write_atomic(path, kept.as_bytes())?;
    Ok(())
}
