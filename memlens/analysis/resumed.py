"""Answer logits of fixed examples under many interventions at one place, each run resumed there.

An intervention at layer ``L`` and positions ``>= p`` changes nothing below ``L`` nor (causal
attention) at positions before ``p``. Interventions (claim 4d's INLP and its controls) and
neuron patching (claim 6d) measure dozens of variants on the same examples, so the unintervened
run is recorded once and every variant runs layers ``L..`` at positions ``p..`` only, up to the
last answer-predicting position. Both analyses use :class:`ResumedRuns`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from memlens import backend
from memlens.backend import Model
from memlens.analysis.common import AnalysisError, check_layers, check_positions, model_device

SiteEdit = Callable[[Tensor, object], Tensor]  # a TransformerLens hook function on the site
HooksFor = Callable[[slice, int], list]  # (rows of the batch, first position run) -> fwd hooks


class ResumedRuns:
    """Answer logits of ``tokens`` (at ``answer_pos``) with an intervention at layer ``layer``,
    positions ``>= position``, for many interventions.

    An intervention is ``edit`` and/or ``hooks``. ``edit(act, hook)`` rewrites the residual
    stream at ``site`` (default ``blocks.{layer}.hook_resid_pre``, the layer's input: batch,
    every position, d_model), as a TransformerLens hook there would (it may change ``act`` in
    place and return None; on the resumed path it gets a copy and ``hook=None``).
    ``hooks(rows, first)`` gives forward hooks for the run of the examples ``rows`` (a slice of
    ``tokens``) that covers positions ``first..`` (a hook's position ``q`` is absolute position
    ``first + q``). An intervention may touch only layers ``>= layer`` and positions from
    ``position`` through the last answer-predicting one: the resumed run covers nothing else.

    Where the backend can resume a run (:func:`memlens.backend.can_resume`), the unintervened
    run is recorded once (its answer logits, the residual stream entering ``layer``, the keys
    and values of layers ``layer..``), and each intervened run starts at ``layer`` on positions
    ``position..`` through the last answer-predicting one, the earlier positions' keys and
    values cached; answer slots before ``position`` keep the unintervened logits. Such a run is
    fused (:class:`~memlens.training.fast_forward.FastForward`) when nothing is hooked and the
    fused forward covers the model, else TransformerLens' own
    (:func:`memlens.backend.resume_logits`). Where the backend cannot resume (the 4.x bridge),
    with ``resume=False``, or with a ``site`` other than the layer's input, the whole model runs
    with the intervention as hooks. Both give the same logits to float rounding
    (tests/analysis/test_resumed.py).

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2), task, seed=0)
    >>> ex = task.generate(0).test[:8]
    >>> runs = ResumedRuns(model, ex.tokens, ex.answer_pos.tolist(), layer=1, position=4)
    >>> zeroed = runs.logits(edit=lambda act, hook: act * 0)
    >>> tuple(zeroed.shape), bool((zeroed != runs.logits()).any())
    ((8, 3, 15), True)
    """

    def __init__(self, model: Model, tokens: Tensor, answer_pos: list[int], layer: int, position: int,
                 batch: int = 1024, resume: bool = True, site: str | None = None):
        check_layers(model, [layer])
        check_positions(tokens.shape[1], [position])
        if batch < 1:
            raise AnalysisError(f"batch={batch} is invalid: expected an integer >= 1")
        if len(tokens) == 0 or len(answer_pos) == 0:
            raise AnalysisError(f"nothing to run: {len(tokens)} examples, answer positions {list(answer_pos)}")
        self.model, self.tokens, self.layer, self.position = model, tokens, layer, position
        self.answer_pos, self.batch = list(answer_pos), batch
        # ``edit``'s hook point: the layer's input (resumable), or another point inside the
        # model (``site``, e.g. ``hook_resid_mid``), which the whole model runs with.
        pre = f"blocks.{layer}.hook_resid_pre"
        self.site = pre if site is None else site
        # Answer slots the intervention can reach, and their indices into the suffix run.
        self.slots = [j for j, pos in enumerate(self.answer_pos) if pos >= position]
        self.queries = [self.answer_pos[j] - position for j in self.slots]
        self.fast = resume and self.site == pre and backend.can_resume(model)
        self.chunks: list[tuple[Tensor, Tensor, list[Tensor], list[Tensor], tuple[Tensor, ...]]] = []
        if not self.fast:
            return
        device = model_device(model)
        layers = range(layer, model.cfg.n_layers)
        names = [self.site] + [f"blocks.{i}.attn.hook_{kv}" for i in layers for kv in "kv"] \
            + [f"blocks.{layer}.attn.hook_q"]
        for start in range(0, len(tokens), batch):
            logits, acts = backend.recorded_run(model, tokens[start:start + batch].to(device), names,
                                                logit_positions=self.answer_pos)
            self.chunks.append((logits, acts[self.site],
                                [acts[f"blocks.{i}.attn.hook_k"][:, :position] for i in layers],
                                [acts[f"blocks.{i}.attn.hook_v"][:, :position] for i in layers],
                                # The layer's own keys, values and queries, for edits of the
                                # site's position alone (backend.resume_logits' ``known``).
                                tuple(acts[f"blocks.{layer}.attn.hook_{kv}"] for kv in "kvq")))

    @torch.no_grad()
    def logits(self, edit: SiteEdit | None = None, hooks: HooksFor | None = None) -> Tensor:
        """``(n, answer slots, vocab)`` float logits on the CPU with the intervention (none: the
        unintervened run)."""
        if not self.fast:
            return self._whole(edit, hooks)
        out = []
        for i, (clean, resid, keys, values, recorded) in enumerate(self.chunks):
            rows = slice(i * self.batch, i * self.batch + len(clean))
            logits = clean
            if (edit is not None or hooks is not None) and self.slots:
                # A copy: an in-place edit or hook must not change the recorded run.
                known = None
                if edit is None:
                    suffix = resid[:, self.position:].clone()
                else:
                    changed = resid.clone()
                    edited = edit(changed, None)
                    suffix = (changed if edited is None else edited)[:, self.position:]
                    # An edit of the site's position alone leaves the layer's keys and values
                    # elsewhere as recorded: the fused suffix reuses them.
                    if torch.equal(suffix[:, 1:], resid[:, self.position + 1:]):
                        known = recorded
                logits = clean.clone()
                with self.model.hooks(fwd_hooks=[] if hooks is None else hooks(rows, self.position)):
                    logits[:, self.slots] = backend.resume_logits(self.model, suffix, self.layer, keys, values,
                                                                  self.queries, known).to(logits.dtype)
            out.append(logits.float().cpu())
        return torch.cat(out)

    def _whole(self, edit: SiteEdit | None, hooks: HooksFor | None) -> Tensor:
        """The whole model, the intervention as hooks (the path of models that cannot resume)."""
        device = model_device(self.model)
        out = []
        for start in range(0, len(self.tokens), self.batch):
            rows = slice(start, min(start + self.batch, len(self.tokens)))
            fwd = ([] if edit is None else [(self.site, edit)]) + ([] if hooks is None else hooks(rows, 0))
            with self.model.hooks(fwd_hooks=fwd):
                out.append(self.model(self.tokens[rows].to(device))[:, self.answer_pos].float().cpu())
        return torch.cat(out)
