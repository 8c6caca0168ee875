"""Exploring one example: the per-example numbers equal what the model computes, an example's
counterfactuals do not depend on the others asked for, bad requests name the valid values, and
a real headless Chromium draws the explorer page (and notebook views) offline."""

import json
import re

import pytest
import torch

from memlens import backend
from memlens.analysis.common import AnalysisError
from memlens.analysis.counterfactuals import matched_counterfactuals
from memlens.analysis.patching import run_with_patch
from memlens.analysis.per_example import (
    BLOCK, direct_logit_attribution, greedy_answers, patch_outcomes,
)
from memlens.cli import main
from memlens.models import ModelConfig, build_model
from memlens.tasks import make_task
from memlens.training.metrics import with_answer
from memlens.training.run import load_run
from memlens.viz.explore import explain, write_explorer
from tests.viz.test_report import chromium, dump_dom


@pytest.fixture(scope="module")
def run(tiny_run):
    return load_run(tiny_run)


@pytest.fixture(scope="module")
def page(tiny_run, tmp_path_factory):
    """The explorer page of the tiny run, 8 examples per group."""
    return write_explorer(tiny_run, tmp_path_factory.mktemp("explore") / "explore.html", per_group=8,
                          examples="test-300")


def page_data(path):
    text = path.read_text()
    raw = re.search(r'<script type="application/json" id="memlens-explore-data">(.*?)</script>', text, re.S)
    return json.loads(raw.group(1).replace("<\\/", "</"))


# -- the numbers ---------------------------------------------------------------------------------

def test_direct_logit_attribution_adds_up_to_the_logits():
    task = make_task("fda", preset="tiny")
    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2), task, seed=1)
    ex = task.generate(0).train[:16]
    targets = torch.stack([ex.labels, ex.true_labels, ex.labels.roll(1, 0)], -1)
    dla = direct_logit_attribution(model, ex, targets)
    logits = model(ex.tokens)[:, ex.answer_pos]
    assert torch.allclose(dla.total(), logits.gather(-1, targets), atol=1e-4)
    assert dla.heads.shape == (16, 3, 3, 2, 2) and dla.neurons.shape == (16, 3, 3, 2, model.cfg.d_mlp)


@pytest.mark.skipif(backend.BACKEND != "hooked",
                    reason="ActivationCache.stack_head_results: HookedTransformer")
def test_head_attribution_equals_transformer_lens_own(run):
    """Per head: TransformerLens' stacked head results through the cached final LayerNorm scale."""
    model, ex = run.model, run.splits["train_noisy"][:6]
    dla = direct_logit_attribution(model, ex, ex.labels[..., None])
    _, cache = model.run_with_cache(ex.tokens)
    for slot, pos in enumerate(ex.answer_pos.tolist()):
        stack = cache.stack_head_results(layer=-1, pos_slice=pos)  # (components, n, d_model)
        scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=pos) * model.ln_final.w
        theirs = torch.einsum("cnd,dn->nc", scaled, model.W_U[:, ex.labels[:, slot]])
        assert torch.allclose(dla.heads[:, slot, 0].flatten(1), theirs, atol=1e-4)


def test_greedy_answers_are_what_the_model_writes(run):
    ex = run.splits["test"][:50]
    answer = greedy_answers(run.model, ex)
    # Fed back teacher-forced, the greedy answer is the argmax at every slot (and only then).
    logits = run.model(with_answer(ex, answer))[:, ex.answer_pos].detach()
    assert torch.equal(logits.argmax(-1), answer)


def test_an_examples_counterfactual_does_not_depend_on_the_others_asked_for(run):
    split = run.splits["train_clean"]
    sites = {("column_sum", 0): {"layer": 0, "position": 6}}
    alone = patch_outcomes(run.model, split, [3, BLOCK + 5], sites)["column_sum[0]"]
    crowd = patch_outcomes(run.model, split, list(range(12)) + [BLOCK + 5], sites)["column_sum[0]"]
    for kind in ("change", "preserve"):
        assert torch.equal(alone.tokens[kind][0], crowd.tokens[kind][3])
        assert torch.equal(alone.tokens[kind][1], crowd.tokens[kind][12])
    assert torch.allclose(alone.logp["change"], crowd.logp["change"][[3, 12]], atol=1e-5)


