"""``memlens analyze``: run-level drivers that apply each analysis to a loaded run, with the
study's defaults (subset sizes, which intermediates), and write ``RUN/analysis/<name>.json``.

Each driver asks the run's task (``memlens.tasks.protocol``) what to analyse; none names a task.
The analysis functions themselves take any model and examples (docs/api.md).
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from collections.abc import Callable

from memlens.analysis.common import AnalysisError, Result, ResultSet, to_jsonable
from memlens.analysis.schemas import check as check_schema
from memlens.analysis.selection import (
    clean_splits, group, neuron_examples, noisy_examples, subset, true_label_forced,
)
from memlens.io import atomic_write_json
from memlens.tasks.protocol import TaskError

ANALYSIS_DIR = "analysis"


def run_behaviour(run, baseline: str | Path | None = None) -> Result:
    """Claim 2's per-example outcomes; ``baseline``: the paired noise-free run directory."""
    from memlens.analysis.behaviour import behaviour
    from memlens.training.run import load_run

    noisy = group(run, "train_noisy", 10**9)
    try:
        neighbours = run.task.neighbours(run.dataset, noisy, run.config.seed) if len(noisy) else None
    except TaskError:
        neighbours = None
    base = None
    if baseline is not None:
        base_run = load_run(baseline, device=str(next(run.model.parameters()).device))
        if base_run.dataset.test.content_hash() != run.dataset.test.content_hash():
            raise AnalysisError(f"baseline {baseline} has another test set than {run.path}: "
                                "it is not this run's noise-free pair")
        base = base_run.model
    return behaviour(run.model, noisy, run.splits["test"], neighbours, baseline=base)


def run_logit_lens(run, max_examples: int = 2000) -> Result:
    from memlens.analysis.logit_lens import logit_lens

    groups = {k: subset(v, max_examples, run.config.seed) for k, v in run.splits.items() if len(v)}
    return logit_lens(run.model, groups, answer_columns=run.task.answer_columns())


def allowed_probe_points(model, noisy) -> tuple[list[str], str | None]:
    """Probe points before the point where the noisy label takes over (first answer slot), and
    that point's name (None when it never takes over: every point is allowed)."""
    from memlens.analysis.common import resid_point_names
    from memlens.analysis.logit_lens import logit_lens, takeover_point
    from memlens.analysis.probes import probe_points

    lens = logit_lens(model, {"train_noisy": noisy})
    ranks = lens.first_slot_ranks()["train_noisy"]
    takeover = takeover_point(ranks["true"], ranks["noisy"])
    lens_points = [p for p, _ in resid_point_names(model.cfg.n_layers)]
    names = [p for p, _ in probe_points(model.cfg.n_layers)]
    if takeover is None:
        return names, None
    return [p for p in names if lens_points.index(p) < takeover], lens_points[takeover]


def run_probes(run, sizes=None, n_noisy: int = 2000) -> Result:
    """Claim 3's probes (``probe_study``) on the task's claim-3 intermediates."""
    from memlens.analysis.probes import probe_study
    from memlens.models import build_model

    groups = clean_splits(run, sizes or {"fit": 4000, "select": 1000, "heldout": 1000})
    noisy = noisy_examples(run, n_noisy)
    groups.update(noisy=noisy, noisy_true_forced=true_label_forced(noisy))
    allowed, takeover = allowed_probe_points(run.model, noisy)
    if not allowed:  # the noisy label leads from the first residual point on: nothing to probe
        import pandas as pd

        from memlens.analysis.probes import ProbeStudyResult

        return ProbeStudyResult(frame=pd.DataFrame(), targets=[], allowed_points=[],
                                takeover_point=takeover)
    entries = run.task.entries(claim=3)
    eligible = {run.task.intermediate(n).label(c): run.task.eligible_positions(n, c) for n, c in entries}
    untrained = build_model(run.config.model, run.task, seed=run.config.seed,
                            device=str(next(run.model.parameters()).device)).eval()
    return probe_study(run.model, groups, entries, eligible, allowed_points=allowed,
                       takeover_point=takeover, control_model=untrained, seed=run.config.seed)


