"""Per-example measurements behind the explorer (``memlens explore``, ``memlens.explain``).

The aggregate analyses average over examples; these keep one row per example so that a single
memorized example can be read: its greedy answer, its attention patterns, the direct logit
attribution of every head and MLP neuron to its label and to its true label, and the recall of
its label when an intermediate is patched in from a changing and from a preserving
counterfactual. Every function is pure ``(model, examples, ...) -> tensors``; the viz layer
(:mod:`memlens.viz.explore`) only encodes and draws them.

An example's counterfactuals must not depend on which other examples were asked for at the same
time (the recipes draw per row), so they are drawn in fixed **blocks** of :data:`BLOCK` examples
of its split (rows ``256 k .. 256 k + 255``) with the run's seed: the page and a notebook show
the same counterfactual for ``noisy-17``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from memlens import backend
from memlens.backend import Model
from memlens.analysis.common import (
    AnalysisError, check_examples, check_layers, check_positions, model_device,
)
from memlens.analysis.counterfactuals import matched_counterfactuals
from memlens.tasks.base import Examples

BLOCK = 256  # examples per counterfactual block (see the module docstring)


@torch.no_grad()
def greedy_answers(model: Model, examples: Examples, batch: int = 1024) -> Int[Tensor, "n answer_len"]:
    """The answer the model writes itself, slot by slot (greedy decoding): ``(n, answer_len)``.

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> tuple(greedy_answers(model, task.generate(0).test[:3]).shape)
    (3, 3)
    """
    device = model_device(model)
    out = []
    for start in range(0, len(examples), batch):
        part = examples[start:start + batch]
        tokens = part.tokens.to(device)
        answer = part.labels.clone().to(device)
        # Where the label is the argmax at every slot with the label teacher-forced, greedy
        # decoding writes the label: only the other rows are decoded slot by slot.
        forced = model(tokens)[:, part.answer_pos.to(device)].argmax(-1)
        redo = (forced != answer).any(-1).nonzero().flatten()
        if len(redo):
            tokens = tokens[redo].clone()
            for pos in part.answer_pos.tolist():
                # Each slot sees the answer tokens the model itself wrote before it.
                tokens[:, pos + 1] = model(tokens)[:, pos].argmax(-1)
            answer[redo] = tokens[:, part.answer_token_pos.to(device)]
        out.append(answer.cpu())
    return torch.cat(out) if out else torch.zeros(0, len(examples.answer_pos), dtype=torch.long)


@torch.no_grad()
def attention_patterns(model: Model, examples: Examples) -> Float[Tensor, "n layers heads pos pos"]:
    """Every layer's attention pattern of each example: ``(n, layers, heads, pos, pos)``, run with
    the examples' labels teacher-forced (as trained).

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2), task, seed=0)
    >>> pattern = attention_patterns(model, task.generate(0).test[:3])
    >>> tuple(pattern.shape), bool(torch.allclose(pattern.sum(-1), torch.ones(3, 2, 2, 10)))
    ((3, 2, 2, 10, 10), True)
    """
    check_examples(model, examples)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(examples.tokens.to(model_device(model)), return_type=None,
                                    names_filter=lambda n: n in names)
    return torch.stack([cache[n].float().cpu() for n in names], 1)


@dataclass
class DirectAttribution:
    """Direct logit attribution at the answer-predicting positions, per target token.

    Every tensor starts ``(n, answer_len, targets)``: ``heads`` ends ``(layers, heads)``,
    ``neurons`` ``(layers, d_mlp)``, ``attn_bias`` and ``mlp_bias`` ``(layers,)``; ``embed`` (token
    and position embeddings) and ``const`` (final LayerNorm bias and unembedding bias) have no
    more axes. Their sum is the model's logit of each target (the final LayerNorm's scale is
    that of the example's own residual stream, as in ``ActivationCache.logit_attrs``).
    """

    heads: Tensor
    neurons: Tensor
    attn_bias: Tensor
    mlp_bias: Tensor
    embed: Tensor
    const: Tensor

    def total(self) -> Tensor:
        """The sum of every part: the logits ``(n, answer_len, targets)``."""
        return (self.heads.sum((-1, -2)) + self.neurons.sum((-1, -2)) + self.attn_bias.sum(-1)
                + self.mlp_bias.sum(-1) + self.embed + self.const)


@torch.no_grad()
def direct_logit_attribution(model: Model, examples: Examples,
                             targets: Int[Tensor, "n answer_len k"]) -> DirectAttribution:
    """What each head, each MLP neuron, the embeddings and the biases write directly into the
    logit of ``targets`` (``(n, answer_len, k)`` token ids: e.g. the label and the true label) at
    each answer-predicting position, through the final LayerNorm.

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> ex = task.generate(0).train[:4]
    >>> dla = direct_logit_attribution(model, ex, torch.stack([ex.labels, ex.true_labels], -1))
    >>> logits = model(ex.tokens)[:, ex.answer_pos].gather(-1, ex.labels[..., None])[..., 0]
    >>> torch.allclose(dla.total()[..., 0], logits, atol=1e-4)
    True
    """
    check_examples(model, examples)
    n, n_answer = examples.labels.shape
    if targets.ndim != 3 or tuple(targets.shape[:2]) != (n, n_answer):
        raise AnalysisError(f"targets must be (n, answer_len, k) = ({n}, {n_answer}, k), got "
                            f"{tuple(targets.shape)}")
    cfg, device = model.cfg, model_device(model)
    params = backend.canonical_params(model)
    layers = range(cfg.n_layers)
    names = {"blocks.0.hook_resid_pre", f"blocks.{cfg.n_layers - 1}.hook_resid_post"}
    names |= {f"blocks.{i}.attn.hook_z" for i in layers} | {f"blocks.{i}.mlp.hook_post" for i in layers}
    _, cache = model.run_with_cache(examples.tokens.to(device), return_type=None,
                                    names_filter=lambda x: x in names)
    pos = examples.answer_pos.to(device)
    at = {k: cache[k][:, pos].float() for k in names}  # (n, answer, ...)
    final = at[f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    w_u = params["unembed.W_U"].float()[:, targets.to(device)]  # (d_model, n, answer, k)
    w_u = w_u.permute(1, 2, 3, 0)  # (n, answer, k, d_model)
    const = params["unembed.b_U"].float()[targets.to(device)]
    if cfg.normalization_type in ("LN", "LNPre"):
        # LayerNorm is linear once its scale is fixed: centre each part, divide by the scale.
        centred = final - final.mean(-1, keepdim=True)
        scale = (centred.pow(2).mean(-1, keepdim=True) + cfg.eps).sqrt()[..., None]  # (n, a, 1, 1)
        if cfg.normalization_type == "LN":
            const = const + w_u @ params["ln_final.b"].float()
            w_u = w_u * params["ln_final.w"].float()
        direction = (w_u - w_u.mean(-1, keepdim=True)) / scale
    else:
        direction = w_u

    def onto(x: Tensor) -> Tensor:  # (n, answer, ..., d_model) -> (n, answer, k, ...)
        return torch.einsum("na...d,nakd->nak...", x, direction)

    heads, neurons, attn_bias, mlp_bias = [], [], [], []
    for i in layers:
        w_o = params[f"blocks.{i}.attn.W_O"].float()  # (heads, d_head, d_model)
        heads.append(onto(torch.einsum("nahe,hed->nahd", at[f"blocks.{i}.attn.hook_z"], w_o)))
        # Each neuron writes its activation times its row of W_out.
        per_neuron = torch.einsum("md,nakd->nakm", params[f"blocks.{i}.mlp.W_out"].float(), direction)
        neurons.append(per_neuron * at[f"blocks.{i}.mlp.hook_post"][:, :, None])
        attn_bias.append(direction @ params[f"blocks.{i}.attn.b_O"].float())
        mlp_bias.append(direction @ params[f"blocks.{i}.mlp.b_out"].float())
    return DirectAttribution(
        heads=torch.stack(heads, -2).cpu(), neurons=torch.stack(neurons, -2).cpu(),
        attn_bias=torch.stack(attn_bias, -1).cpu(), mlp_bias=torch.stack(mlp_bias, -1).cpu(),
        embed=onto(at["blocks.0.hook_resid_pre"]).cpu(), const=const.cpu())


def matched_entries(task) -> list[tuple[str, int | None]]:
    """The intermediates (name, column) that have both a changing and a preserving recipe.

    >>> from memlens.tasks import make_task
    >>> matched_entries(make_task("fda", preset="tiny"))
    [('column_sum', 0), ('column_sum', 1), ('carry', 1), ('carry', 2)]
    """
    change = task.entries(kind="change")
    return [e for e in task.entries(kind="preserve") if e in change]


def default_site(model: Model, task, name: str, column: int | None) -> dict:
    """The site used where no ``patching.json`` site exists: the last layer's input
    (``resid_pre``) at the position that predicts the first answer token revealing the
    intermediate (the last eligible position). A fixed rule: it never looks at the example.

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2), task, seed=0)
    >>> default_site(model, task, "carry", 1)
    {'layer': 1, 'position': 6}
    """
    return {"layer": model.cfg.n_layers - 1, "position": task.eligible_positions(name, column)[-1]}


@dataclass
class PatchOutcomes:
    """One intermediate patched at ``site`` in each requested example.

    ``valid[i]``: example i has both a changing and a preserving counterfactual. Per kind
    (``change``, ``preserve``): ``tokens`` (the counterfactual prompts, the example's label
    teacher-forced), ``recall`` (the label is still the argmax at every answer slot) and ``logp``
    (the label's log-probability summed over slots) after the patch; ``base_recall`` and
    ``base_logp`` unpatched. Rows of invalid examples are zero.
    """

    label: str
    site: dict
    edited_positions: list[int]
    valid: Tensor
    base_recall: Tensor
    base_logp: Tensor
    tokens: dict[str, Tensor]
    recall: dict[str, Tensor]
    logp: dict[str, Tensor]


def _block_pairs(split: Examples, indices: list[int], name: str, column: int | None, seed: int):
    """Per requested index: (row in its block's matched pairs, those pairs), or None."""
    from memlens.tasks import task_for

    task = task_for(split)
    found: dict[int, tuple[int, object] | None] = {}
    for block in sorted({i // BLOCK for i in indices}):
        start = block * BLOCK
        rows = split[start:start + BLOCK]
        mask = task.analysis_mask(rows)
        try:
            pairs = matched_counterfactuals(rows[mask], name, column, seed=seed) if mask.any() else None
        except AnalysisError:  # no example of this block has both counterfactuals
            pairs = None
        # Position of each block row among the matched pairs' rows (-1: none).
        row_of = torch.full((len(rows),), -1, dtype=torch.long)
        if pairs is not None:
            kept = mask.nonzero().flatten()[pairs.valid]
            row_of[kept] = torch.arange(len(kept))
        for i in indices:
            if i // BLOCK == block:
                r = int(row_of[i - start])
                found[i] = None if r < 0 else (r, pairs)
    return found


def _sources(split: Examples, target: Examples, indices: list[int], found: dict) -> dict[str, Tensor]:
    """Per kind, the counterfactual prompts with each example's own label teacher-forced (so
    that source and target differ in the edited prompt tokens only); the example itself where
    it has none."""
    tokens = {k: target.tokens.clone() for k in ("change", "preserve")}
    by_block: dict[int, tuple] = {}  # id(pairs) -> (pairs, positions in indices, rows in pairs)
    for j, i in enumerate(indices):
        if found[i] is not None:
            r, pairs = found[i]
            _, js, rows = by_block.setdefault(id(pairs), (pairs, [], []))
            js.append(j)
            rows.append(r)
    for pairs, js, rows in by_block.values():
        for kind in tokens:
            source = getattr(pairs, kind).tokens[rows].clone()
            source[:, split.answer_token_pos] = target.labels[js]
            tokens[kind][js] = source
    return tokens


def _label_scores(logits: Tensor, examples: Examples) -> tuple[Tensor, Tensor]:
    """Recall of the label (argmax at every slot) and its log-probability summed over slots."""
    at = logits[:, examples.answer_pos.to(logits.device)].float().cpu()
    recall = (at.argmax(-1) == examples.labels).all(-1)
    return recall, at.log_softmax(-1).gather(-1, examples.labels[..., None])[..., 0].sum(-1)


@torch.no_grad()
def patch_outcomes(model: Model, split: Examples, indices: list[int],
                   sites: dict[tuple[str, int | None], dict], seed: int = 0) -> dict[str, PatchOutcomes]:
    """Patch each intermediate ``(name, column)`` of ``sites`` from each example's changing and
    preserving counterfactual into its own run at its site (``{"layer", "position"}``,
    ``resid_pre``), for examples ``indices`` of ``split`` (a whole split: counterfactuals are
    drawn per block, module docstring). Keyed by the intermediate's label (``column_sum[0]``).

    The examples' own run is computed once; each patched run starts at the site's layer from it
    (the same logits as :func:`~memlens.analysis.patching.run_with_patch`).

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> test = task.generate(0).test
    >>> out = patch_outcomes(model, test, [0, 1, 300], {("column_sum", 0): {"layer": 0, "position": 5}})
    >>> out["column_sum[0]"].valid.tolist(), tuple(out["column_sum[0]"].tokens["change"].shape)
    ([True, True, True], (3, 10))
    """
    from memlens.tasks import task_for

    if not indices:
        raise AnalysisError("no example indices given")
    bad = [i for i in indices if not 0 <= i < len(split)]
    if bad:
        raise AnalysisError(f"indices {bad} out of range: the split has 0..{len(split) - 1}")
    layers = check_layers(model, [site["layer"] for site in sites.values()])
    check_positions(split.tokens.shape[1], [site["position"] for site in sites.values()])
    task, device = task_for(split), model_device(model)
    target = split[torch.tensor(indices, dtype=torch.long)]
    names = {f"blocks.{layer}.hook_resid_pre" for layer in layers}
    logits, cache = model.run_with_cache(target.tokens.to(device), names_filter=lambda x: x in names)
    base_recall, base_logp = _label_scores(logits, target)
    outcomes = {}
    for (name, column), site in sites.items():
        found = _block_pairs(split, indices, name, column, seed)
        valid = torch.tensor([found[i] is not None for i in indices], dtype=torch.bool)
        tokens = _sources(split, target, indices, found)
        layer, pos = site["layer"], site["position"]
        # The sources' residual stream entering the site's layer, written into the examples'
        # own at the site's position; the run goes on from that layer.
        source = model(torch.cat([tokens["change"], tokens["preserve"]]).to(device), stop_at_layer=layer)
        resid = cache[f"blocks.{layer}.hook_resid_pre"].repeat(2, 1, 1)
        resid[:, pos] = source[:, pos]
        patched = backend.run_from_layer(model, resid, layer)
        recall, logp = _label_scores(patched, Examples.concat([target] * 2))
        n = len(indices)
        edited = next((f[1].edited_positions for f in found.values() if f), [])
        outcomes[task.intermediate(name).label(column)] = PatchOutcomes(
            task.intermediate(name).label(column), {"layer": layer, "position": pos}, list(edited),
            valid, base_recall, base_logp, tokens,
            {k: recall[i * n:(i + 1) * n] & valid for i, k in enumerate(("change", "preserve"))},
            {k: torch.where(valid, logp[i * n:(i + 1) * n], torch.zeros(n))
             for i, k in enumerate(("change", "preserve"))})
    return outcomes