@pytest.mark.parametrize("layer", [0, 1])
def test_patch_outcomes_equal_run_with_patch_of_the_matched_counterfactual(layer):
    task = make_task("fda", preset="tiny")
    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2), task, seed=1)
    split = task.generate(0).splits["train_noisy"]
    sites = {("column_sum", 1): {"layer": layer, "position": 7}, ("carry", 1): {"layer": 1, "position": 6}}
    outcomes = patch_outcomes(model, split, [4, 9], sites, seed=0)
    out = outcomes["column_sum[1]"]
    pairs = matched_counterfactuals(split[:BLOCK], "column_sum", 1, seed=0)
    assert bool(pairs.valid[4]) and bool(out.valid[0]) and set(outcomes) == {"column_sum[1]", "carry[1]"}
    row = int(pairs.valid[:4].sum())  # example 4's row among the pairs
    ex = split[4:5]
    for kind in ("change", "preserve"):
        source = with_answer(getattr(pairs, kind)[row], ex.labels)
        assert torch.equal(out.tokens[kind][:1], source)
        patched = run_with_patch(model, source, ex.tokens, layer=layer, positions=[7])
        logits = patched[:, ex.answer_pos].detach()
        logp = logits.log_softmax(-1).gather(-1, ex.labels[..., None]).sum()
        assert abs(float(out.logp[kind][0]) - float(logp)) < 1e-4
        assert bool(out.recall[kind][0]) == bool((logits.argmax(-1) == ex.labels).all())
    base = model(ex.tokens)[:, ex.answer_pos].log_softmax(-1).gather(-1, ex.labels[..., None]).sum().detach()
    assert abs(float(out.base_logp[0]) - float(base)) < 1e-4
    # The edits touch the declared positions only, and the changing one changes column_sum[1].
    edited = (out.tokens["change"][0] != ex.tokens[0]).nonzero().flatten().tolist()
    assert edited and set(edited) <= set(out.edited_positions)
    assert pairs.change.intermediates["column_sum"][row, 1] != ex.intermediates["column_sum"][0, 1]


def test_explain_shows_the_examples_numbers(run):
    view = explain(run, "noisy", 3)
    ex = view.example
    noisy = run.splits["train_noisy"][3:4]
    assert ex["id"] == "noisy-3" and ex["l"] == noisy.labels[0].tolist() and ex["n"] == 1
    assert ex["p"] == greedy_answers(run.model, noisy)[0].tolist()
    # The last logit-lens point is the model's output: probability of the true label.
    probs = run.model(noisy.tokens)[0, noisy.answer_pos].softmax(-1).detach()
    lens = view.to_frame("lens")
    last = lens[(lens["point"] == lens["point"].iloc[-1]) & (lens["target"] == "true")]
    expected = probs.gather(-1, noisy.true_labels[0][:, None])[:, 0]
    assert torch.allclose(torch.tensor(last.sort_values("slot")["prob"].values).float(), expected, atol=1e-3)
    assert set(view.to_frame("patching")["intermediate"]) == {
        "column_sum[0]", "column_sum[1]", "carry[1]", "carry[2]"}
    assert "noisy-3:" in repr(view) and view._repr_html_().count("var CircuitsVis") == 1


