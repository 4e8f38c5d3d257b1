//! `--device cpu|cuda|cuda:N` and `--threads N`, shared by every command.
use tch::Device;

/// Parse a device name; `cuda` asks for GPU 0. Fails clearly when CUDA is asked for
/// but libtorch sees no GPU, instead of silently running on the CPU.
pub fn parse_device(s: &str) -> anyhow::Result<Device> {
    let dev = match s {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Device::Cuda(i),
            _ => anyhow::bail!("unknown device `{s}` (use cpu, cuda or cuda:N)"),
        },
    };
    if let Device::Cuda(i) = dev {
        let n = tch::Cuda::device_count() as usize;
        if i >= n {
            anyhow::bail!("device `{s}` requested but libtorch sees {n} CUDA device(s)");
        }
    }
    Ok(dev)
}

/// Intra-op threads: the given count, else the machine's cores.
pub fn set_threads(threads: Option<usize>) -> usize {
    // Several ranks of a data-parallel job on one machine share its cores (torchrun sets
    // LOCAL_WORLD_SIZE; under Slurm, pass --threads).
    let ranks_here = std::env::var("LOCAL_WORLD_SIZE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1);
    let n = threads.unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / ranks_here).max(1)
    });
    tch::set_num_threads(n as i32);
    n
}
