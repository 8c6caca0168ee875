"""Attention-pattern views with circuitsvis that work offline.

``str()`` of a circuitsvis object loads its JavaScript from a CDN, which draws nothing without a
network; its ``local_src`` inlines the 1.3 MB bundle. A page with several views carries the
bundle once: the first view's script publishes ``CircuitsVis`` on ``window`` and the others only
call ``render``.
"""

from __future__ import annotations

import html
import json
import uuid
from pathlib import Path

import torch

from memlens.analysis.common import model_device
from memlens.io import atomic_write_text
from memlens.tasks.base import Examples
from memlens.viz.notebook import ViewHTML


def _bundle() -> str:
    """The circuitsvis JavaScript bundle, cut out of a rendered view's ``local_src``."""
    import circuitsvis as cv

    src = cv.attention.attention_patterns(tokens=["a", "b"], attention=torch.ones(1, 2, 2)).local_src
    start = src.index('type="module">') + len('type="module">')
    end = src.rindex("CircuitsVis.render(")
    return src[start:end]


def bundle_script() -> str:
    """A ``<script>`` that defines the circuitsvis components and publishes ``CircuitsVis`` on
    ``window``; a page needs it once, before any :func:`render_view`."""
    return '<script type="module">' + _bundle() + "\nwindow.CircuitsVis = CircuitsVis;\n</script>"


MISSING_BUNDLE = ("The circuitsvis bundle is not loaded in this page: the output that carried it was "
                  "cleared or the page was reloaded. Run memlens.viz.notebook.reset() and rerun this cell.")


def render_view(component: str, props: dict, title: str, css_class: str) -> str:
    """One circuitsvis ``component`` (``AttentionPatterns``, ``TextNeuronActivations``...) with
    ``props``, under a heading, drawn by the bundle that :func:`bundle_script` loaded."""
    div = f"circuits-vis-{uuid.uuid4().hex[:12]}"
    # In a notebook the bundle's script may run after this one: wait for it (5 s at most).
    return (f'<div class="{css_class}"><h4>{html.escape(title)}</h4><div id="{div}"></div></div>'
            f'<script type="module">(function draw(n) {{ if (window.CircuitsVis) {{ '
            f'window.CircuitsVis.render("{div}", window.CircuitsVis.{component}, {json.dumps(props)}); }} '
            f'else if (n < 200) {{ setTimeout(function () {{ draw(n + 1); }}, 25); }} '
            f'else {{ document.getElementById("{div}").textContent = {json.dumps(MISSING_BUNDLE)}; }} }})(0);'
            "</script>")


def attention_views_html(views: list[tuple[str, list[str], torch.Tensor]],
                         include_bundle: bool = True) -> ViewHTML:
    """HTML for several attention views, ``(title, tokens, attention (heads, pos, pos))`` each,
    with the circuitsvis bundle inlined once (``include_bundle=False`` when the page already has
    it from an earlier call). A string that a notebook also displays inline, offline
    (:class:`~memlens.viz.notebook.ViewHTML`).

    >>> views = [(t, ["a", "b"], torch.ones(2, 2, 2) / 2) for t in ("clean", "noisy")]
    >>> html = attention_views_html(views)
    >>> html.count("CircuitsVis.render("), html.count("unpkg.com")
    (2, 0)
    """
    parts = [render_view("AttentionPatterns", {"tokens": tokens, "attention": attention.float().tolist()},
                         title, "attention-view") for title, tokens, attention in views]
    return ViewHTML("\n".join(parts), ("circuitsvis",), include_bundles=include_bundle)


def write_views_page(body: str, path: str | Path, title: str = "memlens views") -> Path:
    """A self-contained HTML page around view HTML (from :func:`attention_views_html` or
    ``memlens.viz.neuron_views.token_neuron_views_html``), written atomically; opens offline.

    >>> import tempfile
    >>> views = [("clean", ["a", "b"], torch.ones(1, 2, 2) / 2)]
    >>> page = write_views_page(attention_views_html(views), Path(tempfile.mkdtemp()) / "a.html")
    >>> page.read_text().startswith("<!DOCTYPE html>")
    True
    """
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title></head><body>\n{body}\n</body></html>\n")
    path = Path(path)
    atomic_write_text(path, page)
    return path


@torch.no_grad()
def attention_of(model, examples: Examples, index: int, layer: int) -> tuple[list[str], torch.Tensor]:
    """Token strings and the attention pattern (heads, pos, pos) of one example at ``layer``."""
    tokens = examples.tokens[index: index + 1].to(model_device(model))
    name = f"blocks.{layer}.attn.hook_pattern"
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == name, return_type=None)
    strings = model.to_str_tokens(tokens[0])
    return [f"{s}" for s in strings], cache[name][0].cpu()


def clean_and_noisy_views(model, splits: dict[str, Examples], layers: list[int] | None = None
                          ) -> list[tuple[str, list[str], torch.Tensor]]:
    """A clean and a noisy training example side by side, at each of ``layers`` (default all)."""
    layers = list(range(model.cfg.n_layers)) if layers is None else layers
    views = []
    for group in ("train_clean", "train_noisy"):
        examples = splits.get(group)
        if examples is None or len(examples) == 0:
            continue
        for layer in layers:
            tokens, pattern = attention_of(model, examples, 0, layer)
            views.append((f"{group.replace('train_', '')} example 0, layer {layer}", tokens, pattern))
    return views
