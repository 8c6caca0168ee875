"""memlens: how small transformers memorize label noise while still reasoning.

Tasks, training and analyses on TransformerLens models (``HookedTransformer`` on TransformerLens
3.9, ``TransformerBridge`` on 4.x); see README.md and docs/api.md. The public API, by layer:

* tasks: :func:`make_task`, :func:`register_task`, :class:`Examples`, :class:`Dataset`,
  :class:`TaskBase`, :class:`Intermediate`;
* training and runs: :func:`make_run_config`, :func:`train`, :func:`load_run`, :class:`Run`,
  :func:`phase_summary`;
* analyses (``(model, examples, ...) -> Result``, each with ``.to_frame()`` and ``.figure()``):
  :func:`behaviour`, :func:`logit_lens`, :func:`fit_probes`, :func:`probe_study`,
  :func:`make_counterfactuals`, :func:`matched_counterfactuals`, :func:`patch_intermediate`,
  :func:`intermediate_dependence`, :func:`patch_grid`, :func:`run_with_patch`, :func:`intervene`,
  :func:`encoding`, :func:`neuron_table`, :func:`classify_neurons`, :func:`score_outliers`,
  :func:`neuron_patching`, :func:`neuron_study`, :func:`fourier_neurons`,
  :func:`edge_attribution`, :func:`faithfulness`;
* run level: :func:`analyze_run`, :func:`load_analysis`, :func:`write_report`,
  :func:`score_run_dirs`, :func:`claim_verdicts`, :func:`reproduce`;
* one example at a time: :func:`explain` (its panels inline in a notebook; ``memlens explore``
  writes them for many examples into one offline page).
"""

import importlib
import sys
import types

# Names are imported on first use (PEP 562): `memlens data ...` and the reproduce scheduler
# need neither TransformerLens nor plotly, which take seconds to import.
_WHERE = {
    "memlens.analysis": (
        "behaviour", "classify_neurons", "edge_attribution", "encoding", "faithfulness",
        "fit_probes", "fourier_neurons", "intermediate_dependence", "intervene", "logit_lens",
        "make_counterfactuals", "matched_counterfactuals", "neuron_patching", "neuron_study",
        "neuron_table", "patch_grid", "patch_intermediate", "probe_study", "run_with_patch",
        "score_outliers"),
    "memlens.analysis.runner": ("analyze_run", "load_analysis"),
    "memlens.claims": ("claim_verdicts", "score_run_dirs"),
    "memlens.reproduce": ("reproduce",),
    "memlens.tasks": ("Dataset", "Examples", "Intermediate", "TaskBase", "make_task", "register_task"),
    "memlens.training": ("Run", "load_run", "make_run_config", "phase_summary", "train"),
    "memlens.viz.explore": ("explain",),
    "memlens.viz.report": ("write_report",),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}


class _Package(types.ModuleType):
    """``memlens.reproduce`` stays the function once the submodule of that name is imported
    (importing a submodule sets the package attribute to the module)."""

    def __getattribute__(self, name: str):
        value = super().__getattribute__(name)
        if name == "reproduce" and isinstance(value, types.ModuleType):
            value = value.reproduce
        return value


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(_MODULE_OF[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'memlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))


__version__ = "0.2.0"

__all__ = [
    # tasks
    "Dataset", "Examples", "Intermediate", "TaskBase", "make_task", "register_task",
    # training and runs
    "Run", "load_run", "make_run_config", "phase_summary", "train",
    # analyses
    "behaviour", "classify_neurons", "edge_attribution", "encoding", "faithfulness", "fit_probes",
    "fourier_neurons", "intermediate_dependence", "intervene", "logit_lens", "make_counterfactuals",
    "matched_counterfactuals", "neuron_patching", "neuron_study", "neuron_table", "patch_grid",
    "patch_intermediate", "probe_study", "run_with_patch", "score_outliers",
    # run level
    "analyze_run", "claim_verdicts", "load_analysis", "reproduce", "score_run_dirs", "write_report",
    # one example at a time
    "explain",
    "__version__",
]