def run_patching(run, n_clean: int = 400, n_noisy: int = 1000) -> Result:
    """Claims 4-5: changing vs preserving counterfactual patches of every intermediate that has
    both recipes. Without clean examples (the pure-memorizer reference) the site is chosen on
    half of the noisy examples."""
    from memlens.analysis.dependence import intermediate_dependence, render_dependence

    noisy = noisy_examples(run, n_noisy)
    try:
        clean = clean_splits(run, {"select": n_clean, "heldout": n_clean})
    except AnalysisError:
        clean = {}
    entries = [e for e in run.task.entries(kind="preserve") if e in run.task.entries(kind="change")]
    if not entries:
        raise AnalysisError(f"the {run.task.name} task declares no matched counterfactual recipes")
    items = {}
    for name, column in entries:
        res = intermediate_dependence(run.model, noisy, name, column, clean_select=clean.get("select"),
                                      clean_heldout=clean.get("heldout"), seed=run.config.seed)
        items[res.label] = res
    return ResultSet(items, name="patching", renderer=render_dependence)


def run_interventions(run) -> Result:
    """INLP at each claim-4 intermediate's patching site (claim 4d, diagnostic)."""
    from memlens.analysis.interventions import intervene, render_interventions

    sites = {k: v["site"] for k, v in load_analysis(run.path, "patching")["summary"].items()}
    fit = clean_splits(run, {"fit": 2000})["fit"]
    groups = {k: group(run, k, 1000) for k, v in run.splits.items() if len(v)}
    items = {}
    for name, column in run.task.entries(claim=4):
        label = run.task.intermediate(name).label(column)
        if label not in sites:
            raise AnalysisError(f"patching.json has no site for {label}: rerun `memlens analyze "
                                f"{run.path} --only patching`")
        site = sites[label]
        items[label] = intervene(run.model, groups, fit, name, column=column, layer=site["layer"],
                                 position=site["position"], seed=run.config.seed)
    return ResultSet(items, name="interventions", renderer=render_interventions)


def run_encoding(run) -> Result:
    from memlens.analysis.encoding import encoding

    clean, noisy = group(run, "train_clean", 500), group(run, "train_noisy", 500)
    from memlens.tasks.base import Examples

    return encoding(run.model, Examples.concat([clean, noisy]) if len(noisy) else clean,
                    seed=run.config.seed)


def run_neurons(run) -> Result:
    """Claim 6's neuron study on the last layer, with the pre-memorization checkpoint as null."""
    from memlens.analysis.neuron_study import neuron_study

    from memlens.training.run import RunDirError

    try:
        null_model, null_note = run.load_model("pre_memorization"), None
    except RunDirError as err:  # e.g. a run that never had noisy recall below 0.1 when evaluated
        null_model, null_note = None, str(err)
    return neuron_study(run.model, neuron_examples(run), null_model=null_model, null_note=null_note,
                        seed=run.config.seed)


def run_fourier(run) -> Result:
    """Periodic neurons (IPR over the Fourier basis of the cyclic inputs) and pruning the least
    periodic ones, on every input of the task (training and test)."""
    from memlens.analysis.fourier import fourier_neurons
    from memlens.tasks.base import Examples

    every = Examples.concat([run.dataset.train, run.dataset.test])
    groups = {k: v for k, v in run.splits.items() if len(v)}
    return fourier_neurons(run.model, every, groups, seed=run.config.seed)


def run_circuits(run, n: int = 400) -> Result:
    """Claim 7's circuit study on clean and noisy training examples (``n`` of each)."""
    from memlens.analysis.circuit_study import circuit_study

    clean, noisy = group(run, "train_clean", n), group(run, "train_noisy", n)
    if not len(noisy) or not len(clean):
        raise AnalysisError("circuits compare clean and noisy examples: this run lacks one of them")
    return circuit_study(run.model, clean, noisy, seed=run.config.seed, n_examples=min(n, len(clean), len(noisy)))


ANALYSES: dict[str, Callable] = {
    "behaviour": run_behaviour,
    "logit_lens": run_logit_lens,
    "probes": run_probes,
    "patching": run_patching,
    "interventions": run_interventions,
    "encoding": run_encoding,
    "neurons": run_neurons,
    "fourier": run_fourier,
    "circuits": run_circuits,
}


def applies(name: str, task) -> bool:
    """Whether analysis ``name`` applies to ``task``: what it needs is declared by the task."""
    from memlens.tasks.protocol import TaskBase

    declared = lambda method: getattr(type(task), method) is not getattr(TaskBase, method)  # noqa: E731
    if name == "probes":
        return bool(task.entries(claim=3))
    if name == "patching":
        return bool(set(task.entries(kind="change")) & set(task.entries(kind="preserve")))
    if name == "interventions":
        return bool(task.entries(claim=4))
    if name == "encoding":
        return declared("input_slots")
    if name == "neurons":
        return declared("neuron_features")
    if name == "fourier":
        return hasattr(task, "cyclic_inputs")
    return True


def applicable(task) -> list[str]:
    """The analyses that apply to ``task``, in dependency order."""
    return [name for name in ANALYSES if applies(name, task)]
