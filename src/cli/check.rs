//! `vnca check`: the numerics self-test against the PyTorch fixtures (src/check.rs).
use crate::check;
use crate::precision::Precision;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// fp32, tf32 or bf16; tolerances follow (src/check.rs).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// The fixture folder (default: tests/fixtures here, beside the binary's repository,
    /// or of the source tree).
    #[arg(long)]
    pub fixtures: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn cmd_check(a: CheckArgs, device: tch::Device) -> anyhow::Result<()> {
    let fixtures = match a.fixtures {
        Some(f) => f,
        None => check::find_repo_path("tests/fixtures").ok_or_else(|| {
            anyhow::anyhow!("no tests/fixtures folder found; pass --fixtures DIR")
        })?,
    };
    let r = check::run(&fixtures, device, a.precision)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print!("{}", r.table());
    }
    let failed = r.rows.iter().filter(|r| !r.ok).count();
    anyhow::ensure!(
        r.passed,
        "{failed} of {} comparisons outside their tolerance",
        r.rows.len()
    );
    Ok(())
}
