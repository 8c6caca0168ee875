"""``memlens report``: one self-contained HTML page for one or more run directories.

The page opens offline from a ``file://`` URL: plotly.js and the circuitsvis bundle are inlined
once each. At the top, the claims scorecard computed from the runs given; then, per run, the
training dynamics, every analysis result found (each with a caption that says what to look
for), the attention of a clean and a noisy example, and for the analyses that are missing or
unreadable, the command that produces them.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from collections.abc import Callable

import pandas as pd

from memlens.analysis.common import AnalysisError
from memlens.analysis.runner import load_analysis
from memlens.io import atomic_write_text
from memlens.training.run import CONFIG, RunDirError, read_header, read_metrics, read_summary

CAPTIONS = {
    "dynamics": "Look for test accuracy rising to its plateau before the noisy memorized accuracy "
                "climbs (generalize first, memorize later), while the noisy examples' true-label "
                "accuracy first rises with test accuracy, then falls as the noise is memorized.",
    "behaviour": "Per example at the end of training: noisy examples answered with their noisy "
                 "label (recall) and with their true label, test accuracy beside the paired "
                 "noise-free baseline, and held-out neighbours of noisy examples answered with the "
                 "noisy label (a leak) or their own (claim 2).",
    "logit_lens": "Where in depth the answer becomes readable: the noisy examples' true label is "
                  "often decodable in middle layers before the final layers switch to the memorized "
                  "noisy label. The title names the takeover point at the first answer slot (claim 3c).",
    "probes": "Each intermediate probed at its best eligible site (where a noisy example's "
              "activations can differ from a clean one's and no answer token reveals the "
              "intermediate, before the noisy label takes over), chosen on a separate clean split. "
              "Bars close to the held-out clean bar and well above the control (the largest of "
              "majority, shuffled targets and the untrained model) mean memorized examples still "
              "compute the intermediate (claim 3a).",
    "patching": "For each intermediate: recall (noisy) or accuracy (clean) after patching the "
                "residual stream from a preserving counterfactual minus from a changing one that "
                "edits the same tokens. Red cells: the intermediate's value matters there beyond the "
                "input's identity; x marks the site chosen on clean examples (claims 4a, 5a).",
    "patch_loss_by_run": "Each run's noisy recall and clean accuracy lost when every "
                         "intermediate's site is patched from a changing and from a preserving "
                         "counterfactual of the same tokens (mean over the intermediates claim 4 scores). Reasoning "
                         "through the intermediate: the changing bar is well above the preserving "
                         "one; a look-up keyed on the input (the pure memorizer): both bars alike "
                         "(claims 4a, 5a).",
    "interventions": "INLP removes the intermediate at its site until a probe reads it no better "
                     "than the majority class (if it can), beside 20 random subspaces and a "
                     "shuffled-target INLP of the same rank (claim 4d, a diagnostic).",
    "encoding": "How much each input's resampling lowers the label's log-probability. A "
                "description only: no single token identifies an example, so any memorizer keyed "
                "on the whole input spreads it (claim 5 is scored from matched counterfactuals).",
    "neurons": "Last-layer neuron-positions: how far each one's activation on noisy examples "
               "departs from what its best feature (an arithmetic heuristic, or the visible answer "
               "token) predicts for the same input, against the same on held-out clean examples, "
               "in units of its clean standard deviation. The table resets the outliers (chosen on "
               "one half of the noisy examples) on the other half, beside as many other heuristic "
               "and random neurons (claim 6).",
    "fourier": "Each neuron's inverse participation ratio (IPR) over the Fourier basis of the "
               "cyclic inputs: periodic (generalizing) neurons score high. Pruning the lowest-IPR "
               "neurons, beside as many random ones: after Doshi et al. 2024 it should lower recall "
               "of the corrupted labels and keep clean and test accuracy.",
    "circuits": "Edge attribution for clean and for noisy examples. Overlapping bright edges "
                "mean memorization uses the same circuit as generalization (claim 7).",
    "neuron_view": "The neuron that shifts most on noisy examples (best heuristic: {feature}; mean "
                   "|z| {z:.2f} on noisy examples), over the inputs: cells are clean examples' mean "
                   "activation, points are noisy examples coloured by their activation.",
    "token_neurons": "Every token of three clean and three noisy training examples coloured by the "
                     "activation of layer {layer}'s neurons {neurons} (the ones that shift most on "
                     "noisy examples; pick one in the selector): look at the answer positions, where "
                     "noisy examples should differ from clean ones.",
    "attention": "Attention patterns of one clean and one noisy training example per layer (hover "
                 "a head to see where each position attends).",
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
.caption { color: #555; font-size: 0.92em; margin: 0.2em 0 1.5em 0; max-width: 900px; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { padding: 3px 8px; border-bottom: 1px solid #eee; }
.holds { color: #116611; font-weight: bold; } .does-not-hold { color: #aa1111; font-weight: bold; }
.not-measured { color: #886600; font-weight: bold; } .inconclusive { color: #555599; font-weight: bold; }
.missing { background: #fff6e0; padding: 0.6em 1em; border-left: 4px solid #e0a000; }
.views { display: flex; flex-wrap: wrap; gap: 1em; } .attention-view, .token-view { flex: 1 1 45%; min-width: 380px; }
"""


