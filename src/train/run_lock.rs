//! One training process per run directory: `vnca train` holds an exclusive advisory lock
//! (`flock`) on `<out>/.lock` for the whole run, so a second run started into the same
//! directory refuses at once instead of overwriting the first one's checkpoints and
//! metrics. The lock belongs to the open file, so the kernel releases it when the process
//! ends in any way (a kill included): a lock file left by a killed run never blocks a
//! later `--resume`. The file holds the holder's process id, for the error message.
use anyhow::Context;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Held for as long as the run trains; dropping it releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock of run directory `dir` (which must exist), or fails with one line
    /// naming the process that holds it.
    pub fn acquire(dir: &Path) -> anyhow::Result<RunLock> {
        let path = dir.join(".lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the run lock `{}`", path.display()))?;
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0)
                    .and_then(|_| file.seek(SeekFrom::Start(0)))
                    .and_then(|_| writeln!(file, "{}", std::process::id()))
                    .with_context(|| format!("cannot write the run lock `{}`", path.display()))?;
                Ok(RunLock { _file: file, path })
            }
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!("process {pid}"),
                    Err(_) => "another process".to_string(),
                };
                anyhow::bail!(
                    "`{}` is in use: {holder} is training into it (lock `{}`); wait for it to \
                     finish or stop it, or pass another --out",
                    dir.display(),
                    path.display()
                )
            }
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock `{}`", path.display()))
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_naming_the_first_and_a_released_lock_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        let written = std::fs::read_to_string(first.path()).unwrap();
        assert_eq!(written.trim(), std::process::id().to_string());
        // flock locks belong to the open file description: a second open in this same
        // process conflicts just as another process's would.
        let err = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("process {}", std::process::id())) && err.contains("in use"),
            "{err}"
        );
        drop(first);
        // A lock file left behind (e.g. by a killed run) does not block.
        assert!(dir.path().join(".lock").exists());
        let again = RunLock::acquire(dir.path()).unwrap();
        drop(again);
    }
}
