#!/usr/bin/env python3
"""Validation NLL against CPU-hours, from a run's metrics.jsonl (README, Results).

CPU-hours = the training steps' summed wall-clock time (`step_seconds`, evaluation
excluded) times the intra-op threads the run used (--threads), up to each evaluation: on
a machine shared with other work this overstates the CPU time the run itself got.

Usage: tools/learning_curve.py RUN_DIR [--threads N] [--from STEP:N ...] [--every K]
                                       [--base STEP:HOURS]
  --threads N: CPU threads in all (threads x ranks) from the first step; --from STEP:N:
  N of them from update STEP on (a run resumed with other threads or ranks);
  --base STEP:HOURS: the run started (`train.init_from`) from a model that had taken
  STEP updates and HOURS CPU-hours; both are added to the rows, so the table goes on
  from that model's own;
  prints a Markdown table: updates, CPU-hours, validation NLL (the run's own bound and
  images, as logged), one row every K evaluations and the last one.
"""
import argparse
import json
import os


def step_and(value_type, name, example):
    """A parser of `STEP:VALUE` -> (STEP, VALUE), for argparse's `type=`."""
    def parse(text):
        try:
            step, value = text.split(":")
            return int(step), value_type(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not STEP:{name} (e.g. {example})")
    return parse


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--from", dest="changes", action="append", default=[], type=step_and(int, "N", "1000:2"),
                    metavar="STEP:N", help="N threads in all from update STEP on")
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--base", type=step_and(float, "HOURS", "56500:17.64"), default=(0, 0.0), metavar="STEP:HOURS",
                    help="updates and CPU-hours of the model the run started from")
    a = ap.parse_args()
    changes = sorted(a.changes)
    cpu_seconds, rows = 0.0, []
    with open(os.path.join(a.run, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r["kind"] == "train":
                threads = a.threads
                for step, n in changes:
                    if r["step"] >= step:
                        threads = n
                cpu_seconds += r["step_seconds"] * threads
            elif r["kind"] == "eval":
                rows.append((r["step"], cpu_seconds / 3600, r["nll_nats"], r["nll_stderr"],
                             r["iw_samples"], r["n_images"]))
    if not rows:
        raise SystemExit(f"{a.run}: no evaluation in metrics.jsonl yet")
    keep = [r for i, r in enumerate(rows) if i % a.every == a.every - 1 or i == len(rows) - 1]
    print(f"| updates | CPU-hours (wall clock x threads) | validation NLL (IWAE-{rows[0][4]}, first {rows[0][5]} images) |")
    print("|---|---|---|")
    base_step, base_hours = a.base
    for step, hours, nll, se, _, _ in keep:
        print(f"| {base_step + step:,} | {base_hours + hours:.2f} | {nll:.2f} ± {se:.2f} |")


if __name__ == "__main__":
    main()
