//! Data-parallel engine (src/dist.rs over c10d's TCPStore and Gloo) end to end: several
//! `vnca dist-selftest` processes over loopback, started with the variables torchrun sets
//! (and once by torchrun itself). Each rank checks its own results bit for bit and prints
//! them as JSON lines; these tests check them again, and check that a killed, hung or
//! mismatched rank ends the job within the timeout with one `error:` line naming it.
//!
//! The tests take one lock: each starts 2-3 processes that load libtorch, and their
//! deadlines are about wall time, which parallel tests on a small machine would stretch.
mod common;

use common::launch::{free_port, rank_command, serial, torchrun, vnca};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One rank: its process, the JSON lines it printed so far, and its stderr at the end.
struct Rank {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Rank {
    fn events(&self, name: &str) -> Vec<Value> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|v| v["event"] == name)
            .cloned()
            .collect()
    }

    /// Waits until the rank printed `event` (panics after `limit`).
    fn wait_for(&self, event: &str, limit: Duration) {
        let start = Instant::now();
        while self.events(event).is_empty() {
            assert!(
                start.elapsed() < limit,
                "no `{event}` event within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Exit status and stderr, or a panic if it is still running after `limit`.
    fn finish(&mut self, limit: Duration) -> (ExitStatus, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("rank still running {limit:?} after it should have stopped");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, err)
    }
}

impl Drop for Rank {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts rank `rank` of `world` with torchrun's variables and `VNCA_DIST_TIMEOUT`.
fn spawn_rank(rank: usize, world: usize, port: u16, timeout_s: u32, args: &[&str]) -> Rank {
    let mut child = rank_command(rank, world, port, timeout_s)
        .args(["--threads", "1", "dist-selftest"])
        .args(args)
        .spawn()
        .expect("start vnca dist-selftest");
    let lines = Arc::new(Mutex::new(vec![]));
    let out = child.stdout.take().unwrap();
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!("stdout line is not JSON ({e}): {line}");
            });
            sink.lock().unwrap().push(v);
        }
    });
    Rank {
        child,
        lines,
        reader: Some(reader),
    }
}