def test_thr_tracks_the_bridge_and_says_which_examples_have_no_counterfactuals(thr_tiny, tmp_path):
    from types import SimpleNamespace

    from memlens.viz.example_data import explore_data
    from memlens.viz.explore import ExampleView

    task, model, data = thr_tiny
    run = SimpleNamespace(path=tmp_path, model=model, task=task, splits=data.splits,
                          config=SimpleNamespace(seed=0))
    two_hop = task.analysis_mask(data.splits["train_clean"])
    atomic, query = int((~two_hop).nonzero()[0]), int(two_hop.nonzero()[0])
    out = explore_data(run, [("train_clean", atomic), ("train_clean", query)])
    assert out["meta"]["targets"] == ["true", "noisy", "bridge"]
    assert [p["label"] for p in out["meta"]["patching"]] == ["bridge_entity"]
    first, second = out["examples"]
    # Atomic facts get no counterfactuals (0), a two-hop query gets its numbers or none found (null).
    assert first["patch"] == [0] and second["patch"][0] != 0
    lens = ExampleView({"meta": out["meta"], "examples": [second]}).to_frame("lens")
    assert "bridge" in set(lens["target"])
    note = ExampleView({"meta": out["meta"], "examples": [first]}).to_frame("patching")["note"]
    assert note.tolist() == ["no counterfactual for this kind of example"]


# -- bad input -----------------------------------------------------------------------------------

def test_bad_requests_name_the_valid_values(run, tiny_run, tmp_path, capsys):
    with pytest.raises(AnalysisError, match=r"index 100 is out of range for noisy .*valid indices 0\.\.99"):
        explain(run, "train_noisy", 100)
    with pytest.raises(AnalysisError, match="unknown group 'dirty': expected one of clean, noisy, test"):
        explain(run, "dirty", 0)
    with pytest.raises(AnalysisError, match="panel='x' is invalid"):
        explain(run, "test", 0).to_frame("x")
    out = tmp_path / "e.html"
    assert main(["explore", str(tiny_run), "--out", str(out), "--examples", "noisy-1000"]) == 2
    assert "valid indices 0..99" in capsys.readouterr().err
    assert main(["explore", str(tiny_run), "--out", str(out), "--examples", "dirty-3"]) == 2
    assert "unknown group 'dirty'" in capsys.readouterr().err
    assert main(["explore", str(tmp_path), "--out", str(out)]) == 2
    assert "not memlens run directories" in capsys.readouterr().err
    assert not out.exists()


def test_a_run_without_patching_sites_says_how_to_compute_them(tiny_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("patching.json"))
    out = tmp_path / "e.html"
    assert main(["explore", str(copy), "--out", str(out), "--sites", "patching"]) == 2
    assert f"memlens analyze {copy} --only patching" in capsys.readouterr().err and not out.exists()
    # auto falls back to the fixed default rule and says so on the page.
    path = write_explorer(copy, out, per_group=2)
    meta = page_data(path)["meta"]
    assert meta["site_note"].startswith("default rule")
    assert f"memlens analyze {copy} --only patching" in meta["site_note"]
    assert [(p["layer"], p["position"]) for p in meta["patching"]] == [(0, 6), (0, 7), (0, 6), (0, 7)]


# -- the page ------------------------------------------------------------------------------------

def test_page_holds_the_sample_once_bundled_and_self_contained(page, run):
    text = page.read_text()
    assert text.count("var CircuitsVis") == 1 and text.count("window.Plotly = Plotly") == 1
    assert not re.search(r'<script[^>]+src="http', text) and "unpkg.com" not in text
    data = page_data(page)
    ids = [e["id"] for e in data["examples"]]
    assert ids[:8] == [f"clean-{i}" for i in range(8)] and "noisy-7" in ids and ids[-1] == "test-300"
    assert len(ids) == 25 and data["meta"]["sizes"] == {"clean": 1900, "noisy": 100, "test": 500}
    sites = json.load(open(run.path / "analysis" / "patching.json"))["summary"]
    assert {p["label"]: (p["layer"], p["position"]) for p in data["meta"]["patching"]} == {
        k: (v["site"]["layer"], v["site"]["position"]) for k, v in sites.items()}


def _cells(dom: str, row: str) -> list[str]:
    match = re.search(rf'<tr class="tok" data-row="{row}">(.*?)</tr>', dom, re.S)
    return re.findall(r"<td[^>]*>(.*?)</td>", match.group(1))[1:]


