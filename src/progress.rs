//! The one progress-bar style of every long command (`train`, `eval`, ...): elapsed time,
//! bar, position, rate, ETA and a message (the running loss, the bound being computed).
use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `total` `unit`s, hidden when `hidden` (tests, `--quiet`, `--json`).
pub fn bar(total: u64, unit: &str, hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let template = format!(
        "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}} {{msg}}"
    );
    bar.set_style(
        ProgressStyle::with_template(&template)
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}
