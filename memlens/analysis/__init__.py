"""Analyses on the hook API: pure functions ``(model, examples, ...) -> Result``.

Each result has ``.to_frame()`` (long pandas) and ``.figure()`` (plotly);
``memlens analyze RUN`` runs them with the defaults of ``memlens.analysis.runner``.
"""

from memlens.analysis.common import AnalysisError
from memlens.analysis.counterfactuals import CounterfactualPairs, make_counterfactuals
from memlens.analysis.encoding import EncodingResult, encoding
from memlens.analysis.intermediate_patching import PatchIntermediateResult, patch_intermediate
from memlens.analysis.interventions import InterventionResult, inlp_basis, intervene
from memlens.analysis.logit_lens import LogitLensResult, logit_lens
from memlens.analysis.neurons import NeuronTable, neuron_table
from memlens.analysis.patching import patch_grid, run_with_patch
from memlens.analysis.probes import ProbeResult, fit_probes, probe_targets

__all__ = [
    "AnalysisError", "CounterfactualPairs", "EncodingResult", "InterventionResult",
    "LogitLensResult", "NeuronTable", "PatchIntermediateResult", "ProbeResult", "encoding", "fit_probes",
    "inlp_basis", "intervene", "logit_lens", "make_counterfactuals", "neuron_table", "patch_grid",
    "patch_intermediate", "probe_targets", "run_with_patch",
]
