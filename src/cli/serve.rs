//! `vnca serve`.
use crate::shipped::ModelSource;
use anyhow::Context;
use clap::Args;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A run's checkpoint, or the name of a shipped model (repeat for several models to
    /// choose from in the page). Default: every shipped model (they are built into the
    /// binary).
    #[arg(long, value_name = "PATH|NAME")]
    pub checkpoint: Vec<ModelSource>,
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
    let sources = if a.checkpoint.is_empty() {
        ModelSource::all_shipped()
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
    let models = serve::load_models(&sources, device)?;
    for (m, src) in models.iter().zip(&sources) {
        let from = if src.path().is_some() { "" } else { "shipped " };
        eprintln!("model `{}` ({}): {from}{src}", m.name, m.cfg.name);
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