def check_run_dirs(run_dirs: list[str | Path]) -> list[Path]:
    """Every path must be a memlens run directory; checked before anything is written."""
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise RunDirError("no run directory given")
    bad = [str(d) for d in dirs if not (d / CONFIG).exists()]
    if bad:
        raise RunDirError(f"not memlens run directories (no {CONFIG}): {', '.join(bad)}")
    for d in dirs:
        read_header(d)  # a corrupted or foreign config.json is named before anything is written
        read_summary(d)
    return dirs


class _Figures:
    """Collects plotly figures as HTML divs; plotly.js goes into the first one only, and the
    circuitsvis bundle into the first attention section only."""

    def __init__(self):
        self.first = True
        self.circuitsvis_loaded = False

    def div(self, fig) -> str:
        out = fig.to_html(full_html=False, include_plotlyjs=self.first, default_width="100%")
        self.first = False
        return out


def _claims_html(rows: list[dict]) -> str:
    """The verdict per claim and task, then every part with its interval, control and the
    pure-memorizer reference (docs/claims.md defines each)."""
    from memlens.claims import claim_verdicts

    def cell(verdict: str, why: str = "") -> str:
        return f'<td class="{verdict.replace(" ", "-")}" title="{html.escape(why)}">{verdict}</td>'

    head = "<tr><th>claim</th><th>task</th><th>verdict</th><th>parts</th></tr>"
    body = [f"<tr><td>{v['claim']}</td><td>{v['task']}</td>{cell(v['verdict'])}<td>"
            + ", ".join(f"{k}: {p}" for k, p in v["parts"].items()) + "</td></tr>"
            for v in claim_verdicts(rows)]
    verdicts = f'<table class="claims">{head}{"".join(body)}</table>'
    head = "<tr>" + "".join(f"<th>{h}</th>" for h in (
        "part", "task", "role", "statistic", "per seed", "mean", "95% CI", "threshold", "control",
        "pure memorizer", "verdict")) + "</tr>"
    body = []
    for r in rows:
        per = ", ".join(f"{v:.3f}" for v in r["per_seed"]) or "n/a"
        mean = "n/a" if r["mean"] is None else f"{r['mean']:.3f}"
        ci = "n/a" if not r["ci95"] else f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
        control = "; ".join(f"{k} {v:.3f}" for k, v in r.get("control", {}).items()) or "-"
        ref = "n/a" if r.get("reference") is None else f"{r['reference']:.3f}"
        body.append(f"<tr><td>{r['claim']}{r['part']}</td><td>{r['task']}</td><td>{r['role']}</td>"
                    f"<td>{html.escape(r['statistic'])}</td><td>{per}</td><td>{mean}</td><td>{ci}</td>"
                    f"<td>{r['direction']} {r['threshold']}</td><td>{html.escape(control)}</td>"
                    f"<td>{ref}</td>{cell(r['verdict'], r['why'])}</tr>")
    return verdicts + f'<h3>Parts</h3><table class="claims">{head}{"".join(body)}</table>'


