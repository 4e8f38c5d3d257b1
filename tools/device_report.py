#!/usr/bin/env python3
"""Assembles the report of tools/device-check.sh: OUT/device-check.json and
OUT/device-check.md from the raw outputs in OUT (standard library only, so that it runs
with any python3, including the GPU machine's).

Usage: device_report.py OUT STEPS_FILE TOTAL_SECONDS
"""
import json
import os
import statistics
import sys


def load_json(path):
    """The last JSON line of a file, or None."""
    try:
        with open(path) as f:
            lines = [l for l in f.read().splitlines() if l.startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def peak_mib(path):
    try:
        with open(path) as f:
            vals = [int(v) for v in f.read().split() if v.strip().isdigit()]
        return max(vals) if vals else None
    except OSError:
        return None


def train_summary(path):
    try:
        with open(path) as f:
            recs = [json.loads(l) for l in f if l.strip()]
    except (OSError, ValueError):
        return None
    train = [r for r in recs if "step_seconds" in r]
    evals = [r for r in recs if "nll_nats" in r]
    if not train:
        return None
    # The first steps include cuDNN autotuning and allocator warm-up.
    times = [r["step_seconds"] for r in train[min(10, len(train) // 2):]]
    return {
        "steps": train[-1]["step"],
        "last_loss": train[-1]["loss"],
        "median_step_seconds": statistics.median(times),
        "val_nll_nats": evals[-1]["nll_nats"] if evals else None,
        "val_nll_stderr": evals[-1]["nll_stderr"] if evals else None,
        "val_iw_samples": evals[-1]["iw_samples"] if evals else None,
        "val_images": evals[-1]["n_images"] if evals else None,
    }


def main():
    out, steps_file, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
    steps = {}
    if os.path.exists(steps_file):
        for line in open(steps_file):
            name, rc, secs = line.split()
            steps[name] = {"rc": rc, "seconds": int(secs)}
    env = open(os.path.join(out, "environment.txt")).read() if os.path.exists(os.path.join(out, "environment.txt")) else ""
    report = {"total_seconds": total, "steps": steps, "environment": env, "check": {}, "bench": {}, "train": {}}
    for p in ["fp32", "tf32", "bf16"]:
        c = load_json(os.path.join(out, f"check-{p}.out"))
        if c:
            report["check"][p] = c
        b = load_json(os.path.join(out, f"bench-{p}.out"))
        if b:
            b["peak_gpu_mib"] = peak_mib(os.path.join(out, f"bench-{p}.gpumem"))
            report["bench"][p] = b
        t = train_summary(os.path.join(out, f"train-{p}.metrics.jsonl"))
        if t:
            t["peak_gpu_mib"] = peak_mib(os.path.join(out, f"train-{p}.gpumem"))
            report["train"][p] = t
    report["eval_iwae"] = load_json(os.path.join(out, "eval-iwae.out"))
    tr = report["train"]
    if "fp32" in tr and "bf16" in tr and tr["fp32"]["val_nll_nats"] is not None and tr["bf16"]["val_nll_nats"] is not None:
        report["bf16_minus_fp32_val_nll"] = tr["bf16"]["val_nll_nats"] - tr["fp32"]["val_nll_nats"]
    with open(os.path.join(out, "device-check.json"), "w") as f:
        json.dump(report, f, indent=1)

    md = ["# device check", "", "```", env.strip(), "```", "", f"total {total} s", "", "| step | exit | seconds |", "|---|---|---|"]
    md += [f"| {n} | {s['rc']} | {s['seconds']} |" for n, s in steps.items()]
    md += ["", "## (a) numerics against the PyTorch fixtures", ""]
    for p, c in report["check"].items():
        failed = [r for r in c["rows"] if not r["ok"]]
        worst = max(c["rows"], key=lambda r: r["rel_err"] / r["tol"])
        md.append(f"- {p}: {len(c['rows']) - len(failed)} passed, {len(failed)} failed; closest to its tolerance: "
                  f"{worst['name']} {worst['rel_err']:.2e} (tol {worst['tol']:.0e})")
        md += [f"  - FAILED {r['name']}: {r['rel_err']:.2e} > {r['tol']:.0e}" for r in failed]
    md += ["", "## (b), (d) vnca bench against the PyTorch mirror, same device", "",
           "| precision | train step ours | mirror | ratio | IWAE-K images/s ours | mirror | ratio | hot loop GFLOP/s | peak GPU MiB (whole bench) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for p, b in report["bench"].items():
        fmt = lambda v, f: "-" if v is None else format(v, f)
        mirror = b.get("train_step_mirror") or {}
        md.append(f"| {p} | {b['train_step_ours']['median'] * 1e3:.1f} ms | {fmt(mirror.get('median') and mirror['median'] * 1e3, '.1f')} ms | "
                  f"{fmt(b.get('train_step_ratio'), '.2f')}x | {b['iwae_images_per_s_ours']:.2f} | {fmt(b.get('iwae_images_per_s_mirror'), '.2f')} | "
                  f"{fmt(b.get('iwae_ratio'), '.2f')}x | {b['hot_loop_gflops']:.0f} | {fmt(b.get('peak_gpu_mib'), 'd')} |")
    md += ["", "## (c) short training", "", "| precision | steps | median step | last loss | validation NLL | peak GPU MiB |", "|---|---|---|---|---|---|"]
    for p, t in report["train"].items():
        nll = "-" if t["val_nll_nats"] is None else f"{t['val_nll_nats']:.2f} ± {t['val_nll_stderr']:.2f} (IWAE-{t['val_iw_samples']}, {t['val_images']} images)"
        md.append(f"| {p} | {t['steps']} | {t['median_step_seconds'] * 1e3:.1f} ms | {t['last_loss']:.2f} | {nll} | {t['peak_gpu_mib'] if t['peak_gpu_mib'] is not None else '-'} |")
    if "bf16_minus_fp32_val_nll" in report:
        md.append(f"\nbf16 - fp32 validation NLL: {report['bf16_minus_fp32_val_nll']:+.2f} nats (target: within 1 nat)")
    e = report["eval_iwae"]
    if e:
        md += ["", "## (d) vnca eval IWAE-K of the fp32 run", "",
               f"IWAE-{e['iw_samples']} on {e['n_images']} {e['split']} images: {e['nll_nats']:.2f} ± {e['nll_stderr']:.2f} nats, "
               f"{e['seconds']:.1f} s = {e['n_images'] / e['seconds']:.1f} images/s"]
    with open(os.path.join(out, "device-check.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    bad = [n for n, s in steps.items() if s["rc"] != "0"]
    if bad:
        print(f"\nsteps that failed or were skipped: {', '.join(bad)}")
    fails = [p for p, c in report["check"].items() if not c["passed"]]
    sys.exit(1 if bad or fails else 0)


if __name__ == "__main__":
    main()
