//! `vnca serve`.
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A run's checkpoint (repeat for several models to choose from in the page).
    /// Default: the shipped models in the crate's models/ directory.
    #[arg(long)]
    pub checkpoint: Vec<PathBuf>,
    /// Port (0: any free one; the URL is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on; anything but loopback exposes the page to the network.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Samples shown when a page opens.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Most samples a page may ask for.
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// Most sessions (browser tabs) at once; more get an error.
    #[arg(long, default_value_t = 16)]
    pub max_sessions: usize,
}

pub(super) fn cmd_serve(a: ServeArgs, device: tch::Device) -> anyhow::Result<()> {
    use crate::serve;
    let paths = if a.checkpoint.is_empty() {
        let d = serve::default_checkpoint();
        anyhow::ensure!(
            d.is_file(),
            "no --checkpoint given and the default model `{}` is missing; pass --checkpoint PATH \
             (e.g. runs/mnist-doubling-small/best.safetensors, written by `vnca train`)",
            d.display()
        );
        serve::default_checkpoints()
    } else {
        a.checkpoint.clone()
    };
    anyhow::ensure!(
        (1..=65535).contains(&a.max_batch),
        "--max-batch must be in [1, 65535]"
    );
    anyhow::ensure!(
        a.batch >= 1 && a.batch <= a.max_batch,
        "--batch must be in [1, --max-batch = {}]",
        a.max_batch
    );
    anyhow::ensure!(a.max_sessions >= 1, "--max-sessions must be at least 1");
    let models = serve::load_models(&paths, device)?;
    for (m, p) in models.iter().zip(&paths) {
        eprintln!("model `{}` ({}) from {}", m.name, m.cfg.name, p.display());
    }
    let opts = serve::ServeOptions {
        session: serve::SessionOptions {
            device,
            default_batch: a.batch,
            max_batch: a.max_batch,
            ..Default::default()
        },
        max_sessions: a.max_sessions,
    };
    let router = serve::router(models, opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            eprintln!(
                "warning: listening on {addr}: anyone who can reach this address can use the page"
            );
        }
        println!("serving http://{addr}/ (Ctrl-C stops)");
        tokio::select! {
            r = serve::serve(listener, router) => r.context("the server failed"),
            _ = tokio::signal::ctrl_c() => {
                eprintln!("stopped");
                Ok(())
            }
        }
    })
}
