//! Data-parallel training across processes on PyTorch's own distributed engine (c10d):
//! rendezvous through a `TCPStore`, gradients averaged by a Gloo (CPU) or NCCL (CUDA)
//! all-reduce. The engine is the one `torch.distributed` uses, compiled into the libtorch
//! we link; `csrc/dist.cpp` binds the few calls needed and this module is the safe API.
//!
//! A process is one rank of a job when torchrun's variables (`RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) or Slurm's (`SLURM_PROCID`, `SLURM_NTASKS`,
//! `SLURM_LOCALID`, with `MASTER_ADDR`/`MASTER_PORT` given) are set; otherwise
//! [`Dist::from_env`] returns `None` and nothing changes.
//!
//! Failures end in one error that names the culprit, within the timeout
//! (`VNCA_DIST_TIMEOUT` seconds) plus a few seconds, never in a hang: every rank runs a
//! heartbeat thread that writes its beat count and collective number into the store.
//! After a failed collective, a rank whose beat stopped (and who left no failure note)
//! died; one whose beat goes on but whose collective number lags hangs or is slow; an
//! unreachable store means its host (rank 0, or torchrun's agent) is gone.
//!
//! Use, as PyTorch's DDP:
//! ```ignore
//! let dist = Dist::from_env(device)?; // None: one process, nothing changes
//! if let Some(d) = &dist {
//!     d.check_same("config and data", &fingerprint)?; // refuse mismatched ranks
//!     for p in vs.trainable_variables() { d.broadcast(&p, 0)?; } // rank 0's initial weights
//! }
//! // each step, after backward and before global-norm clipping:
//! if let Some(d) = &dist { d.all_reduce_mean_grads(&grads)?; }
//! ```
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tch::{Device, Tensor};

mod ffi {
    use std::ffi::{c_char, c_int, c_void};

    #[repr(C)]
    pub struct VncaStore {
        _private: [u8; 0],
    }
    #[repr(C)]
    pub struct VncaGroup {
        _private: [u8; 0],
    }

    // The contract of each function is in csrc/dist.h.
    extern "C" {
        pub fn vnca_dist_nccl_built() -> c_int;
        pub fn vnca_dist_free(p: *mut c_void);
        pub fn vnca_dist_quiet_logs();
        pub fn vnca_dist_store_new(
            host: *const c_char,
            port: u16,
            is_server: c_int,
            world_size: c_int,
            timeout_ms: i64,
            out: *mut *mut VncaStore,
            err: *mut *mut c_char,
        ) -> c_int;
        pub fn vnca_dist_store_clone(
            s: *mut VncaStore,
            out: *mut *mut VncaStore,
            err: *mut *mut c_char,
        ) -> c_int;
        pub fn vnca_dist_store_free(s: *mut VncaStore);
        pub fn vnca_dist_store_set(
            s: *mut VncaStore,
            key: *const c_char,
            value: *const u8,
            len: usize,
            err: *mut *mut c_char,
        ) -> c_int;
        pub fn vnca_dist_store_get(
            s: *mut VncaStore,
            key: *const c_char,
            timeout_ms: i64,
            value: *mut *mut u8,
            len: *mut usize,
            err: *mut *mut c_char,
        ) -> c_int;
        pub fn vnca_dist_store_try_get(
            s: *mut VncaStore,
            key: *const c_char,
            found: *mut c_int,
            value: *mut *mut u8,
            len: *mut usize,
            err: *mut *mut c_char,
        ) -> c_int;
        #[allow(clippy::too_many_arguments)]
        pub fn vnca_dist_group_new(
            s: *mut VncaStore,
            prefix: *const c_char,
            backend: *const c_char,
            rank: c_int,
            world_size: c_int,
            gloo_host: *const c_char,
            cuda_device: c_int,
            timeout_ms: i64,
            out: *mut *mut VncaGroup,
            err: *mut *mut c_char,
        ) -> c_int;
        pub fn vnca_dist_group_free(g: *mut VncaGroup);
        pub fn vnca_dist_group_leak(g: *mut VncaGroup);
        pub fn vnca_dist_all_reduce_sum(
            g: *mut VncaGroup,
            tensor: *const c_void,
            timeout_ms: i64,
            err: *mut *mut c_char,
        ) -> c_int;
        pub fn vnca_dist_broadcast(
            g: *mut VncaGroup,
            tensor: *const c_void,
            root: c_int,
            timeout_ms: i64,
            err: *mut *mut c_char,
        ) -> c_int;
        pub fn vnca_dist_barrier(
            g: *mut VncaGroup,
            timeout_ms: i64,
            err: *mut *mut c_char,
        ) -> c_int;
    }
}

/// Collective timeout when `VNCA_DIST_TIMEOUT` is not set: long enough for a paper-size
/// step, an evaluation pass or a checkpoint write on a slow rank, short enough that a
/// dead job does not hold its machines for long.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// How often each rank writes its heartbeat into the store.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// A rank whose heartbeat did not move for this long is taken for dead.
const SILENCE: Duration = Duration::from_millis(1600);
/// Gradients are flattened into buffers of at most this many bytes, which bounds the
/// extra memory of the flat copy; the paper model's 26 MB gradient is one bucket.
const BUCKET_BYTES: usize = 64 << 20;
/// Store keys of this module; the process group's own keys live under `vnca/pg/`.
const KEY_PREFIX: &str = "vnca";

