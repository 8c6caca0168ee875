"""Views in notebooks: a real Jupyter kernel (nbclient) displays ``memlens.explain`` with no
network, the bundles inlined once per kernel; views rendered outside a kernel carry them each."""

import json
import re

import pytest
import torch

from memlens.viz import notebook


def test_bundles_go_once_per_kernel_and_once_per_view_outside(monkeypatch):
    from memlens.viz.attention import attention_views_html

    views = attention_views_html([("a", ["x", "y"], torch.ones(1, 2, 2) / 2)], include_bundle=False)
    assert "var CircuitsVis" not in views  # what a page that already has the bundle gets
    outside = [views._repr_html_() for _ in range(2)]
    assert all(o.count("var CircuitsVis") == 1 for o in outside)
    monkeypatch.setattr(notebook, "in_kernel", lambda: True)
    notebook.reset()
    inside = [views._repr_html_() for _ in range(3)]
    assert [o.count("var CircuitsVis") for o in inside] == [1, 0, 0]
    notebook.reset()  # e.g. after the output that carried it was cleared
    assert views._repr_html_().count("var CircuitsVis") == 1
    notebook.reset()


def test_a_notebook_displays_explain_inline_offline(tiny_run, monkeypatch):
    import nbclient
    import nbformat

    from memlens.analysis.per_example import greedy_answers
    from memlens.training.run import load_run

    # The kernel inherits this environment: every proxy points nowhere.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cells = [f"import memlens\nrun = memlens.load_run({str(tiny_run)!r})",
             "memlens.explain(run, 'train_noisy', 3)", "memlens.explain(run, 'test', 5)"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    outputs = [o for c in nb.cells for o in c.outputs]
    assert not [o for o in outputs if o["output_type"] == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert len(html) == 2
    everything = "\n".join(html)
    # Each bundle inlined once, in the first view; nothing is loaded from anywhere.
    assert everything.count("var CircuitsVis") == 1 and everything.count("window.Plotly = Plotly") == 1
    assert "var CircuitsVis" in html[0] and not re.search(r'<script[^>]+src="http', everything)
    # The example's values: its tokens, label, prediction and the numbers the panels draw.
    run = load_run(tiny_run)
    ex = run.splits["train_noisy"][3:4]
    vocab = run.task.tokenizer.vocab
    words = lambda ids: " ".join(vocab[i] for i in ids)  # noqa: E731
    first = ex.answer_pos[0] + 1
    line = (f"noisy-3: {words(ex.tokens[0, 1:first])} | label {words(ex.labels[0])} | true label "
            f"{words(ex.true_labels[0])} | prediction {words(greedy_answers(run.model, ex)[0])}")
    assert line in html[0] and "test-5: " in html[1]
    data = json.loads(re.search(r'<script type="application/json" id="mx-[0-9a-f]+-data">(.*?)</script>',
                                html[0], re.S).group(1).replace("<\\/", "</"))
    shown = data["examples"][0]
    assert shown["id"] == "noisy-3" and shown["t"] == ex.tokens[0].tolist()
    probs = run.model(ex.tokens)[0, ex.answer_pos].softmax(-1).detach()  # the last lens point: the output
    true = probs.gather(-1, ex.true_labels[0][:, None])[:, 0]
    last = [round(v / 1000, 3) for v in (s[0] for s in shown["lens"][-1])]
    assert last == pytest.approx(true.tolist(), abs=1e-3)