def _selected(dom: str) -> str:
    return dom[dom.index('<div class="mx-main'):]


@pytest.mark.skipif(chromium() is None, reason="no Chromium on this machine (.ci/run installs it)")
def test_headless_chromium_draws_the_explorer_and_notebook_views_offline(page, run, tmp_path, monkeypatch):
    from memlens.viz import notebook

    shown = {}
    for example in ("noisy-3", "test-300"):
        dom = _selected(dump_dom(page, tmp_path, fragment=f"example={example}"))
        assert f'data-example="{example}"' in dom
        # plotly drew the logit lens, the two attribution charts and the patching chart.
        assert len(re.findall(r'class="plot [a-z-]+ js-plotly-plot"', dom)) == 4
        lines = 2 if example.startswith("noisy") else 1  # the noisy label's curve: noisy examples only
        assert dom.count('class="main-svg"') >= 8 and dom.count("trace scatter") == lines
        assert "trace bars" in dom
        # circuitsvis drew the attention view of the (one) layer.
        views = re.findall(r'<div id="mx-attn-\d+">(.*?)</div></div></div></div>', dom, re.S)
        assert len(views) == 1 and "Head selector" in views[0] and len(views[0]) > 500
        shown[example] = dom
    # The values of noisy-3 are what the model computes for it.
    ex = run.splits["train_noisy"][3:4]
    vocab = run.task.tokenizer.vocab
    assert _cells(shown["noisy-3"], "label") == [vocab[i] for i in ex.labels[0]]
    assert _cells(shown["noisy-3"], "prediction") == [vocab[i] for i in greedy_answers(run.model, ex)[0]]
    buttons = re.search(r'<div class="slots">(.*?)</div>', shown["noisy-3"]).group(1)
    slot = re.findall(r"<button[^>]*>", buttons).index('<button type="button" class="on">')
    probs = run.model(ex.tokens)[0, ex.answer_pos[slot]].softmax(-1).detach()
    last = re.search(r'<tr data-point="L0.post"><td>L0.post</td><td>([\d.]+)</td><td>([\d.]+)</td>',
                     shown["noisy-3"])
    assert abs(float(last.group(1)) - float(probs[ex.true_labels[0, slot]])) < 1.5e-3
    assert abs(float(last.group(2)) - float(probs[ex.labels[0, slot]])) < 1.5e-3
    # Another fragment, another example: other tokens, no noisy-label curve.
    test = run.splits["test"][300]
    labels = _cells(shown["test-300"], "label")
    assert labels == [vocab[i] for i in test.labels[0]] != _cells(shown["noisy-3"], "label")
    assert "noisy label</th>" not in shown["test-300"]

    # Notebook views as a kernel sends them: bundles in the first output only; both drawn.
    monkeypatch.setattr(notebook, "in_kernel", lambda: True)
    notebook.reset()
    outputs = [explain(run, "noisy", 3)._repr_html_(), explain(run, "test", 0)._repr_html_()]
    assert "var CircuitsVis" in outputs[0] and "var CircuitsVis" not in outputs[1]
    nb_page = tmp_path / "notebook.html"
    nb_page.write_text("<!DOCTYPE html><html><body>" + "\n".join(outputs) + "</body></html>")
    dom = dump_dom(nb_page, tmp_path)
    assert dom.count('data-example="noisy-3"') == 1 and dom.count('data-example="test-0"') == 1
    assert len(re.findall(r'class="plot [a-z-]+ js-plotly-plot"', dom)) == 8
    assert len([v for v in re.findall(r'<div id="mx-attn-\d+">(.*?)</div></div></div></div>', dom, re.S)
                if "Head selector" in v]) == 2
    notebook.reset()
    # A view whose bundles never came says what to do (the check can fail).
    lone = tmp_path / "lone.html"
    lone.write_text("<!DOCTYPE html><html><body>" + outputs[1] + "</body></html>")
    assert "memlens.viz.notebook.reset()" in dump_dom(lone, tmp_path)