/// Everything that can go wrong in a data-parallel job, each one line.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("{var}: {msg}")]
    Env { var: String, msg: String },
    #[error("rank {rank}: rendezvous through the store at {addr} failed: {msg}")]
    Rendezvous {
        rank: usize,
        addr: String,
        msg: String,
    },
    #[error("rank {rank}: creating the {backend} process group failed: {msg}; {diagnosis}")]
    Group {
        rank: usize,
        backend: Backend,
        msg: String,
        diagnosis: String,
    },
    #[error(
        "this vnca was built without NCCL (build.rs found no complete CUDA toolkit headers \
         and nccl.h; see compile_dist_shim there); use the gloo backend"
    )]
    NcclNotBuilt,
    #[error("the nccl backend needs CUDA tensors; use --device cuda or the gloo backend")]
    NcclOnCpu,
    #[error("ranks differ in {what}, refusing to start: {detail}")]
    Mismatch { what: String, detail: String },
    #[error("{op} #{seq} failed on rank {rank}: {diagnosis} (engine: {cause})")]
    Collective {
        op: &'static str,
        seq: u64,
        rank: usize,
        diagnosis: String,
        cause: String,
    },
    #[error("rank {rank}: store: {msg}")]
    Store { rank: usize, msg: String },
    #[error("{0}")]
    Tensor(String),
}

/// The collective backend: Gloo (CPU and CUDA tensors, over TCP) or NCCL (CUDA only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Gloo,
    Nccl,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }

    /// NCCL for CUDA where it was built, else Gloo (which also moves CUDA tensors, through
    /// host copies: slower, but it works).
    pub fn for_device(device: Device) -> Backend {
        match device {
            Device::Cuda(_) if nccl_built() => Backend::Nccl,
            _ => Backend::Gloo,
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gloo" => Ok(Backend::Gloo),
            "nccl" => Ok(Backend::Nccl),
            _ => Err(format!("unknown backend `{s}` (use gloo or nccl)")),
        }
    }
}

/// Whether the NCCL process group was compiled into this binary (see build.rs).
pub fn nccl_built() -> bool {
    // SAFETY: no arguments, returns a constant.
    unsafe { ffi::vnca_dist_nccl_built() != 0 }
}

/// Who started the ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    Torchrun,
    Slurm,
}

/// One rank's place in the job, from the launcher's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world_size: usize,
    /// This rank's index on its machine: its GPU with `--device cuda`.
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    pub launcher: Launcher,
    /// torchrun's agent already hosts the store on the master port
    /// (`TORCHELASTIC_USE_AGENT_STORE=True`); every rank is then a client, as in
    /// `torch.distributed`.
    pub agent_store: bool,
    /// `GLOO_SOCKET_IFNAME` is set; PyTorch's own device selection honours it.
    pub gloo_ifname: bool,
}

impl DistEnv {
    /// `None` when neither torchrun's `RANK` nor a multi-task Slurm step is present.
    pub fn from_env() -> Result<Option<DistEnv>, DistError> {
        DistEnv::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`DistEnv::from_env`], reading the variables through `get` (for tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>, DistError> {
        let (launcher, rank_var, world_var, local_var) = if get("RANK").is_some() {
            (Launcher::Torchrun, "RANK", "WORLD_SIZE", "LOCAL_RANK")
        } else if get("SLURM_PROCID").is_some() {
            // A plain one-task Slurm job is not a distributed one.
            if get("SLURM_NTASKS").as_deref().map(str::trim) == Some("1") {
                return Ok(None);
            }
            (
                Launcher::Slurm,
                "SLURM_PROCID",
                "SLURM_NTASKS",
                "SLURM_LOCALID",
            )
        } else {
            return Ok(None);
        };
        let env_err = |var: &str, msg: String| DistError::Env {
            var: var.to_owned(),
            msg,
        };
        let required = |var: &str| {
            get(var).ok_or_else(|| {
                let why = match launcher {
                    Launcher::Torchrun => "RANK is set, so this is one rank of a torchrun job",
                    Launcher::Slurm => {
                        "SLURM_PROCID is set in a multi-task Slurm step (export MASTER_ADDR as \
                         the first node's address and MASTER_PORT as a free port)"
                    }
                };
                env_err(var, format!("not set, but {why}"))
            })
        };
        let number = |var: &str| -> Result<usize, DistError> {
            let v = required(var)?;
            v.trim()
                .parse::<usize>()
                .map_err(|_| env_err(var, format!("`{v}` is not a non-negative integer")))
        };
        let rank = number(rank_var)?;
        let world_size = number(world_var)?;
        if world_size == 0 {
            return Err(env_err(world_var, "must be at least 1".into()));
        }
        if rank >= world_size {
            return Err(env_err(
                rank_var,
                format!("{rank} is not below {world_var}={world_size}"),
            ));
        }
        let local_rank = match get(local_var) {
            Some(_) => number(local_var)?,
            None => 0,
        };
        let master_addr = required("MASTER_ADDR")?.trim().to_owned();
        if master_addr.is_empty() {
            return Err(env_err("MASTER_ADDR", "is empty".into()));
        }
        let port = required("MASTER_PORT")?;
        let master_port = port
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| env_err("MASTER_PORT", format!("`{port}` is not a port (1-65535)")))?;
        Ok(Some(DistEnv {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
            launcher,
            agent_store: launcher == Launcher::Torchrun
                && get("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True"),
            gloo_ifname: get("GLOO_SOCKET_IFNAME").is_some_and(|v| !v.is_empty()),
        }))
    }

