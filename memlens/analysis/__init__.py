"""Analyses on the hook API: pure functions ``(model, examples, ...) -> Result``.

Each result has ``.to_frame()`` (long pandas), ``.summary()``, ``.figure()`` (plotly, drawn by
the result class' one ``render``); ``memlens analyze RUN`` runs them with the study's defaults
(``memlens.analysis.runner``), on the examples ``memlens.analysis.selection`` picks.
"""

from memlens.analysis.behaviour import BehaviourResult, behaviour
from memlens.analysis.circuits import edge_attribution, faithfulness
from memlens.analysis.common import AnalysisError, Result, ResultSet
from memlens.analysis.counterfactuals import (
    CounterfactualPairs, MatchedPairs, make_counterfactuals, matched_counterfactuals,
)
from memlens.analysis.dependence import DependenceResult, intermediate_dependence
from memlens.analysis.encoding import EncodingResult, encoding
from memlens.analysis.fourier import FourierResult, fourier_neurons
from memlens.analysis.heuristics import HeuristicResult, OutlierResult, classify_neurons, score_outliers
from memlens.analysis.intermediate_patching import PatchIntermediateResult, patch_intermediate
from memlens.analysis.interventions import InterventionResult, inlp_basis, intervene
from memlens.analysis.logit_lens import LogitLensResult, logit_lens, takeover_point
from memlens.analysis.neuron_patching import NeuronPatchingResult, neuron_patching
from memlens.analysis.neuron_study import NeuronStudyResult, neuron_study
from memlens.analysis.neurons import NeuronTable, neuron_table
from memlens.analysis.patching import patch_grid, run_with_patch
from memlens.analysis.probes import ProbeResult, ProbeStudyResult, fit_probes, probe_study, probe_targets

__all__ = [
    "AnalysisError", "BehaviourResult", "CounterfactualPairs", "DependenceResult", "EncodingResult",
    "FourierResult", "HeuristicResult", "InterventionResult", "LogitLensResult", "MatchedPairs",
    "NeuronPatchingResult", "NeuronStudyResult", "NeuronTable", "OutlierResult",
    "PatchIntermediateResult", "ProbeResult", "ProbeStudyResult", "Result", "ResultSet",
    "behaviour", "classify_neurons", "edge_attribution", "encoding", "faithfulness", "fit_probes",
    "fourier_neurons", "inlp_basis", "intermediate_dependence", "intervene", "logit_lens",
    "make_counterfactuals", "matched_counterfactuals", "neuron_patching", "neuron_study",
    "neuron_table", "patch_grid", "patch_intermediate", "probe_study", "probe_targets",
    "run_with_patch", "score_outliers", "takeover_point",
]
