"""One example's panels as compact JSON: what the explorer page and ``memlens.explain`` draw.

The numbers come from :mod:`memlens.analysis.per_example` and the logit lens; this module only
chooses the examples, encodes the numbers compactly and names bad requests. Encoding (the page
decodes it in ``static/explore.js``): token ids against one vocabulary; logit-lens
probabilities in thousandths; attention patterns as the lower triangle of each head in bytes
(0-255), base64; direct logit attribution in logits, 2 decimals.

Example ids are ``GROUP-INDEX``: ``clean-3``, ``noisy-17``, ``test-0``, an index into the
run's ``train_clean``, ``train_noisy`` or ``test`` split.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import torch

from memlens.analysis.common import AnalysisError

GROUPS = {"clean": "train_clean", "noisy": "train_noisy", "test": "test"}
SITE_RULES = ("auto", "patching", "default")
DEFAULT_SITE_NOTE = ("default rule (no RUN/analysis/patching.json): the last layer's input "
                     "(resid_pre) at the position that predicts the first answer token revealing "
                     "the intermediate; run `memlens analyze {run} --only patching` for the sites "
                     "chosen on clean examples")


def split_of(group: str) -> str:
    """The split behind a group name, short (``noisy``) or long (``train_noisy``).

    >>> split_of("noisy"), split_of("test")
    ('train_noisy', 'test')
    >>> split_of("dirty")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    memlens.analysis.common.AnalysisError: unknown group 'dirty': expected one of clean, noisy, test ...
    """
    if group in GROUPS:
        return GROUPS[group]
    if group in GROUPS.values():
        return group
    raise AnalysisError(f"unknown group {group!r}: expected one of {', '.join(GROUPS)} (or "
                        f"{', '.join(GROUPS.values())})")


def short_group(split: str) -> str:
    """The group name of a split, as in example ids.

    >>> short_group("train_noisy"), short_group("test")
    ('noisy', 'test')
    """
    return {v: k for k, v in GROUPS.items()}[split]


def parse_example_ids(text: str | list[str] | None) -> list[tuple[str, int]]:
    """``"noisy-17,test-4"`` (or a list) to ``[("train_noisy", 17), ("test", 4)]``.

    >>> parse_example_ids("noisy-17, test-4")
    [('train_noisy', 17), ('test', 4)]
    >>> parse_example_ids("noisy17")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    memlens.analysis.common.AnalysisError: example id 'noisy17' is invalid: expected GROUP-INDEX ...
    """
    if not text:
        return []
    parts = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for part in (p.strip() for p in parts if p.strip()):
        m = re.fullmatch(r"([a-z_]+)-(\d+)", part)
        if not m:
            raise AnalysisError(f"example id {part!r} is invalid: expected GROUP-INDEX with GROUP "
                                f"one of {', '.join(GROUPS)} (e.g. noisy-17)")
        out.append((split_of(m.group(1)), int(m.group(2))))
    return out


def check_index(splits: dict, split: str, index: int) -> None:
    """Refuse an index outside the split, naming the valid range.

    >>> check_index({"test": [0] * 500}, "test", 499)
    >>> check_index({"test": [0] * 500}, "test", 500)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    memlens.analysis.common.AnalysisError: index 500 is out of range for test ...: valid indices 0..499
    """
    n = len(splits[split])
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise AnalysisError(f"index {index!r} is invalid: expected an integer in 0..{n - 1}")
    if not 0 <= index < n:
        valid = f"0..{n - 1}" if n else "none: the split is empty"
        raise AnalysisError(f"index {index} is out of range for {short_group(split)} ({split}, "
                            f"{n} examples): valid indices {valid}")


def patching_sites(run, rule: str = "auto") -> tuple[dict[str, dict], str]:
    """Per intermediate label, the patching site, and a note saying where the sites come from.

    ``rule``: ``patching`` (``RUN/analysis/patching.json``'s sites, required), ``default`` (the
    fixed rule of :func:`~memlens.analysis.per_example.default_site`), ``auto`` (the first when
    the file exists, else the second).

    >>> import tempfile
    >>> from memlens.training import load_run, make_run_config, train
    >>> tmp = tempfile.TemporaryDirectory()
    >>> _ = train(make_run_config("fda", "tiny", 0, {"train.steps": 2}), f"{tmp.name}/run", progress=False)
    >>> run = load_run(f"{tmp.name}/run")
    >>> sites, note = patching_sites(run)  # no analysis/patching.json: the default rule
    >>> sites["carry[1]"], note.startswith("default rule")
    ({'layer': 0, 'position': 6}, True)
    >>> patching_sites(run, "patching")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    memlens.analysis.common.AnalysisError: ...memlens analyze ... --only patching...
    >>> tmp.cleanup()
    """
    from memlens.analysis.per_example import default_site, matched_entries
    from memlens.analysis.runner import ANALYSIS_DIR, load_analysis

    if rule not in SITE_RULES:
        raise AnalysisError(f"sites={rule!r} is invalid: expected one of {list(SITE_RULES)}")
    entries = matched_entries(run.task)
    have_file = (Path(run.path) / ANALYSIS_DIR / "patching.json").exists()
    if rule == "default" or (rule == "auto" and not have_file):
        sites = {run.task.intermediate(n).label(c): default_site(run.model, run.task, n, c)
                 for n, c in entries}
        return sites, DEFAULT_SITE_NOTE.format(run=run.path)
    summary = load_analysis(run.path, "patching")["summary"]  # names the command when missing
    sites = {}
    for name, column in entries:
        label = run.task.intermediate(name).label(column)
        if label not in summary:
            raise AnalysisError(f"patching.json has no site for {label}: rerun `memlens analyze "
                                f"{run.path} --only patching`")
        site = summary[label]["site"]
        sites[label] = {"layer": int(site["layer"]), "position": int(site["position"])}
    return sites, ("sites from RUN/analysis/patching.json: per intermediate, where on clean "
                   "examples the changing patch costs the most accuracy beyond the preserving one")


def _run_meta(run, splits: dict, sites: dict[str, dict], note: str) -> dict:
    """What every example's panels share: vocabulary, layout, model shape, patching sites."""
    from memlens.analysis.common import resid_point_names

    cfg = run.model.cfg
    targets = ["true", "noisy"] + list(run.task.lens_targets(splits["test"][:1]))
    columns = run.task.answer_columns()
    return {
        "run": Path(run.path).name, "task": run.task.name, "vocab": list(run.task.tokenizer.vocab),
        "answer_pos": list(run.task.answer_pos), "slots": [str(c) for c in columns],
        "points": [p for p, _ in resid_point_names(cfg.n_layers)], "targets": targets,
        "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
        "patching": [{"label": label, **site} for label, site in sites.items()], "site_note": note,
        "sizes": {short_group(k): len(v) for k, v in splits.items()},
    }