    /// Whether the master address is this machine's loopback, so Gloo binds there too
    /// (the hostname may resolve to an address other ranks on this machine cannot use).
    fn loopback_master(&self) -> Option<&'static str> {
        match self.master_addr.as_str() {
            "localhost" => Some("127.0.0.1"),
            "::1" => Some("::1"),
            a if a.starts_with("127.") => Some("127.0.0.1"),
            _ => None,
        }
    }
}

/// The backend override and the timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistOptions {
    /// `None`: NCCL for CUDA where built, Gloo otherwise.
    pub backend: Option<Backend>,
    /// Bound on every collective, every store wait and the rendezvous.
    pub timeout: Duration,
}

impl Default for DistOptions {
    fn default() -> Self {
        DistOptions {
            backend: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl DistOptions {
    /// `VNCA_DIST_TIMEOUT` (seconds, may be fractional) and `VNCA_DIST_BACKEND`.
    pub fn from_env() -> Result<DistOptions, DistError> {
        DistOptions::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<DistOptions, DistError> {
        let mut opts = DistOptions::default();
        if let Some(t) = get("VNCA_DIST_TIMEOUT") {
            let secs = t
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0 && s.is_finite());
            opts.timeout = secs
                .map(Duration::from_secs_f64)
                .ok_or_else(|| DistError::Env {
                    var: "VNCA_DIST_TIMEOUT".into(),
                    msg: format!("`{t}` is not a positive number of seconds"),
                })?;
        }
        if let Some(b) = get("VNCA_DIST_BACKEND") {
            opts.backend = Some(b.trim().parse().map_err(|msg| DistError::Env {
                var: "VNCA_DIST_BACKEND".into(),
                msg,
            })?);
        }
        Ok(opts)
    }
}

/// Calls one shim function and turns its error message into a `String`. C++ messages may
/// span lines; they are joined so the CLI's error stays one line.
fn check(f: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<(), String> {
    let mut err: *mut c_char = std::ptr::null_mut();
    if f(&mut err) == 0 {
        return Ok(());
    }
    if err.is_null() {
        return Err("unknown error (no message)".into());
    }
    // SAFETY: on failure the shim sets `err` to a NUL-terminated malloc'd string.
    let msg = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: allocated by the shim, freed once here.
    unsafe { ffi::vnca_dist_free(err.cast()) };
    Err(msg.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn c_string(s: &str) -> CString {
    // Keys and addresses come from our own code and the environment, never with NUL.
    CString::new(s.replace('\0', "")).expect("NUL removed")
}

fn millis(d: Duration) -> i64 {
    d.as_millis().clamp(1, i64::MAX as u128) as i64
}

/// One client connection to the TCPStore (the server too on rank 0).
struct Store(*mut ffi::VncaStore);

// SAFETY: a TCPStore client is one socket plus a mutex; each `Store` is used by one
// thread at a time (the heartbeat thread owns its own clone).
unsafe impl Send for Store {}

impl Store {
    fn connect(
        host: &str,
        port: u16,
        server: bool,
        world: usize,
        timeout: Duration,
    ) -> Result<Store, String> {
        let host = c_string(host);
        let mut out = std::ptr::null_mut();
        check(|err| unsafe {
            ffi::vnca_dist_store_new(
                host.as_ptr(),
                port,
                server as c_int,
                world as c_int,
                millis(timeout),
                &mut out,
                err,
            )
        })?;
        Ok(Store(out))
    }

    fn clone_connection(&self) -> Result<Store, String> {
        let mut out = std::ptr::null_mut();
        check(|err| unsafe { ffi::vnca_dist_store_clone(self.0, &mut out, err) })?;
        Ok(Store(out))
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let key = c_string(key);
        check(|err| unsafe {
            ffi::vnca_dist_store_set(self.0, key.as_ptr(), value.as_ptr(), value.len(), err)
        })
    }

    /// Takes ownership of a value the shim allocated.
    fn take(value: *mut u8, len: usize) -> Vec<u8> {
        // SAFETY: the shim returned `len` readable bytes at `value`, malloc'd.
        let v = unsafe { std::slice::from_raw_parts(value, len) }.to_vec();
        unsafe { ffi::vnca_dist_free(value.cast()) };
        v
    }

    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>, String> {
        let key = c_string(key);
        let (mut value, mut len) = (std::ptr::null_mut(), 0usize);
        check(|err| unsafe {
            ffi::vnca_dist_store_get(
                self.0,
                key.as_ptr(),
                millis(timeout),
                &mut value,
                &mut len,
                err,
            )
        })?;
        Ok(Store::take(value, len))
    }

    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let key = c_string(key);
        let (mut found, mut value, mut len) = (0, std::ptr::null_mut(), 0usize);
        check(|err| unsafe {
            ffi::vnca_dist_store_try_get(
                self.0,
                key.as_ptr(),
                &mut found,
                &mut value,
                &mut len,
                err,
            )
        })?;
        Ok((found != 0).then(|| Store::take(value, len)))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: created by the shim, freed once.
        unsafe { ffi::vnca_dist_store_free(self.0) }
    }
}

/// The background thread that writes `vnca/hb/<rank>` = "<beats> <collective #>".
struct Heartbeat {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Heartbeat {
    fn start(store: Store, rank: usize, seq: Arc<AtomicU64>) -> Heartbeat {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vnca-dist-heartbeat-{rank}"))
            .spawn(move || {
                let key = format!("{KEY_PREFIX}/hb/{rank}");
                let mut beats = 0u64;
                while !flag.load(Ordering::Relaxed) {
                    beats += 1;
                    let value = format!("{beats} {}", seq.load(Ordering::Relaxed));
                    if store.set(&key, value.as_bytes()).is_err() {
                        // The store is gone; the main thread finds out and says so.
                        return;
                    }
                    let until = Instant::now() + HEARTBEAT;
                    while !flag.load(Ordering::Relaxed) && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
            .ok();
        Heartbeat { stop, handle }
    }

    /// Stops the thread; waits for it only when asked (a thread blocked on an
    /// unresponsive store would hold up the exit).
    fn stop(&mut self, join: bool) {
        self.stop.store(true, Ordering::Relaxed);
        if let (true, Some(h)) = (join, self.handle.take()) {
            let _ = h.join();
        }
    }
}

/// What one rank last wrote into the store.
#[derive(Debug, Clone, Default)]
struct RankState {
    beats: Option<u64>,
    seq: Option<u64>,
    /// Its `vnca/exit/<rank>` note: "ok" or "failed ...".
    exit: Option<String>,
}

/// One rank of a data-parallel job: the store connection, the process group and the
/// heartbeat. Dropping it leaves the job cleanly (rank 0 keeps the store up until the
/// others have left or died, bounded by the timeout).
pub struct Dist {
    env: DistEnv,
    backend: Backend,
    timeout: Duration,
    store: Store,
    group: *mut ffi::VncaGroup,
    heartbeat: Heartbeat,
    /// Collectives this rank has started; the heartbeat reports it.
    seq: Arc<AtomicU64>,
    /// Calls to [`Dist::check_same`], so repeated checks use fresh keys.
    checks: AtomicU64,
    /// Set after a failed collective: the group is unusable and is not destroyed.
    broken: AtomicBool,
}

impl Dist {
    /// The rank this process is, connected, or `None` when no launcher variables are set.
    /// `device` picks the backend (unless `VNCA_DIST_BACKEND` says) and, for NCCL, the GPU.
    pub fn from_env(device: Device) -> Result<Option<Dist>, DistError> {
        let Some(env) = DistEnv::from_env()? else {
            return Ok(None);
        };
        let opts = DistOptions::from_env()?;
        Dist::connect(env, device, &opts).map(Some)
    }

    /// Rendezvous (rank 0 hosts the store unless torchrun's agent does), then the process
    /// group. Blocks until every rank has arrived, at most the timeout.
    pub fn connect(env: DistEnv, device: Device, opts: &DistOptions) -> Result<Dist, DistError> {
        let backend = match opts.backend {
            Some(b) => b,
            None => {
                let b = Backend::for_device(device);
                if device.is_cuda() && b == Backend::Gloo && env.rank == 0 {
                    eprintln!(
                        "note: this vnca was built without NCCL; CUDA gradients are averaged \
                         through Gloo (host copies, slower)"
                    );
                }
                b
            }
        };
        if backend == Backend::Nccl && !nccl_built() {
            return Err(DistError::NcclNotBuilt);
        }
        if backend == Backend::Nccl && !device.is_cuda() {
            return Err(DistError::NcclOnCpu);
        }
        // SAFETY: sets one integer flag of libtorch's logger.
        unsafe { ffi::vnca_dist_quiet_logs() };
        let addr = format!("{}:{}", env.master_addr, env.master_port);
        let server = env.rank == 0 && !env.agent_store;
        let store = Store::connect(
            &env.master_addr,
            env.master_port,
            server,
            env.world_size,
            opts.timeout,
        )
        .map_err(|msg| DistError::Rendezvous {
            rank: env.rank,
            addr: addr.clone(),
            msg,
        })?;
        let seq = Arc::new(AtomicU64::new(0));
        let beat_store = store
            .clone_connection()
            .map_err(|msg| DistError::Rendezvous {
                rank: env.rank,
                addr,
                msg,
            })?;
        let heartbeat = Heartbeat::start(beat_store, env.rank, seq.clone());
        let mut dist = Dist {
            env,
            backend,
            timeout: opts.timeout,
            store,
            group: std::ptr::null_mut(),
            heartbeat,
            seq,
            checks: AtomicU64::new(0),
            broken: AtomicBool::new(false),
        };
        let prefix = c_string(&format!("{KEY_PREFIX}/pg"));
        let name = c_string(backend.name());
        let gloo_host = match (dist.env.gloo_ifname, dist.env.loopback_master()) {
            (false, Some(h)) => Some(c_string(h)),
            _ => None,
        };
        let mut group = std::ptr::null_mut();
        let made = check(|err| unsafe {
            ffi::vnca_dist_group_new(
                dist.store.0,
                prefix.as_ptr(),
                name.as_ptr(),
                dist.env.rank as c_int,
                dist.env.world_size as c_int,
                gloo_host.as_ref().map_or(std::ptr::null(), |h| h.as_ptr()),
                dist.env.local_rank as c_int,
                millis(dist.timeout),
                &mut group,
                err,
            )
        });
        if let Err(msg) = made {
            dist.broken.store(true, Ordering::Relaxed);
            let diagnosis = dist.diagnose();
            dist.note_exit(&format!("failed to create the process group: {msg}"));
            return Err(DistError::Group {
                rank: dist.env.rank,
                backend,
                msg,
                diagnosis,
            });
        }
        dist.group = group;
        Ok(dist)
    }

    pub fn rank(&self) -> usize {
        self.env.rank
    }

    pub fn world_size(&self) -> usize {
        self.env.world_size
    }

    pub fn local_rank(&self) -> usize {
        self.env.local_rank
    }

    /// Rank 0 writes checkpoints, metrics and pictures.
    pub fn is_main(&self) -> bool {
        self.env.rank == 0
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn env(&self) -> &DistEnv {
        &self.env
    }

    /// The device this rank computes on: `cuda` / `cuda:N` becomes `cuda:LOCAL_RANK`.
    pub fn device(&self, requested: Device) -> Device {
        match requested {
            Device::Cuda(_) => Device::Cuda(self.env.local_rank),
            d => d,
        }
    }

    /// In place: every rank's `t` becomes the sum over ranks.
    pub fn all_reduce_sum(&self, t: &Tensor) -> Result<(), DistError> {
        check_dense(t)?;
        self.collective("all-reduce", |g, ms, err| unsafe {
            ffi::vnca_dist_all_reduce_sum(g, t.as_ptr() as *const c_void, ms, err)
        })
    }

    /// In place: every rank's `t` becomes the mean over ranks (sum, then / world size).
    pub fn all_reduce_mean(&self, t: &Tensor) -> Result<(), DistError> {
        self.all_reduce_sum(t)?;
        if self.env.world_size > 1 {
            let mut t = t.shallow_clone();
            tch::no_grad(|| t.f_div_scalar_(self.env.world_size as f64).map(drop))
                .map_err(|e| DistError::Tensor(format!("dividing the all-reduced sum: {e}")))?;
        }
        Ok(())
    }

    /// Averages a list of gradients over ranks, as PyTorch's DDP does: consecutive tensors
    /// of one dtype and device are flattened into one buffer (at most `BUCKET_BYTES`),
    /// all-reduced once, and written back. Every rank must pass the same shapes in the
    /// same order; an undefined gradient is an error (it would have no place to land).
    pub fn all_reduce_mean_grads(&self, grads: &[Tensor]) -> Result<(), DistError> {
        for (i, g) in grads.iter().enumerate() {
            if !g.defined() {
                return Err(DistError::Tensor(format!(
                    "gradient {i} is undefined (a parameter outside the graph?)"
                )));
            }
        }
        for bucket in buckets(grads) {
            let flat = flatten(bucket)?; // [sum of numels]
            self.all_reduce_mean(&flat)?;
            unflatten(&flat, bucket)?;
        }
        Ok(())
    }

    /// In place: every rank's `t` becomes `root`'s.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<(), DistError> {
        check_dense(t)?;
        if root >= self.env.world_size {
            return Err(DistError::Tensor(format!(
                "broadcast root {root} is not a rank (world size {})",
                self.env.world_size
            )));
        }
        self.collective("broadcast", |g, ms, err| unsafe {
            ffi::vnca_dist_broadcast(g, t.as_ptr() as *const c_void, root as c_int, ms, err)
        })
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<(), DistError> {
        self.collective("barrier", |g, ms, err| unsafe {
            ffi::vnca_dist_barrier(g, ms, err)
        })
    }

    /// Refuses to go on unless every rank's `fingerprint` of `what` (e.g. a hash of the
    /// config, or of the data) equals rank 0's. Every rank gets the same error, naming
    /// the ranks that differ and both values.
    pub fn check_same(&self, what: &str, fingerprint: &str) -> Result<(), DistError> {
        let n = self.checks.fetch_add(1, Ordering::Relaxed);
        let key = |r: usize| format!("{KEY_PREFIX}/same/{n}/{r}");
        let store_err = |msg: String| DistError::Store {
            rank: self.env.rank,
            msg: format!("comparing {what}: {msg}; {}", self.diagnose()),
        };
        self.store
            .set(&key(self.env.rank), fingerprint.as_bytes())
            .map_err(store_err)?;
        let mut values = Vec::with_capacity(self.env.world_size);
        for r in 0..self.env.world_size {
            let v = self
                .store
                .get(&key(r), self.timeout)
                .map_err(|msg| store_err(format!("rank {r} did not post its {what}: {msg}")))?;
            values.push(String::from_utf8_lossy(&v).into_owned());
        }
        let differing: Vec<String> = (1..values.len())
            .filter(|&r| values[r] != values[0])
            .map(|r| format!("rank {r} has `{}`", short(&values[r])))
            .collect();
        if differing.is_empty() {
            return Ok(());
        }
        Err(DistError::Mismatch {
            what: what.to_owned(),
            detail: format!(
                "{}, rank 0 has `{}`",
                differing.join(", "),
                short(&values[0])
            ),
        })
    }

    /// Runs one collective; on failure, finds out who is to blame.
    fn collective(
        &self,
        op: &'static str,
        f: impl FnOnce(*mut ffi::VncaGroup, i64, *mut *mut c_char) -> c_int,
    ) -> Result<(), DistError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let fail = |diagnosis: String, cause: String| DistError::Collective {
            op,
            seq,
            rank: self.env.rank,
            diagnosis,
            cause,
        };
        if self.broken.load(Ordering::Relaxed) || self.group.is_null() {
            return Err(fail(
                "an earlier collective failed".into(),
                "process group unusable".into(),
            ));
        }
        let ms = millis(self.timeout);
        // Parameters require grad; an in-place write into them (the broadcast of initial
        // weights, Gloo's copy back from host memory for CUDA tensors) must not be recorded.
        // The process group carries this thread's grad mode to its worker threads.
        match tch::no_grad(|| check(|err| f(self.group, ms, err))) {
            Ok(()) => Ok(()),
            Err(cause) => {
                let cause = engine_message(&cause);
                self.broken.store(true, Ordering::Relaxed);
                let diagnosis = self.diagnose();
                self.note_exit(&format!("failed in {op} #{seq}: {diagnosis}"));
                Err(fail(diagnosis, cause))
            }
        }
    }

    /// Every rank's heartbeat, collective number and exit note.
    fn read_states(&self) -> Result<Vec<RankState>, String> {
        (0..self.env.world_size)
            .map(|r| {
                let mut s = RankState::default();
                if let Some(v) = self.store.try_get(&format!("{KEY_PREFIX}/hb/{r}"))? {
                    let v = String::from_utf8_lossy(&v).into_owned();
                    let mut it = v.split_whitespace().map(|x| x.parse::<u64>().ok());
                    s.beats = it.next().flatten();
                    s.seq = it.next().flatten();
                }
                if let Some(v) = self.store.try_get(&format!("{KEY_PREFIX}/exit/{r}"))? {
                    s.exit = Some(String::from_utf8_lossy(&v).into_owned());
                }
                Ok(s)
            })
            .collect()
    }

    /// Names the rank(s) to blame after a failure: watches the heartbeats for `SILENCE`,
    /// then reports the silent ones (died or frozen), else the ones whose collective
    /// number lags (hang or slow), else a rank that failed first, else the network.
    fn diagnose(&self) -> String {
        let store_gone = |e: String| {
            if self.env.agent_store {
                format!(
                    "the store at {}:{}, hosted by torchrun's agent, is unreachable ({e})",
                    self.env.master_addr, self.env.master_port
                )
            } else {
                format!(
                    "rank 0, which hosts the store at {}:{}, died or hangs (store unreachable: {e})",
                    self.env.master_addr, self.env.master_port
                )
            }
        };
        let first = match self.read_states() {
            Ok(s) => s,
            Err(e) => return store_gone(e),
        };
        // The heartbeat is written every HEARTBEAT; a live rank moves within SILENCE.
        std::thread::sleep(SILENCE);
        let last = match self.read_states() {
            Ok(s) => s,
            Err(e) => return store_gone(e),
        };
        let me = self.env.rank;
        let my_seq = self.seq.load(Ordering::Relaxed);
        let others = (0..self.env.world_size).filter(|&r| r != me);
        let silent: Vec<usize> = others
            .clone()
            .filter(|&r| {
                last[r].exit.is_none() && last[r].beats.is_none_or(|b| first[r].beats == Some(b))
            })
            .collect();
        if !silent.is_empty() {
            let secs = SILENCE.as_secs_f64();
            return format!(
                "{} died or stopped responding (no heartbeat for {secs:.1} s)",
                ranks_phrase(&silent)
            );
        }
        let behind: Vec<(usize, u64)> = others
            .clone()
            .filter(|&r| last[r].exit.is_none())
            .filter_map(|r| last[r].seq.filter(|&s| s < my_seq).map(|s| (r, s)))
            .collect();
        if !behind.is_empty() {
            let at: Vec<String> = behind
                .iter()
                .map(|(r, s)| format!("rank {r} at #{s}"))
                .collect();
            return format!(
                "{} hangs or is slow: alive but behind ({}, this rank at #{my_seq})",
                ranks_phrase(&behind.iter().map(|b| b.0).collect::<Vec<_>>()),
                at.join(", ")
            );
        }
        // Nobody silent or behind: relay what another rank found, or say it has left.
        if let Some(r) = others
            .clone()
            .find(|&r| last[r].exit.as_deref() != Some("ok"))
        {
            if let Some(note) = last[r].exit.as_deref() {
                return format!("rank {r} {note}");
            }
        }
        if let Some(r) = others.clone().find(|&r| last[r].exit.is_some()) {
            return format!(
                "rank {r} already finished and left the job (do the ranks run the same steps?)"
            );
        }
        "every rank is alive and at the same collective; the backend or the network failed".into()
    }

    /// Leaves a note for the other ranks' diagnosis; best effort.
    fn note_exit(&self, note: &str) {
        let _ = self.store.set(
            &format!("{KEY_PREFIX}/exit/{}", self.env.rank),
            note.as_bytes(),
        );
    }

    /// Rank 0 hosting the store waits, at most the timeout, until every other rank has
    /// left a note or gone silent, so no rank loses the store mid-diagnosis or mid-exit.
    /// After a failure, a rank still behind (hung) is not waited for: it will not
    /// diagnose anything.
    fn wait_for_others(&self, broken: bool) {
        let deadline = Instant::now() + self.timeout;
        let my_seq = self.seq.load(Ordering::Relaxed);
        let mut last_beats: Vec<(Option<u64>, Instant)> =
            vec![(None, Instant::now()); self.env.world_size];
        loop {
            let Ok(states) = self.read_states() else {
                return;
            };
            let now = Instant::now();
            let mut waiting = false;
            for (r, s) in states.iter().enumerate().skip(1) {
                if s.exit.is_some() || (broken && s.seq.is_some_and(|q| q < my_seq)) {
                    continue;
                }
                if s.beats != last_beats[r].0 {
                    last_beats[r] = (s.beats, now);
                }
                if now.duration_since(last_beats[r].1) < SILENCE {
                    waiting = true;
                }
            }
            if !waiting || now >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dist {
    fn drop(&mut self) {
        let broken = self.broken.load(Ordering::Relaxed);
        if !broken {
            self.note_exit("ok");
        }
        self.heartbeat.stop(!broken);
        if self.env.rank == 0 && !self.env.agent_store {
            self.wait_for_others(broken);
        }
        if !self.group.is_null() {
            // SAFETY: created by the shim, released once. A broken group may still have a
            // worker thread inside the failed collective; it is left to the process exit.
            unsafe {
                if broken {
                    ffi::vnca_dist_group_leak(self.group)
                } else {
                    ffi::vnca_dist_group_free(self.group)
                }
            }
            self.group = std::ptr::null_mut();
        }
    }
}

/// The engine's message without its source location (`[/path/pair.cc:553] `) and
/// without Gloo's advice to read the other worker's log, which the diagnosis replaces.
fn engine_message(msg: &str) -> String {
    let msg = match (msg.starts_with('['), msg.find("] ")) {
        (true, Some(i)) if msg[..i].contains(':') => &msg[i + 2..],
        _ => msg,
    };
    match msg.find(" This is typically caused") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// "rank 2" or "ranks 1, 3".
fn ranks_phrase(ranks: &[usize]) -> String {
    let list: Vec<String> = ranks.iter().map(|r| r.to_string()).collect();
    match ranks.len() {
        1 => format!("rank {}", list[0]),
        _ => format!("ranks {}", list.join(", ")),
    }
}

/// A fingerprint for an error message: long ones cut to 64 characters.
fn short(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Collectives need one dense, contiguous block of memory per tensor.
fn check_dense(t: &Tensor) -> Result<(), DistError> {
    if !t.defined() {
        return Err(DistError::Tensor(
            "collective on an undefined tensor".into(),
        ));
    }
    if !t.is_contiguous() {
        return Err(DistError::Tensor(
            "collective on a non-contiguous tensor (call .contiguous() first)".into(),
        ));
    }
    Ok(())
}

/// Consecutive runs of one dtype and device, each at most `BUCKET_BYTES` (a single larger
/// tensor is a bucket of its own).
fn buckets(grads: &[Tensor]) -> Vec<&[Tensor]> {
    let mut out = vec![];
    let mut start = 0;
    let mut bytes = 0usize;
    for (i, g) in grads.iter().enumerate() {
        let size = g.numel() * g.kind().elt_size_in_bytes();
        let same = i > start && {
            let first = &grads[start];
            first.kind() == g.kind() && first.device() == g.device()
        };
        if i > start && (!same || bytes + size > BUCKET_BYTES) {
            out.push(&grads[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < grads.len() {
        out.push(&grads[start..]);
    }
    out
}

/// The bucket's tensors, flattened and concatenated: [sum of numels].
fn flatten(bucket: &[Tensor]) -> Result<Tensor, DistError> {
    let flat: Vec<Tensor> = bucket.iter().map(|g| g.reshape([-1])).collect();
    Tensor::f_cat(&flat, 0).map_err(|e| DistError::Tensor(format!("flattening gradients: {e}")))
}

/// Copies the pieces of `flat` back into the bucket's tensors, in place.
fn unflatten(flat: &Tensor, bucket: &[Tensor]) -> Result<(), DistError> {
    let sizes: Vec<i64> = bucket.iter().map(|g| g.numel() as i64).collect();
    let pieces = flat.split_with_sizes(&sizes, 0);
    tch::no_grad(|| {
        for (g, piece) in bucket.iter().zip(&pieces) {
            g.shallow_clone()
                .f_copy_(&piece.view_as(g))
                .map_err(|e| DistError::Tensor(format!("writing averaged gradients back: {e}")))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const TORCHRUN: [(&str, &str); 5] = [
        ("RANK", "1"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "10.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];

    #[test]
    fn no_launcher_means_no_job() {
        assert_eq!(DistEnv::from_lookup(lookup(&[])).unwrap(), None);
        // A one-task Slurm job (every sbatch script) is not a distributed one.
        let one = [("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")];
        assert_eq!(DistEnv::from_lookup(lookup(&one)).unwrap(), None);
    }

    #[test]
    fn torchrun_variables() {
        let mut vars = TORCHRUN.to_vec();
        vars.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
        let env = DistEnv::from_lookup(lookup(&vars)).unwrap().unwrap();
        assert_eq!((env.rank, env.world_size, env.local_rank), (1, 4, 1));
        assert_eq!(
            (env.master_addr.as_str(), env.master_port),
            ("10.0.0.1", 29500)
        );
        assert_eq!(env.launcher, Launcher::Torchrun);
        assert!(env.agent_store);
        assert_eq!(env.loopback_master(), None);
    }

    #[test]
    fn slurm_variables_need_the_master() {
        let slurm = [
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "3"),
        ];
        let err = DistEnv::from_lookup(lookup(&slurm))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("MASTER_ADDR: not set"), "{err}");
        let mut vars = slurm.to_vec();
        vars.extend([("MASTER_ADDR", "localhost"), ("MASTER_PORT", "1234")]);
        let env = DistEnv::from_lookup(lookup(&vars)).unwrap().unwrap();
        assert_eq!((env.rank, env.world_size, env.local_rank), (3, 8, 3));
        assert_eq!(env.launcher, Launcher::Slurm);
        assert!(!env.agent_store);
        assert_eq!(env.loopback_master(), Some("127.0.0.1"));
    }

    #[test]
    fn bad_variables_name_the_variable() {
        let cases: [(&str, &str, &str); 4] = [
            ("RANK", "4", "RANK: 4 is not below WORLD_SIZE=4"),
            ("RANK", "one", "RANK: `one` is not a non-negative integer"),
            ("WORLD_SIZE", "0", "WORLD_SIZE: must be at least 1"),
            (
                "MASTER_PORT",
                "70000",
                "MASTER_PORT: `70000` is not a port (1-65535)",
            ),
        ];
        for (var, value, want) in cases {
            let vars: Vec<(&str, &str)> = TORCHRUN
                .iter()
                .map(|&(k, v)| if k == var { (k, value) } else { (k, v) })
                .collect();
            let err = DistEnv::from_lookup(lookup(&vars)).unwrap_err().to_string();
            assert_eq!(err, want);
        }
    }

    #[test]
    fn options_from_the_environment() {
        let opts = DistOptions::from_lookup(lookup(&[])).unwrap();
        assert_eq!(opts, DistOptions::default());
        let vars = [("VNCA_DIST_TIMEOUT", "2.5"), ("VNCA_DIST_BACKEND", "gloo")];
        let opts = DistOptions::from_lookup(lookup(&vars)).unwrap();
        assert_eq!(opts.timeout, Duration::from_millis(2500));
        assert_eq!(opts.backend, Some(Backend::Gloo));
        let err = DistOptions::from_lookup(lookup(&[("VNCA_DIST_TIMEOUT", "-1")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "VNCA_DIST_TIMEOUT: `-1` is not a positive number of seconds"
        );
        let err = DistOptions::from_lookup(lookup(&[("VNCA_DIST_BACKEND", "mpi")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "VNCA_DIST_BACKEND: unknown backend `mpi` (use gloo or nccl)"
        );
    }

    #[test]
    fn engine_messages_lose_location_and_advice() {
        let gloo = "[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection \
                    closed by peer [127.0.0.1]:42385. This is typically caused by a remote \
                    worker crashing.";
        assert_eq!(
            engine_message(gloo),
            "Connection closed by peer [127.0.0.1]:42385."
        );
        assert_eq!(
            engine_message("Operation timed out!"),
            "Operation timed out!"
        );
    }

    #[test]
    fn gloo_serves_the_cpu() {
        assert_eq!(Backend::for_device(Device::Cpu), Backend::Gloo);
    }

    #[test]
    fn buckets_split_by_dtype_and_size() {
        let a = Tensor::zeros([3, 4], (tch::Kind::Float, Device::Cpu));
        let b = Tensor::zeros([5], (tch::Kind::Float, Device::Cpu));
        let c = Tensor::zeros([2], (tch::Kind::Double, Device::Cpu));
        let big = Tensor::zeros([(BUCKET_BYTES / 4) as i64], (tch::Kind::Float, Device::Cpu));
        let grads = [a, b, c, big.shallow_clone(), big];
        let lens: Vec<usize> = buckets(&grads).iter().map(|b| b.len()).collect();
        assert_eq!(lens, [2, 1, 1, 1]);
    }

    #[test]
    fn flatten_and_unflatten_round_trip() {
        let a = Tensor::arange(12, (tch::Kind::Float, Device::Cpu)).reshape([3, 4]);
        let b = Tensor::arange(5, (tch::Kind::Float, Device::Cpu)) + 100.0;
        let bucket = [a.copy(), b.copy()];
        let flat = flatten(&bucket).unwrap(); // [17]
        assert_eq!(flat.size(), [17]);
        let out = [a.zeros_like(), b.zeros_like()];
        unflatten(&(flat * 2.0), &out).unwrap();
        assert!(out[0].equal(&(a * 2.0)) && out[1].equal(&(b * 2.0)));
    }
}
