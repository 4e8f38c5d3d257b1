//! The `vnca` command: parses the command line and hands it to the library.
use clap::Parser;

fn main() {
    let cli = vnca::cli::Cli::parse();
    if let Err(e) = vnca::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