def _attention_b64(pattern: torch.Tensor) -> str:
    """(layers, heads, pos, pos) causal patterns: the lower triangle of each head, as bytes."""
    rows, cols = torch.tril_indices(pattern.shape[-1], pattern.shape[-1])
    values = (pattern[..., rows, cols].clamp(0, 1) * 255).round().to(torch.uint8)
    return base64.b64encode(values.numpy().tobytes()).decode()


def _top_neurons(neurons: torch.Tensor, differs: torch.Tensor, k: int) -> list[list]:
    """Per slot, the ``k`` neurons writing most to the label against the true label (to the
    label alone where they agree): ``[layer, neuron, to label, to true label]``."""
    out = []
    for slot in range(neurons.shape[0]):
        label, true = neurons[slot, 0], neurons[slot, 1]  # (layers, d_mlp)
        score = (label - true).abs() if differs[slot] else label.abs()
        top = score.flatten().topk(min(k, score.numel())).indices
        d_mlp = score.shape[-1]
        out.append([[int(i) // d_mlp, int(i) % d_mlp, round(float(label.flatten()[i]), 2),
                     round(float(true.flatten()[i]), 2)] for i in top])
    return out


def _rounded(t: torch.Tensor) -> list:
    return np.round(t.numpy().astype(float), 2).tolist()


