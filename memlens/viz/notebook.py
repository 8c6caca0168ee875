"""Views that display inline in Jupyter and VS Code with no network.

A circuitsvis object's own display loads its JavaScript from a CDN (blank offline) or, after
probing the network, inlines its 1.3 MB bundle in every output. memlens views carry their
JavaScript themselves instead: in a Jupyter kernel, the first view displayed inlines the
bundles it needs (plotly.js, circuitsvis) and later views reuse them from the page
(``window.Plotly``, ``window.CircuitsVis``): **once per kernel**. Outside a kernel (a view
rendered by a script, nbconvert of a fresh object) it cannot be known whether an earlier output
loaded them, so every view inlines them: **once per view**. Each view waits for its bundles and,
if they never come (the output that carried them was cleared, or the notebook was reopened in a
new page while the kernel lived on), says to call :func:`reset` and rerun the cell.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

_SENT: set[str] = set()  # bundles already sent to this kernel's page


@lru_cache(maxsize=None)
def plotly_script() -> str:
    """plotly.js inlined in a ``<script>`` that publishes ``window.Plotly``.

    >>> script = plotly_script()
    >>> script.count("window.Plotly = Plotly"), "cdn.plot.ly/plotly" in script
    (1, False)
    """
    from plotly.offline import get_plotlyjs

    return ('<script type="text/javascript">window.PlotlyConfig = {MathJaxConfig: "local"};</script>\n'
            f'<script type="text/javascript">{get_plotlyjs()}</script>')


@lru_cache(maxsize=None)
def circuitsvis_script() -> str:
    """The circuitsvis bundle inlined in a ``<script>`` that publishes ``window.CircuitsVis``.

    >>> script = circuitsvis_script()
    >>> script.count("var CircuitsVis"), "window.CircuitsVis = CircuitsVis" in script, "unpkg.com" in script
    (1, True, False)
    """
    from memlens.viz.attention import bundle_script

    return bundle_script()


BUNDLES = {"plotly": plotly_script, "circuitsvis": circuitsvis_script}


@lru_cache(maxsize=None)
def static_text(name: str) -> str:
    """A file of ``memlens/viz/static`` (the explorer's JavaScript and CSS).

    >>> "window.MemlensExplore" in static_text("explore.js")
    True
    """
    return resources.files("memlens.viz").joinpath("static", name).read_text(encoding="utf-8")


def in_kernel() -> bool:
    """True inside a Jupyter kernel (an IPython shell with a kernel attached).

    >>> in_kernel()  # a script, or pytest
    False
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def bundles_html(names: tuple[str, ...] | list[str], once: bool = True) -> str:
    """The ``<script>`` tags of the bundles ``names`` (``plotly``, ``circuitsvis``); with
    ``once`` in a kernel, only those not yet sent to it.

    >>> html = bundles_html(["circuitsvis"])
    >>> html.count("var CircuitsVis"), html.count("unpkg.com")
    (1, 0)
    >>> bundles_html(["vega"])
    Traceback (most recent call last):
    ...
    ValueError: unknown bundle 'vega': expected one of ['circuitsvis', 'plotly']
    """
    unknown = [n for n in names if n not in BUNDLES]
    if unknown:
        raise ValueError(f"unknown bundle {unknown[0]!r}: expected one of {sorted(BUNDLES)}")
    track = once and in_kernel()
    parts = []
    for name in names:
        if track and name in _SENT:
            continue
        parts.append(BUNDLES[name]())
        if track:
            _SENT.add(name)
    return "\n".join(parts)


def reset() -> None:
    """Forget which bundles this kernel sent: the next view inlines them again.

    >>> reset()
    >>> sorted(_SENT)
    []
    """
    _SENT.clear()


class ViewHTML(str):
    """HTML of views: a string to write into a page, which Jupyter and VS Code also display
    inline, offline (its ``_repr_html_`` inlines the bundles once per kernel).

    ``body`` draws the views from ``window`` bundles; the string itself starts with the bundles
    when ``include_bundles`` (for a page that has none yet).

    >>> view = ViewHTML("<p>hi</p>", include_bundles=False)
    >>> str(view), "var CircuitsVis" in view._repr_html_()
    ('<p>hi</p>', True)
    """

    body: str
    bundles: tuple[str, ...]

    def __new__(cls, body: str, bundles: tuple[str, ...] = ("circuitsvis",),
                include_bundles: bool = True) -> "ViewHTML":
        head = bundles_html(bundles, once=False) + "\n" if include_bundles else ""
        obj = super().__new__(cls, head + body)
        obj.body, obj.bundles = body, tuple(bundles)
        return obj

    def _repr_html_(self) -> str:
        return bundles_html(self.bundles) + "\n" + self.body