def _anchor(run_dir: Path) -> str:
    """The id of a run's section (``report.html#run-fda-small-s0`` opens it)."""
    return "run-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in run_dir.name)


def claim4_patching(run_dir: Path, summary: dict) -> dict:
    """The entries of a patching summary that claim 4 scores (the task's claim-4 intermediates)."""
    from memlens.tasks import task_from_config

    config = read_header(run_dir)["run"]
    task = task_from_config(config["task"], config["task_config"])
    labels = [task.intermediate(name).label(column) for name, column in task.entries(claim=4)]
    return {label: summary[label] for label in labels if label in summary}


def _patching_across_runs(dirs: list[Path], figures: _Figures) -> list[str]:
    """Per task with at least two patched runs: claims 4a/5a's losses, seeds beside the reference."""
    from memlens.viz import figures as figs

    by_task: dict[str, dict[str, dict]] = {}
    for run_dir in dirs:
        try:
            data = load_analysis(run_dir, "patching")
        except AnalysisError:
            continue
        by_task.setdefault(read_header(run_dir)["run"]["task"], {})[run_dir.name] = \
            claim4_patching(run_dir, data["summary"])
    parts = []
    for task, summaries in by_task.items():
        if len(summaries) > 1:
            if not parts:
                parts.append("<h2>Counterfactual patching across runs</h2>")
            parts += [figures.div(figs.patch_loss_by_run(summaries, f"{task.upper()}: lost under "
                                                         "changing vs preserving patches")),
                      f'<p class="caption">{CAPTIONS["patch_loss_by_run"]}</p>']
    return parts


def _run_section(run_dir: Path, figures: _Figures, attention: bool) -> str:
    from memlens.viz import figures as figs

    config = read_header(run_dir)["run"]
    summary = read_summary(run_dir)
    parts = [f'<h2 id="{_anchor(run_dir)}">{html.escape(run_dir.name)}</h2>',
             f"<p>{config['task'].upper()} {config['preset']} preset, seed {config['seed']}; "
             f"{config['model']['n_layers']} layers, d_model {config['model']['d_model']}; "
             f"{config['train']['steps']} steps. Final: "
             + html.escape(", ".join(f"{k} {v:.3f}" for k, v in summary.get("final_metrics", {}).items()
                                     if k.endswith("_acc")) or "not finished") + "</p>"]
    metrics = pd.DataFrame(read_metrics(run_dir))
    if not metrics.empty:
        parts += [figures.div(figs.dynamics(metrics, summary.get("phases"))),
                  f'<p class="caption">{CAPTIONS["dynamics"]}</p>']
    missing = []
    from memlens.analysis.runner import applicable
    from memlens.tasks import task_from_config

    for name in applicable(task_from_config(config["task"], config["task_config"])):
        try:
            data = load_analysis(run_dir, name)
        except AnalysisError as err:
            missing.append(str(err))
            continue
        parts.append(f"<h3>{name.replace('_', ' ')}</h3>")
        parts.append(figures.div(figs.analysis_figure(name, data)))
        if name == "neurons" and data["summary"].get("patching"):
            parts.append(figs.records_html(data["summary"]["patching"]["table"]))
        parts.append(f'<p class="caption">{CAPTIONS[name]} ({data.get("seconds", "?")} s to compute)</p>')
    if missing:
        items = "".join(f"<li>{html.escape(m)}</li>" for m in missing)
        parts.append(f'<div class="missing"><b>Missing analyses</b><ul>{items}</ul></div>')
    if attention and summary:
        parts.append(_model_sections(run_dir, figures))
    return "\n".join(parts)


