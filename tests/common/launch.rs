//! Starting ranks of a data-parallel job in tests: free ports, a clean environment, torchrun.
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// The variables of torchrun and Slurm that make a process a rank; removed from every
/// command the tests start, so the test runner's own environment cannot leak in.
pub const LAUNCHER_VARS: [&str; 10] = [
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "TORCHELASTIC_USE_AGENT_STORE",
];

static SERIAL: Mutex<()> = Mutex::new(());

/// One multi-process test at a time: each starts processes that load libtorch, and their
/// deadlines are wall time, which parallel tests on a small machine would stretch.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A port nobody listens on now (the OS's pick, released at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `vnca` with no launcher variables.
pub fn vnca() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vnca"));
    for var in LAUNCHER_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// `torchrun --no-python --nproc-per-node N --master-port P target/.../vnca` (the
/// `.venv`'s torchrun), to which the caller adds vnca's arguments.
pub fn torchrun(nproc: usize) -> Command {
    let torchrun = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/torchrun");
    assert!(
        torchrun.exists(),
        "{} missing: run `make setup` (it installs the torch wheel that carries libtorch)",
        torchrun.display()
    );
    let mut cmd = Command::new(&torchrun);
    for var in LAUNCHER_VARS {
        cmd.env_remove(var);
    }
    cmd.args([
        "--no-python",
        "--nproc-per-node",
        &nproc.to_string(),
        "--master-port",
    ])
    .arg(free_port().to_string())
    .arg(env!("CARGO_BIN_EXE_vnca"));
    cmd
}

/// `vnca` as rank `rank` of `world` over loopback, with torchrun's variables, the
/// collective timeout `timeout_s`, and its output piped.
pub fn rank_command(rank: usize, world: usize, port: u16, timeout_s: u32) -> Command {
    let mut cmd = vnca();
    cmd.env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("VNCA_DIST_TIMEOUT", timeout_s.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}
