"""Analyses on the hook API: pure functions ``(model, examples, ...) -> Result``."""

from memlens.analysis.common import AnalysisError
from memlens.analysis.logit_lens import LogitLensResult, logit_lens
from memlens.analysis.probes import ProbeResult, fit_probes, probe_targets

__all__ = ["AnalysisError", "LogitLensResult", "ProbeResult", "fit_probes", "logit_lens",
           "probe_targets"]
