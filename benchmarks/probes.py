"""Batched probes versus a loop of scikit-learn LogisticRegression fits, same cached activations.

    .venv/bin/python benchmarks/probes.py --fda-run RUN_DIR [--thr-run RUN_DIR]

Both sides get identical standardized features (every residual point x position of the small
FDA model) and fit the same objective (multinomial logistic regression, L2 with C=1). Reports
the time ratio (median over alternated repeats), the accuracy agreement per probe, and the peak
memory of probing 10,000 examples with ``fit_probes`` on each small model. Writes
docs/benchmarks/probes.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TABLE_HEADER, command_line, compare, peak_memory_mb, report_peak_of, write_doc, write_json  # noqa: E402

from memlens import load_run  # noqa: E402
from memlens.analysis.common import cached_activations  # noqa: E402
from memlens.analysis.probes import (  # noqa: E402
    fit_probes, fit_softmax_probes, predict_probes, probe_points, probe_targets,
)
from memlens.analysis.runner import probe_groups, subset  # noqa: E402


def features(run, examples):
    hooks = [h for _, h in probe_points(run.model.cfg.n_layers)]
    acts = cached_activations(run.model, examples.tokens, hooks)
    return torch.stack([acts[h] for h in hooks], 1).flatten(1, 2).float()


def memory_probe(spec: str) -> None:
    """In a fresh process: load the run, take 10,000 clean examples, probe them (or not)."""
    run_dir, mode = spec.split("::")
    r = load_run(run_dir)
    variables = ["column_sum", "carry", "answer_digit"] if r.config.task == "fda" else [
        "bridge_entity", "answer_entity"]
    clean = r.splits["train_clean"]
    if "n_hops" in clean.intermediates:
        clean = clean[clean.intermediates["n_hops"] == 2]
    ten_k = subset(clean, 10_000, 0)
    def fit():
        if mode == "fit":
            fit_probes(r.model, ten_k[:8000], {"heldout": ten_k[8000:]}, variables, controls=True)

    report_peak_of(fit)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fda-run", required=True)
    parser.add_argument("--thr-run", default=None)
    parser.add_argument("--n-fit", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.memory_probe is not None:
        memory_probe(args.memory_probe)
        return

    run = load_run(args.fda_run)
    fit, groups = probe_groups(run, n_fit=args.n_fit, n_eval=1000)
    held = groups["clean_heldout"]
    targets = [t for v in ("column_sum", "carry") for t in probe_targets(fit, v)
               if t.n_classes > 1]
    x_fit, x_eval = features(run, fit), features(run, held)
    mean, std = x_fit.mean(0), x_fit.std(0).clamp(min=1e-6)
    x_fit, x_eval = (x_fit - mean) / std, (x_eval - mean) / std
    y_fit = torch.stack([t.values(fit) for t in targets], 1)
    y_eval = torch.stack([t.values(held) for t in targets], 1)
    n_classes = [int(y_fit[:, i].max()) + 1 for i in range(len(targets))]
    n_probes = x_fit.shape[1] * len(targets)
    print(f"{len(fit)} fit / {len(held)} held-out examples, {x_fit.shape[1]} point x position "
          f"slots x {len(targets)} targets = {n_probes} probes", flush=True)

    def batched():
        w, b = fit_softmax_probes(x_fit, y_fit, n_classes)
        return (predict_probes(x_eval, w, b, n_classes) == y_eval[:, None]).float().mean(0)

    def sklearn_loop():
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        acc = torch.zeros(x_fit.shape[1], len(targets))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for k in range(x_fit.shape[1]):
                for t in range(len(targets)):
                    clf = LogisticRegression(C=1.0, max_iter=200)
                    clf.fit(x_fit[:, k].numpy(), y_fit[:, t].numpy())
                    acc[k, t] = float((clf.predict(x_eval[:, k].numpy()) == y_eval[:, t].numpy()).mean())
        return acc

    comparison, acc_ours, acc_sklearn = compare(
        f"probes: {n_probes} probes, {len(fit)} examples (FDA small)", batched, sklearn_loop,
        repeats=args.repeats)
    diff = (acc_ours - acc_sklearn).abs()
    print(comparison.row(), flush=True)
    print(f"mean accuracy memlens {acc_ours.mean():.4f}, scikit-learn {acc_sklearn.mean():.4f}; "
          f"max |diff| {diff.max():.4f}, mean |diff| {diff.mean():.4f}", flush=True)

    memory_rows, memory = [], {}
    for label, run_dir in (("FDA small", args.fda_run), ("THR small", args.thr_run)):
        if not run_dir:
            continue
        added = peak_memory_mb(__file__, "--fda-run", args.fda_run, "--memory-probe", f"{run_dir}::fit")
        variables = "column_sum, carry, answer_digit" if "fda" in label.lower() else "bridge_entity, answer_entity"
        memory_rows.append(f"| {label} | 10,000 | {variables} | {added:.0f} |")
        memory[label] = added
        print(memory_rows[-1], flush=True)

    text = "\n".join([
        "# Probes: batched L-BFGS versus a scikit-learn loop",
        "",
        f"Command: `{command_line()}`",
        f"Machine: {platform.machine()}, torch threads 2. Same standardized features on both sides "
        "(every residual point x position), same objective (multinomial logistic regression, C=1).",
        "",
        TABLE_HEADER,
        comparison.row(),
        "",
        f"Accuracy on {len(held)} held-out clean examples, over all {n_probes} probes: memlens "
        f"mean {acc_ours.mean():.4f}, scikit-learn mean {acc_sklearn.mean():.4f}; per-probe "
        f"difference max {diff.max():.4f}, mean {diff.mean():.4f}.",
        "",
        "Peak resident memory that `fit_probes` adds on 10,000 clean examples (8,000 fit, 2,000 "
        "held out, controls included), sampled every 0.5 ms in a fresh process that has loaded "
        "the run and data:",
        "",
        "| model | examples | variables | peak MiB added by probing |",
        "|---|---|---|---|",
        *memory_rows,
        "",
    ])
    print(write_doc("probes.md", text))
    write_json("probes.json", {
        "command": command_line(), "machine": f"{platform.machine()}, torch threads 2",
        "headline": [{"benchmark": comparison.name, "figure": "speed-up vs scikit-learn loop",
                      "value": round(statistics.median(comparison.ratios), 2), "goal": None}],
        "mean_accuracy": {"memlens": float(acc_ours.mean()), "sklearn": float(acc_sklearn.mean())},
        "peak_added_mib_10k": memory,
        "seconds": {"memlens": comparison.memlens_seconds, "baseline": comparison.baseline_seconds}})


if __name__ == "__main__":
    main()
