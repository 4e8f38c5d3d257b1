//! `vnca dist-selftest` (hidden): one rank of a data-parallel self-test, started N times
//! by torchrun, Slurm or tests/dist.rs. It checks the engine end to end with values whose
//! results are exact in f32, prints one JSON line per event on stdout, and can time the
//! all-reduce of a gradient-sized buffer (docs/BENCHMARKS.md, Data-parallel).
use crate::dist::Dist;
use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

#[derive(Args, Debug)]
pub struct DistSelftestArgs {
    /// Elements of the all-reduce buffer (f32).
    #[arg(long, default_value_t = 1000)]
    pub elems: i64,
    /// Checked all-reduces to run.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Pause before each step, in ms (gives a test time to kill a rank mid-job).
    #[arg(long, default_value_t = 0)]
    pub step_ms: u64,
    /// This rank's fingerprint; ranks that differ from rank 0 refuse to start.
    #[arg(long, default_value = "selftest")]
    pub fingerprint: String,
    /// This rank stops before the all-reduce of --hang-step and never returns (a hang).
    #[arg(long)]
    pub hang_rank: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub hang_step: usize,
    /// Instead of the checks, time --repeat all-reduces of --elems floats.
    #[arg(long)]
    pub bench: bool,
    #[arg(long, default_value_t = 10)]
    pub repeat: usize,
}

fn emit(line: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Rank r's contribution at element i of step s: (r + 1) (i mod 7 + s). Sums of small
/// integers and their halves are exact in f32, so the mean must match bit for bit.
fn contribution(rank: usize, elems: i64, step: usize) -> Tensor {
    let base = Tensor::arange(elems, (Kind::Float, Device::Cpu)).remainder(7) + step as f64; // [elems]
    base * (rank + 1) as f64
}

/// The exact mean of `contribution` over `world` ranks: (i mod 7 + s) (world + 1) / 2.
fn expected_mean(world: usize, elems: i64, step: usize) -> Tensor {
    contribution(0, elems, step) * ((world + 1) as f64 / 2.0)
}

/// The first element where `got` differs from `want`, as an error.
fn same(what: &str, got: &Tensor, want: &Tensor) -> anyhow::Result<()> {
    if got.equal(want) {
        return Ok(());
    }
    let diff = got.ne_tensor(want).nonzero(); // [n, 1]
    let i = diff.int64_value(&[0, 0]);
    bail!(
        "{what}: element {i} is {} where {} was expected",
        got.reshape([-1]).double_value(&[i]),
        want.reshape([-1]).double_value(&[i])
    )
}

fn head(t: &Tensor) -> Vec<f64> {
    let n = t.numel().min(4) as i64;
    (0..n).map(|i| t.reshape([-1]).double_value(&[i])).collect()
}

pub fn cmd_dist_selftest(a: DistSelftestArgs, device: Device) -> anyhow::Result<()> {
    let Some(dist) = Dist::from_env(device)? else {
        bail!("not a rank of a job: set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (or start it with torchrun)");
    };
    let (rank, world) = (dist.rank(), dist.world_size());
    let device = dist.device(device);
    emit(json!({"event": "start", "rank": rank, "world": world,
                "backend": dist.backend().name(), "device": format!("{device:?}"),
                "agent_store": dist.env().agent_store}));
    dist.check_same("selftest fingerprint", &a.fingerprint)?;
    if a.bench {
        return bench(&dist, &a, device);
    }

    // Broadcast: every rank ends with the root's values, from rank 0 and from the last rank.
    for root in [0, world - 1] {
        // Requires grad, as the model parameters the training loop broadcasts do.
        let t =
            Tensor::full([5], (rank + 10) as f64, (Kind::Float, device)).set_requires_grad(true);
        dist.broadcast(&t, root)?;
        same(
            "broadcast",
            &t,
            &Tensor::full([5], (root + 10) as f64, (Kind::Float, device)),
        )?;
        emit(json!({"event": "broadcast", "rank": rank, "root": root, "values": head(&t)}));
    }

    // Gradients of several shapes and two dtypes, averaged through the bucketed helper.
    let shapes: [&[i64]; 3] = [&[3, 4], &[5], &[2, 2, 2]];
    let grads: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let kind = if k == 1 { Kind::Double } else { Kind::Float };
            Tensor::full(*s, ((rank + 1) * (k + 1)) as f64, (kind, device))
        })
        .collect();
    dist.all_reduce_mean_grads(&grads)?;
    for (k, g) in grads.iter().enumerate() {
        let want = ((k + 1) * (world + 1)) as f64 / 2.0;
        same("gradient mean", g, &g.full_like(want))?;
    }
    emit(json!({"event": "grads", "rank": rank,
                "values": grads.iter().map(|g| head(g)[0]).collect::<Vec<_>>()}));

    for step in 1..=a.steps {
        std::thread::sleep(Duration::from_millis(a.step_ms));
        if a.hang_rank == Some(rank) && step == a.hang_step {
            emit(json!({"event": "hang", "rank": rank, "step": step}));
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        let t = contribution(rank, a.elems, step).to_device(device);
        dist.all_reduce_mean(&t)?;
        let want = expected_mean(world, a.elems, step).to_device(device);
        same(&format!("all-reduce mean at step {step}"), &t, &want)?;
        emit(json!({"event": "step", "rank": rank, "step": step, "head": head(&t)}));
    }
    dist.barrier()?;
    emit(json!({"event": "done", "rank": rank, "world": world}));
    Ok(())
}

/// Median wall time of one all-reduce (sum) of `--elems` floats, after one warm-up.
fn bench(dist: &Dist, a: &DistSelftestArgs, device: Device) -> anyhow::Result<()> {
    let t = Tensor::ones([a.elems], (Kind::Float, device)); // [elems]
    dist.all_reduce_sum(&t).context("warm-up all-reduce")?;
    let mut ms = Vec::with_capacity(a.repeat);
    for _ in 0..a.repeat.max(1) {
        dist.barrier()?;
        let start = Instant::now();
        dist.all_reduce_sum(&t)?;
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let mut sorted = ms.clone();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = (sorted[(n - 1) / 2] + sorted[n / 2]) / 2.0;
    emit(
        json!({"event": "bench", "rank": dist.rank(), "world": dist.world_size(),
                "backend": dist.backend().name(), "elems": a.elems, "bytes": a.elems * 4,
                "median_ms": median, "times_ms": ms}),
    );
    Ok(())
}
