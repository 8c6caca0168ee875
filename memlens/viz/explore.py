"""Explore one example: the offline explorer page (``memlens explore``) and ``memlens.explain``.

Both show the same panels, drawn by one script (``static/explore.js``) from the compact JSON of
:mod:`memlens.viz.example_data`: the example's tokens, label, true label and greedy prediction;
the logit lens by residual point for the true label, the noisy label and the task's extra lens
targets; the attention patterns of every layer and head (circuitsvis); the direct logit
attribution of heads, MLP layers and the top neurons to the label and to the true label; and the
recall of the label when each intermediate is patched from a changing and from a preserving
counterfactual. The page precomputes a bounded sample (the first ``per_group`` examples of each
group, plus any asked for), so selecting an example needs no Python; ``#example=noisy-17`` in
its URL selects one. docs/explore.md has the details and the page's size.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import uuid
from pathlib import Path
from collections.abc import Callable, Iterator

import pandas as pd
import torch

from memlens.analysis.common import AnalysisError
from memlens.io import atomic_write_text
from memlens.viz.example_data import (
    GROUPS, SITE_RULES, explore_data, parse_example_ids, short_group, split_of,
)
from memlens.viz.notebook import bundles_html, static_text

PER_GROUP = 200


@contextlib.contextmanager
def _torch_threads() -> Iterator[None]:
    """One torch thread unless ``OMP_NUM_THREADS`` says otherwise: the forwards here are small,
    and on a busy 2-core machine two threads ran them 9x slower (docs/explore.md)."""
    old = torch.get_num_threads()
    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _json_script(data: dict, element_id: str) -> str:
    """``data`` in a ``<script type="application/json">``; ``</`` escaped so that no string
    in it can close the script."""
    text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def page_html(data: dict, title: str) -> str:
    """The explorer page around ``{"meta", "examples"}``: bundles inlined once, no network.

    >>> page = page_html({"meta": {}, "examples": []}, "an empty explorer")
    >>> page.count("var CircuitsVis"), page.count("window.Plotly = Plotly"), "startPage" in page
    (1, 1, True)
    """
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>", f"<style>{static_text('explore.css')}</style>",
        bundles_html(("plotly", "circuitsvis"), once=False), "</head><body>",
        '<div id="memlens-explore"></div>', _json_script(data, "memlens-explore-data"),
        f"<script>{static_text('explore.js')}</script>",
        "<script>MemlensExplore.startPage(document.getElementById('memlens-explore'), "
        "JSON.parse(document.getElementById('memlens-explore-data').textContent));</script>",
        "</body></html>", ""])


def _check_out(out: Path) -> None:
    if out.exists() and out.is_dir():
        raise AnalysisError(f"--out {out} is a directory: give the HTML file to write")


def write_explorer(run_dir: str | Path, out: str | Path = "explore.html", *,
                   per_group: int = PER_GROUP, examples: str | list[str] | None = None,
                   sites: str = "auto", device: str = "cpu",
                   log: Callable[[str], None] = lambda _: None) -> Path:
    """Write the explorer page of a run directory to ``out`` (atomically); returns its path.

    The page holds the first ``per_group`` examples of each group (clean, noisy, test) and the
    ``examples`` named (``"noisy-17,test-4"``). ``sites``: where intermediates are patched:
    ``auto`` (``RUN/analysis/patching.json``'s sites if it exists, else the fixed default rule),
    ``patching`` (that file, required) or ``default``. Everything is checked before any work.

    >>> import tempfile
    >>> from memlens.training import make_run_config, train
    >>> tmp = tempfile.TemporaryDirectory()
    >>> run_dir = train(make_run_config("fda", "tiny", 0, {"train.steps": 2}), f"{tmp.name}/run",
    ...                 progress=False).run_dir
    >>> page = write_explorer(run_dir, f"{tmp.name}/explore.html", per_group=2, examples="noisy-17")
    >>> page.name, page.read_text().count('"id":"noisy-')
    ('explore.html', 3)
    >>> tmp.cleanup()
    """
    from memlens.training.run import load_run
    from memlens.viz.report import check_run_dirs

    (run_path,) = check_run_dirs([run_dir])
    if isinstance(per_group, bool) or not isinstance(per_group, int) or per_group < 0:
        raise AnalysisError(f"per_group={per_group!r} is invalid: expected an integer >= 0")
    picked = parse_example_ids(examples)
    if sites not in SITE_RULES:
        raise AnalysisError(f"sites={sites!r} is invalid: expected one of {list(SITE_RULES)}")
    out = Path(out)
    _check_out(out)
    run = load_run(run_path, device=device)
    splits = run.splits
    picks = [(s, i) for s in GROUPS.values() for i in range(min(per_group, len(splits[s])))]
    picks += [p for p in picked if p not in picks]
    if not picks:
        raise AnalysisError(f"{run_path} has no examples to show: per_group=0 and no examples named")
    log(f"explore: {len(picks)} examples of {run_path}")
    with _torch_threads():
        data = explore_data(run, picks, sites=sites)
    atomic_write_text(out, page_html(data, f"memlens explore: {run_path.name}"))
    return out


class ExampleView:
    """One example explained: the explorer's panels, displayed inline in Jupyter and VS Code
    (offline: :mod:`memlens.viz.notebook`). ``data``: the numbers shown (compact JSON, decoded by
    :meth:`to_frame`); ``save(path)`` writes a standalone page of this example.

    >>> import tempfile
    >>> from memlens.training import load_run, make_run_config, train
    >>> tmp = tempfile.TemporaryDirectory()
    >>> _ = train(make_run_config("fda", "tiny", 0, {"train.steps": 2}), f"{tmp.name}/run", progress=False)
    >>> view = explain(load_run(f"{tmp.name}/run"), "test", 4)
    >>> view.summary().startswith("test-4: ")
    True
    >>> list(view.to_frame("heads").columns)
    ['slot', 'layer', 'head', 'to_label', 'to_true_label']
    >>> sorted(view.to_frame("lens")["target"].unique())  # test examples have no noisy label
    ['true']
    >>> page = view.save(f"{tmp.name}/test-4.html")
    >>> page.read_text().count("var CircuitsVis")
    1
    >>> tmp.cleanup()
    """

    def __init__(self, data: dict):
        self.data = data
        self.meta, self.example = data["meta"], data["examples"][0]

    def _tokens(self, ids: list[int]) -> list[str]:
        return [self.meta["vocab"][i] for i in ids]

    def summary(self) -> str:
        """One line: id, prompt, label, true label, prediction and status."""
        ex, first = self.example, self.meta["answer_pos"][0] + 1
        prompt = " ".join(self._tokens(ex["t"][1:first]))
        same = ex["p"] == ex["l"]
        status = ("memorized" if same else "not memorized") if ex["g"] == "noisy" else (
            "correct" if same else "wrong")
        return (f"{ex['id']}: {prompt} | label {' '.join(self._tokens(ex['l']))} | true label "
                f"{' '.join(self._tokens(ex['y']))} | prediction {' '.join(self._tokens(ex['p']))} "
                f"({status})")

    def __repr__(self) -> str:
        return f"<ExampleView {self.summary()}>"

    def _repr_html_(self) -> str:
        root = f"mx-{uuid.uuid4().hex[:12]}"
        return "\n".join([
            bundles_html(("plotly", "circuitsvis")),
            f"<style>{static_text('explore.css')}</style>",
            f'<div id="{root}" class="mx"><p class="mx-summary">{html.escape(self.summary())}</p></div>',
            _json_script(self.data, f"{root}-data"),
            f"<script>{static_text('explore.js')}\nMemlensExplore.renderInto({json.dumps(root)});</script>"])

    def save(self, path: str | Path) -> Path:
        """A self-contained page of this example (bundles inlined), written atomically."""
        path = Path(path)
        atomic_write_text(path, page_html(self.data, f"memlens explain: {self.example['id']}"))
        return path

    def to_frame(self, panel: str) -> pd.DataFrame:
        """The numbers of one panel: ``lens`` (probability per point, slot and target),
        ``heads`` (attribution per head and slot), ``neurons`` (the top neurons per slot) or
        ``patching`` (per intermediate: recall and label log-probability before and after; a
        ``note`` where it was not patched)."""
        meta, ex = self.meta, self.example
        if panel == "lens":
            rows = [{"point": p, "slot": s, "column": meta["slots"][s], "target": t, "prob": v / 1000}
                    for p, point in zip(meta["points"], ex["lens"]) for s, slot in enumerate(point)
                    for t, v in zip(meta["targets"], slot) if v is not None]
        elif panel == "heads":
            h = meta["n_heads"]
            rows = [{"slot": s, "layer": k // h, "head": k % h, "to_label": a, "to_true_label": b}
                    for s, (label, true) in enumerate(ex["heads"])
                    for k, (a, b) in enumerate(zip(label, true))]
        elif panel == "neurons":
            rows = [{"slot": s, "layer": r[0], "neuron": r[1], "to_label": r[2], "to_true_label": r[3]}
                    for s, top in enumerate(ex["neurons"]) for r in top]
        elif panel == "patching":
            rows = [{"intermediate": item["label"], "layer": item["layer"], "position": item["position"],
                     **_patch_row(r)} for item, r in zip(meta["patching"], ex["patch"])]
        else:
            raise AnalysisError(f"panel={panel!r} is invalid: expected one of "
                                "['lens', 'heads', 'neurons', 'patching']")
        return pd.DataFrame(rows)


PATCH_COLUMNS = ("recall", "logp", "recall_change", "logp_change", "recall_preserve", "logp_preserve")


def _patch_row(r: list | int | None) -> dict:
    """One intermediate's patching numbers (``example_data._group_records``): a list of them; 0
    where the task has no counterfactuals for this kind of example (THR's atomic facts); None
    where the recipes found none for this example."""
    if r:
        return dict(zip(PATCH_COLUMNS, r))
    return {"note": "no counterfactual for this kind of example" if r == 0 else "no counterfactual found"}


def explain(run, group: str, index: int, *, sites: str = "auto") -> ExampleView:
    """This example, explained: the explorer's panels for example ``index`` of ``group``
    (``train_noisy`` or ``noisy``, ``train_clean`` / ``clean``, ``test``) of ``run`` (a loaded
    :class:`~memlens.training.run.Run` or a run directory), displayed inline in a notebook.

    >>> import tempfile
    >>> from memlens.training import load_run, make_run_config, train
    >>> tmp = tempfile.TemporaryDirectory()
    >>> _ = train(make_run_config("fda", "tiny", 0, {"train.steps": 2}), f"{tmp.name}/run", progress=False)
    >>> run = load_run(f"{tmp.name}/run")
    >>> view = explain(run, "train_noisy", 17)  # the last line of a notebook cell: drawn inline
    >>> view.example["id"], list(view.to_frame("patching")["intermediate"])
    ('noisy-17', ['column_sum[0]', 'column_sum[1]', 'carry[1]', 'carry[2]'])
    >>> view._repr_html_().count("unpkg.com")
    0
    >>> explain(run, "train_noisy", 100)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    memlens.analysis.common.AnalysisError: index 100 is out of range for noisy ...: valid indices 0..99
    >>> tmp.cleanup()
    """
    from memlens.training.run import Run, load_run

    split = split_of(group)
    if sites not in SITE_RULES:
        raise AnalysisError(f"sites={sites!r} is invalid: expected one of {list(SITE_RULES)}")
    if not isinstance(run, Run):
        run = load_run(run)
    with _torch_threads():
        return ExampleView(explore_data(run, [(split, index)], sites=sites))


__all__ = ["ExampleView", "explain", "short_group", "write_explorer"]