def _renderers() -> dict[str, Callable]:
    from memlens.analysis.behaviour import BehaviourResult
    from memlens.analysis.circuit_study import CircuitStudyResult
    from memlens.analysis.dependence import render_dependence
    from memlens.analysis.encoding import EncodingResult
    from memlens.analysis.fourier import FourierResult
    from memlens.analysis.interventions import render_interventions
    from memlens.analysis.logit_lens import LogitLensResult
    from memlens.analysis.neuron_study import NeuronStudyResult
    from memlens.analysis.probes import ProbeStudyResult

    return {"behaviour": BehaviourResult.render, "logit_lens": LogitLensResult.render,
            "probes": ProbeStudyResult.render, "patching": render_dependence,
            "interventions": render_interventions, "encoding": EncodingResult.render,
            "neurons": NeuronStudyResult.render, "fourier": FourierResult.render,
            "circuits": CircuitStudyResult.render}


RENDERERS: dict[str, Callable] = _renderers()
# What a pure-memorizer reference (no clean examples) is analysed with.
REFERENCE_ANALYSES = ("behaviour", "logit_lens", "patching")


def parse_only(only: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` to a list of known analysis names (``None``: all); an
    unknown name lists the valid ones.

    >>> parse_only("probes, logit_lens"), parse_only(["circuits"])
    (['probes', 'logit_lens'], ['circuits'])
    """
    if not only:
        return list(ANALYSES)
    parts = only.split(",") if isinstance(only, str) else list(only)
    names = [n.strip() for n in parts if isinstance(n, str) and n.strip()]
    if len(names) != len(parts) and not isinstance(only, str):
        raise AnalysisError(f"only must name analyses as strings, got {only!r}")
    unknown = [n for n in names if n not in ANALYSES]
    if unknown:
        raise AnalysisError(f"unknown analysis {unknown}; valid names: {sorted(ANALYSES)}")
    return names


def analyze_run(run_dir: str | Path, only: str | list[str] | None = None,
                log: Callable[[str], None] = print, device: str = "auto",
                baseline: str | Path | None = None) -> dict:
    """Run the named analyses (``only``: ``"a,b"`` or a list; default every one that applies to
    the run's task, in dependency order)
    on a run directory; writes ``RUN/analysis/<name>.json`` each. ``baseline``: the paired
    noise-free run directory (``behaviour`` compares test accuracy and leaks with it).
    ``device``: where the model runs (``auto``: CUDA when present).
    """
    from memlens.training.run import load_run
    from memlens.training.trainer import resolve_device

    names = parse_only(only)
    names = [n for n in ANALYSES if n in names]  # dependency order: patching before interventions
    if baseline is not None and not Path(baseline).is_dir():
        raise AnalysisError(f"baseline {baseline} is not a directory")
    run = load_run(run_dir, device=resolve_device(device))
    if only is None:  # all: those that apply; an analysis asked for by name must apply
        names = [n for n in names if applies(n, run.task)]
    else:
        skipped = [n for n in names if not applies(n, run.task)]
        if skipped:
            raise AnalysisError(f"{', '.join(skipped)} do(es) not apply to the {run.task.name} task "
                                f"(it declares nothing for them); applicable: {applicable(run.task)}")
    out_dir = Path(run_dir) / ANALYSIS_DIR
    written = {}
    for name in names:
        start = time.perf_counter()
        driver = ANALYSES[name]
        kwargs = {"baseline": baseline} if "baseline" in inspect.signature(driver).parameters else {}
        result = driver(run, **kwargs)
        data = to_jsonable(result.to_json())
        check_schema(name, data["summary"])  # a renamed key fails here, not as "not measured"
        data["seconds"] = round(time.perf_counter() - start, 2)
        data["run"] = str(run_dir)
        if kwargs.get("baseline") is not None:
            data["baseline"] = str(baseline)
        atomic_write_json(out_dir / f"{name}.json", data)
        written[name] = out_dir / f"{name}.json"
        log(f"{name}: {data['seconds']} s -> {written[name]}")
    return written


def load_analysis(run_dir: str | Path, name: str) -> dict:
    """Read ``RUN/analysis/<name>.json``; a missing or corrupted file says how to produce it."""
    path = Path(run_dir) / ANALYSIS_DIR / f"{name}.json"
    if not path.exists():
        raise AnalysisError(f"{path} is missing: run `memlens analyze {run_dir} --only {name}`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AnalysisError(f"{path} is corrupted ({err}): rerun `memlens analyze {run_dir} "
                            f"--only {name}`") from None
