//! `vnca data`: binarize MNIST, fetch and verify the Larochelle files, inspect a data file.
use crate::data;
use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Binarize the canonical MNIST IDX files into our packed binarized MNIST.
    BinarizeMnist {
        /// Directory with train-images-idx3-ubyte(.gz) and friends.
        #[arg(long, default_value = "../shared/data/mnist")]
        mnist_dir: PathBuf,
        #[arg(long, default_value = "data/binarized_mnist.vbm.gz")]
        out: PathBuf,
        #[arg(long, default_value_t = data::binarize::DEFAULT_SEED)]
        seed: u64,
    },
    /// Download Larochelle & Murray's binarized MNIST .amat files and verify their SHA-256.
    FetchLarochelle {
        #[arg(long, default_value = "data/larochelle")]
        dir: PathBuf,
    },
    /// Print the split sizes of a data file or directory.
    Inspect { path: PathBuf },
}

pub(super) fn cmd_data(d: DataCommand) -> anyhow::Result<()> {
    match d {
        DataCommand::BinarizeMnist {
            mnist_dir,
            out,
            seed,
        } => {
            let (train, test) = data::idx::read_mnist_dir(&mnist_dir)?;
            let bin = data::binarize::binarize_mnist(&train, &test, seed);
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create `{}`", parent.display()))?;
            }
            data::packed::write_packed(&out, &bin)?;
            let sha = data::download::sha256_file(&out)?;
            println!(
                "wrote {} (train {}, valid {}, test {}; seed {seed}); sha256 {sha}",
                out.display(),
                bin.train.len(),
                bin.valid.len(),
                bin.test.len()
            );
        }
        DataCommand::FetchLarochelle { dir } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create `{}`", dir.display()))?;
            data::download::fetch_larochelle(&dir, &mut |name, done, total| {
                eprint!(
                    "\r{name}: {done}/{} bytes",
                    total.map_or("?".into(), |t| t.to_string())
                );
            })?;
            eprintln!("\nverified the three files in {}", dir.display());
        }
        DataCommand::Inspect { path } => {
            let d = data::load_binarized_mnist(&path)?;
            for (name, s) in [("train", &d.train), ("valid", &d.valid), ("test", &d.test)] {
                let ones: usize = s.images.iter().map(|&v| v as usize).sum();
                println!(
                    "{name:6} {:6} images {}x{}, labels: {}, mean pixel {:.4}",
                    s.len(),
                    s.rows,
                    s.cols,
                    if s.labels.is_some() { "yes" } else { "no" },
                    ones as f64 / s.images.len().max(1) as f64
                );
            }
        }
    }
    Ok(())
}