fn spawn_job(world: usize, timeout_s: u32, args: impl Fn(usize) -> Vec<String>) -> Vec<Rank> {
    let port = free_port();
    (0..world)
        .map(|r| {
            let a = args(r);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            spawn_rank(r, world, port, timeout_s, &a)
        })
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The one stderr line of a rank that failed; panics on more lines or none.
fn one_error_line(status: ExitStatus, stderr: &str) -> String {
    assert_eq!(status.code(), Some(1), "exit status; stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    lines[0].to_owned()
}

#[test]
fn all_reduce_broadcast_and_gradient_means_are_exact_on_every_rank() {
    let _serial = serial();
    let world = 3;
    let steps = 3;
    let mut ranks = spawn_job(world, 60, |_| {
        vec![
            "--steps".into(),
            steps.to_string(),
            "--elems".into(),
            "1000".into(),
        ]
    });
    for (r, rank) in ranks.iter_mut().enumerate() {
        let (status, stderr) = rank.finish(Duration::from_secs(120));
        assert!(status.success(), "rank {r} failed: {stderr}");
        let start = &rank.events("start")[0];
        assert_eq!(
            (start["rank"].as_u64(), start["world"].as_u64()),
            (Some(r as u64), Some(3))
        );
        assert_eq!(start["backend"], "gloo");
        // Broadcast from rank 0 overwrites the others' 10 + rank with 10, from rank 2 with 12.
        let bc = rank.events("broadcast");
        assert_eq!(bc.len(), 2);
        assert_eq!(floats(&bc[0]["values"]), [10.0; 4]);
        assert_eq!(floats(&bc[1]["values"]), [12.0; 4]);
        // Gradient k of rank r is (r + 1)(k + 1); the mean over 3 ranks is 2 (k + 1).
        assert_eq!(floats(&rank.events("grads")[0]["values"]), [2.0, 4.0, 6.0]);
        // Step s, element i: rank r gives (r + 1)(i mod 7 + s); the mean is 2 (i + s).
        let done_steps = rank.events("step");
        assert_eq!(done_steps.len(), steps);
        for (k, ev) in done_steps.iter().enumerate() {
            let s = (k + 1) as f64;
            let want: Vec<f64> = (0..4).map(|i| 2.0 * (i as f64 + s)).collect();
            assert_eq!(floats(&ev["head"]), want, "rank {r} step {}", k + 1);
        }
        assert_eq!(rank.events("done").len(), 1);
    }
}

#[test]
fn ranks_with_different_fingerprints_refuse_to_start_naming_the_rank() {
    let _serial = serial();
    let mut ranks = spawn_job(3, 60, |r| {
        let fp = if r == 1 { "config-b" } else { "config-a" };
        vec!["--fingerprint".into(), fp.into()]
    });
    for rank in ranks.iter_mut() {
        let (status, stderr) = rank.finish(Duration::from_secs(120));
        assert_eq!(
            one_error_line(status, &stderr),
            "error: ranks differ in selftest fingerprint, refusing to start: \
             rank 1 has `config-b`, rank 0 has `config-a`"
        );
        assert!(rank.events("broadcast").is_empty(), "a mismatched job ran");
    }
}

/// Starts a 3-rank job of many paced steps, SIGKILLs `victim` once it is under way, and
/// checks that each survivor exits within the timeout plus a margin, with one error line
/// that contains `expect`. The peers see the closed connections at once; the timeout is
/// only the bound.
fn kill_mid_job(victim: usize, expect: &str) {
    let timeout_s = 10;
    let mut ranks = spawn_job(3, timeout_s, |_| {
        vec![
            "--steps".into(),
            "100000".into(),
            "--step-ms".into(),
            "50".into(),
        ]
    });
    for rank in &ranks {
        rank.wait_for("step", Duration::from_secs(120));
    }
    ranks[victim].child.kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    for (r, rank) in ranks.iter_mut().enumerate() {
        if r == victim {
            continue;
        }
        let (status, stderr) = rank.finish(Duration::from_secs(timeout_s as u64 + 10));
        let line = one_error_line(status, &stderr);
        assert!(
            line.contains(&format!("failed on rank {r}: {expect}")),
            "{line}"
        );
        let took = killed.elapsed();
        assert!(
            took < Duration::from_secs(timeout_s as u64 + 5),
            "{took:?}: {line}"
        );
    }
}

#[test]
fn a_killed_rank_ends_the_job_within_the_timeout_naming_it() {
    let _serial = serial();
    kill_mid_job(1, "rank 1 died or stopped responding");
}

#[test]
fn killing_rank_0_which_hosts_the_store_is_named() {
    let _serial = serial();
    kill_mid_job(0, "rank 0, which hosts the store at 127.0.0.1:");
}

#[test]
fn a_hung_rank_is_named_once_the_timeout_runs_out() {
    let _serial = serial();
    let timeout_s = 3;
    let mut ranks = spawn_job(3, timeout_s, |_| {
        let a = "--steps 100000 --step-ms 20 --hang-rank 2 --hang-step 3";
        a.split(' ').map(String::from).collect()
    });
    ranks[2].wait_for("hang", Duration::from_secs(120));
    let hung = Instant::now();
    for (r, rank) in ranks.iter_mut().enumerate().take(2) {
        let (status, stderr) = rank.finish(Duration::from_secs(timeout_s as u64 + 10));
        let line = one_error_line(status, &stderr);
        assert!(
            line.contains(&format!(
                "failed on rank {r}: rank 2 hangs or is slow: alive but behind"
            )),
            "{line}"
        );
        assert!(line.contains("Operation timed out"), "{line}");
        // Not before the timeout (rank 2 is alive), and not long after it.
        let took = hung.elapsed();
        assert!(
            took >= Duration::from_secs(timeout_s as u64)
                && took < Duration::from_secs(timeout_s as u64 + 5),
            "{took:?}"
        );
    }
}

#[test]
fn torchrun_launches_the_ranks() {
    let _serial = serial();
    let out = torchrun(2)
        .args(["--threads", "1", "dist-selftest", "--steps", "2"])
        .env("VNCA_DIST_TIMEOUT", "60")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "torchrun failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut done: Vec<u64> = events
        .iter()
        .filter(|v| v["event"] == "done")
        .map(|v| v["rank"].as_u64().unwrap())
        .collect();
    done.sort();
    assert_eq!(done, [0, 1]);
    // torchrun's agent hosts the store; both ranks join it as clients.
    for v in events.iter().filter(|v| v["event"] == "start") {
        assert_eq!(v["world"], 2);
        assert_eq!(v["agent_store"], true);
    }
    // Step 1's mean of (r + 1)(i mod 7 + 1) over 2 ranks: 1.5 (i + 1).
    for v in events
        .iter()
        .filter(|v| v["event"] == "step" && v["step"] == 1)
    {
        assert_eq!(floats(&v["head"]), [1.5, 3.0, 4.5, 6.0]);
    }
}

#[test]
fn bad_launcher_variables_are_one_error_line() {
    let _serial = serial();
    let run = |vars: &[(&str, &str)]| {
        let out = vnca()
            .envs(vars.iter().copied())
            .args(["dist-selftest"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        one_error_line(out.status, &stderr)
    };
    assert_eq!(
        run(&[]),
        "error: not a rank of a job: set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT \
         (or start it with torchrun)"
    );
    assert_eq!(
        run(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "127.0.0.1")
        ]),
        "error: MASTER_PORT: not set, but RANK is set, so this is one rank of a torchrun job"
    );
    assert_eq!(
        run(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")]),
        "error: MASTER_ADDR: not set, but SLURM_PROCID is set in a multi-task Slurm step \
         (export MASTER_ADDR as the first node's address and MASTER_PORT as a free port)"
    );
    let port = free_port().to_string();
    let alone = [
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", port.as_str()),
        ("VNCA_DIST_BACKEND", "nccl"),
    ];
    let want = if vnca::dist::nccl_built() {
        "error: the nccl backend needs CUDA tensors; use --device cuda or the gloo backend"
    } else {
        "error: this vnca was built without NCCL (build.rs found no complete CUDA toolkit \
         headers and nccl.h; see compile_dist_shim there); use the gloo backend"
    };
    assert_eq!(run(&alone), want);
}

#[test]
fn a_rank_that_never_arrives_ends_the_rendezvous_within_the_timeout() {
    let _serial = serial();
    let mut alone = spawn_rank(0, 2, free_port(), 3, &[]);
    let start = Instant::now();
    let (status, stderr) = alone.finish(Duration::from_secs(15));
    let line = one_error_line(status, &stderr);
    assert!(
        line.starts_with("error: rank 0: rendezvous through the store at 127.0.0.1:")
            && line.ends_with("1/2 clients joined."),
        "{line}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}