def _model_sections(run_dir: Path, figures: _Figures) -> str:
    """The views that need the trained model: attention patterns, the operand-grid view of the
    neuron that shifts most on noisy examples, and token-level activations of the most shifted
    neurons of its layer."""
    from memlens.analysis.neurons import neuron_table
    from memlens.analysis.selection import neuron_examples
    from memlens.training.run import load_run
    from memlens.viz.attention import attention_views_html, clean_and_noisy_views
    from memlens.viz.neuron_views import neuron_view, token_neuron_views_html

    run = load_run(run_dir)
    views = clean_and_noisy_views(run.model, run.splits)
    html_parts = [f"<h3>attention</h3><div class=\"views\">"
                  f"{attention_views_html(views, include_bundle=not figures.circuitsvis_loaded)}</div>",
                  f'<p class="caption">{CAPTIONS["attention"]}</p>']
    figures.circuitsvis_loaded = True
    try:
        frame = pd.DataFrame(load_analysis(run_dir, "neurons")["frame"])
    except AnalysisError:
        return "\n".join(html_parts)
    top = frame.sort_values("noisy_abs_z", ascending=False).iloc[0]
    layer, position, neuron = int(top["layer"]), int(top["position"]), int(top["neuron"])
    examples = neuron_examples(run)
    table = neuron_table(run.model, examples, layers=[layer], positions=[position])
    caption = CAPTIONS["neuron_view"].format(feature=top["best_feature"], z=top["noisy_abs_z"])
    html_parts += ["<h3>neuron view</h3>",
                   figures.div(neuron_view(table, examples, layer, position, neuron)),
                   f'<p class="caption">{html.escape(caption)}</p>']
    # The neurons of that layer that shift most, token by token, on a few clean and noisy examples.
    shifted = frame[frame["layer"] == layer].sort_values("noisy_abs_z", ascending=False)
    neurons = list(dict.fromkeys(int(n) for n in shifted["neuron"]))[:5]
    groups = {"clean": examples[~examples.is_noisy], "noisy": examples[examples.is_noisy]}
    html_parts += ["<h3>token-level neuron activations</h3>", '<div class="views">'
                   + token_neuron_views_html(run.model, groups, layer, neurons, include_bundle=False) + "</div>",
                   f'<p class="caption">{CAPTIONS["token_neurons"].format(layer=layer, neurons=neurons)}</p>']
    return "\n".join(html_parts)


def write_report(run_dirs: list[str | Path], out: str | Path = "report.html",
                 claims: list[dict] | None = None, attention: bool = True,
                 references: list[str | Path] | None = None,
                 log: Callable[[str], None] = lambda _: None) -> Path:
    """Write the report for ``run_dirs`` to ``out`` (atomically); returns its path.

    ``claims`` defaults to the scorecard of the runs given (grouped by task; a pure-memorizer
    reference among them is used as its task's reference). ``references``: reference runs to
    show after the runs. ``attention=False`` leaves out the attention views (which load each
    model).
    """
    dirs = check_run_dirs(run_dirs)
    refs = check_run_dirs(references) if references else []
    if claims is None:
        from memlens.claims import score_run_dirs

        claims = score_run_dirs(dirs + refs)
    dirs = dirs + [r for r in refs if r not in dirs]
    figures = _Figures()
    sections = []
    for run_dir in dirs:
        log(f"report: {run_dir}")
        sections.append(_run_section(run_dir, figures, attention))
    page = "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>memlens report</title>", f"<style>{STYLE}</style></head><body>",
        "<h1>memlens report</h1>",
        f"<p>{len(dirs)} run(s): "
        + ", ".join(f'<a href="#{_anchor(d)}">{html.escape(d.name)}</a>' for d in dirs)
        + ". Claims are numbered as in the paper (Du et al. 2025, arXiv 2507.04782); each part's "
        "statistic, control, threshold and what would falsify it are pre-registered in "
        "docs/claims.md. Hover a verdict for its reason.</p>",
        "<h2>Claims</h2>", _claims_html(claims),
        *_patching_across_runs(dirs, figures),
        *sections, "</body></html>",
    ])
    out = Path(out)
    atomic_write_text(out, page)
    return out
