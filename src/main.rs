//! The `vnca` command: parses the command line and hands it to the library.
use clap::Parser;
use std::io::Write;

fn main() {
    let cli = vnca::cli::Cli::parse();
    if let Err(e) = vnca::cli::run(cli) {
        if let Some(stop) = e.downcast_ref::<vnca::cli::Interrupted>() {
            if let Some(report) = &stop.0 {
                say(&format!("interrupted: {report}"));
            }
            std::process::exit(130);
        }
        say(&format!("error: {}", one_line(&e)));
        std::process::exit(1);
    }
}

/// One line to stderr in one write: `eprintln!` writes its pieces separately, and the
/// ranks of a job that share torchrun's stderr and fail together interleaved them.
fn say(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// The error and its causes joined by ": " like `{:#}`, except that a cause is left out
/// when the text before already ends with it: our error types show their I/O cause
/// themselves (`path`: No such file or directory), which `{:#}` would print twice.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if msg.is_empty() {
            msg = text;
        } else if !msg.ends_with(&text) {
            msg = format!("{msg}: {text}");
        }
    }
    msg
}