def _group_records(run, split: str, examples, indices: list[int], sites: dict[str, dict],
                   top_neurons: int = 8, chunk: int = 256, edited: dict | None = None) -> list[dict]:
    """The panels' data of examples ``indices`` of one split (``examples``), one dict per example;
    ``edited`` (if given) receives each intermediate's edited token positions."""
    from memlens.analysis.logit_lens import logit_lens
    from memlens.analysis.per_example import (
        attention_patterns, direct_logit_attribution, greedy_answers, matched_entries,
        patch_outcomes,
    )

    model = run.model
    records = []
    for start in range(0, len(indices), chunk):
        part_idx = indices[start:start + chunk]
        part = examples[torch.tensor(part_idx, dtype=torch.long)]
        pred = greedy_answers(model, part)
        lens = logit_lens(model, {split: part}).prob[split]  # (n, points, slots, targets)
        attn = attention_patterns(model, part)
        dla = direct_logit_attribution(model, part, torch.stack([part.labels, part.true_labels], -1))
        mlp = dla.neurons.sum(-1) + dla.mlp_bias  # (n, slots, 2, layers)
        rest = dla.embed + dla.attn_bias.sum(-1) + dla.const
        for j, i in enumerate(part_idx):
            differs = part.labels[j] != part.true_labels[j]
            records.append({
                "id": f"{short_group(split)}-{i}", "g": short_group(split), "i": i,
                "t": part.tokens[j].tolist(), "l": part.labels[j].tolist(),
                "y": part.true_labels[j].tolist(), "p": pred[j].tolist(),
                "n": int(part.is_noisy[j]),
                "lens": [[[None if v != v else int(round(v * 1000)) for v in slot] for slot in point]
                         for point in lens[j].tolist()],
                "attn": _attention_b64(attn[j]),
                "heads": _rounded(dla.heads[j].flatten(-2)), "mlp": _rounded(mlp[j]),
                "rest": _rounded(rest[j]), "neurons": _top_neurons(dla.neurons[j], differs, top_neurons),
                "patch": [],
            })
    by_index = {r["i"]: r for r in records}
    entries = {(n, c): sites[run.task.intermediate(n).label(c)] for n, c in matched_entries(run.task)}
    outcomes = patch_outcomes(model, examples, indices, entries, seed=run.config.seed) if entries else {}
    # 0: the task has no counterfactuals for this kind of example (THR: atomic facts); null: this
    # example has none (no input that changes, or none that preserves, the intermediate).
    patchable = run.task.analysis_mask(examples[torch.tensor(indices, dtype=torch.long)])
    for label, out in outcomes.items():
        if edited is not None and out.edited_positions:
            edited[label] = out.edited_positions
        for j, i in enumerate(indices):
            if not out.valid[j]:
                by_index[i]["patch"].append(None if patchable[j] else 0)
                continue
            edit = {k: out.tokens[k][j, out.edited_positions].tolist() for k in out.tokens}
            by_index[i]["patch"].append([
                int(out.base_recall[j]), round(float(out.base_logp[j]), 2),
                int(out.recall["change"][j]), round(float(out.logp["change"][j]), 2),
                int(out.recall["preserve"][j]), round(float(out.logp["preserve"][j]), 2),
                edit["change"], edit["preserve"]])
    return records


def explore_data(run, picks: list[tuple[str, int]], sites: str = "auto",
                 top_neurons: int = 8) -> dict:
    """``{"meta": ..., "examples": [...]}`` for ``picks`` (``(split, index)`` pairs) of a loaded
    run; every pick is checked before any work. ``sites``: see :func:`patching_sites`.

    >>> import tempfile
    >>> from memlens.training import load_run, make_run_config, train
    >>> tmp = tempfile.TemporaryDirectory()
    >>> _ = train(make_run_config("fda", "tiny", 0, {"train.steps": 2}), f"{tmp.name}/run", progress=False)
    >>> data = explore_data(load_run(f"{tmp.name}/run"), [("train_noisy", 17), ("test", 4)])
    >>> [ex["id"] for ex in data["examples"]], data["meta"]["sizes"]
    (['noisy-17', 'test-4'], {'clean': 1900, 'noisy': 100, 'test': 500})
    >>> sorted(data["examples"][0])
    ['attn', 'g', 'heads', 'i', 'id', 'l', 'lens', 'mlp', 'n', 'neurons', 'p', 'patch', 'rest', 't', 'y']
    >>> tmp.cleanup()
    """
    splits = run.splits  # a property that splits the dataset anew on every access
    for split, index in picks:
        split_of(split)
        check_index(splits, split, index)
    site_of, note = patching_sites(run, sites)
    meta = _run_meta(run, splits, site_of, note)
    by_split: dict[str, list[int]] = {}
    for split, index in picks:
        if index not in by_split.setdefault(split, []):
            by_split[split].append(index)
    records, edited = {}, {}
    for split, indices in by_split.items():
        for record in _group_records(run, split, splits[split], indices, site_of, top_neurons, edited=edited):
            records[record["id"]] = record
    for item in meta["patching"]:
        item["edited"] = edited.get(item["label"], [])
    order = [f"{short_group(s)}-{i}" for s, i in picks]
    return {"meta": meta, "examples": [records[k] for k in dict.fromkeys(order)]}
