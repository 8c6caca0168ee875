"""Claims 4 and 5 on models built to contradict them, and on one built to satisfy them.

Three memorizers are bolted onto a small untrained FDA model with permanent hooks, so that the
memorized noisy labels come from a mechanism we wrote:

* **look-up**: the noisy label is written into the final residual whenever the input tokens are
  those of a noisy example (read from the token embeddings): a literal look-up table;
* **distributed** (the claim): the column sums are computed from the tokens and written into the
  residual stream at one site (layer 1, the ``=`` position); the noisy label is written when the
  input tokens *and* the column sums read back from that site match a memorized example;
* **intermediate only**: as distributed, but keyed on the column sums alone.

Patching runs with ``method="full"`` (a whole forward per grid point), the engine that is exact
for models whose hooks read the input tokens. The statistics must come out: look-up, claim 4
and 5 do not hold; distributed, both hold; intermediate only, 5b does not hold.
"""

import json

import pytest
import torch

from memlens.analysis.common import ResultSet, to_jsonable
from memlens.analysis.dependence import intermediate_dependence
from memlens.claims import PARTS, RunData, score_part
from memlens.models import ModelConfig, build_model
from memlens.tasks import make_task

SITE = {"layer": 1, "position": 6}  # the "=" token of 2-digit addition, input of layer 1
PART = {p.key: p for p in PARTS}


def solve_normalized(model, token: int) -> torch.Tensor:
    """A final normalized residual whose unembedding puts ``token`` far ahead of the others."""
    target = torch.full((model.cfg.d_vocab,), -20.0)
    target[token] = 20.0
    w_u = model.W_U.detach()
    return torch.linalg.lstsq(w_u.T, (target - model.b_U.detach())[:, None]).solution[:, 0]


def memorizer(kind: str, seed: int = 0):
    task = make_task("fda", preset="tiny", noise_rate=0.1)
    data = task.generate(0)
    model = build_model(ModelConfig(n_layers=2, d_model=64, n_heads=2), task, seed=seed).eval()
    noisy = data.splits["train_noisy"]
    prompt = torch.tensor([1, 2, 4, 5])  # a1 a0 b1 b0 (position 3 is "+")
    zero = task.tokenizer.token_to_id("0")
    w_e = model.W_E.detach()
    gen = torch.Generator().manual_seed(seed)
    directions = torch.linalg.qr(torch.randn(64, 38, generator=gen))[0].T  # 2 columns x 19 sums
    normalized = torch.stack([solve_normalized(model, t) for t in range(model.cfg.d_vocab)])

    def key(digits: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
        """One integer per example: the input digits, the column sums, or both."""
        by_tokens = (digits * torch.tensor([1000, 100, 10, 1])).sum(-1)
        by_sums = sums[:, 0] * 19 + sums[:, 1]
        return {"lookup": by_tokens, "distributed": by_tokens * 361 + by_sums,
                "intermediate": by_sums}[kind]

    keys = key(noisy.tokens[:, prompt] - zero, noisy.intermediates["column_sum"])
    unique = torch.tensor([int((keys == k).sum()) == 1 for k in keys])  # one label per key
    noisy, keys = noisy[unique], keys[unique]
    order = keys.argsort()
    keys, labels = keys[order], noisy.labels[order]
    state = {}

    def read_tokens(act, hook):  # the embedding is W_E[token]: recover the tokens exactly
        state["tokens"] = (act[..., None, :] == w_e).all(-1).float().argmax(-1)
        return act

    def write_sums(act, hook):  # the reasoning step: column sums into the residual at the site
        digits = state["tokens"][:, prompt] - zero
        for c, s in enumerate((digits[:, 1] + digits[:, 3], digits[:, 0] + digits[:, 2])):
            act[:, SITE["position"]] += 200 * directions[19 * c + s.clamp(0, 18)]
        return act

    def write_label(act, hook):  # the recall: the label stored under the example's key
        digits = state["tokens"][:, prompt] - zero
        resid = state["resid"][:, SITE["position"]]
        sums = torch.stack([(resid @ directions[19 * c:19 * c + 19].T).argmax(-1) for c in range(2)], 1)
        k = key(digits, sums)
        at = torch.searchsorted(keys, k).clamp(max=len(keys) - 1)
        hit = keys[at] == k
        for slot, pos in enumerate(data.train.answer_pos.tolist()):
            act[hit, pos] = normalized[labels[at[hit], slot]]
        return act

    def keep_resid(act, hook):
        state["resid"] = act
        return act

    model.add_hook("hook_embed", read_tokens, is_permanent=True)
    if kind != "lookup":
        model.add_hook("blocks.0.hook_resid_post", write_sums, is_permanent=True)
    model.add_hook("blocks.1.hook_resid_post", keep_resid, is_permanent=True)
    model.add_hook("ln_final.hook_normalized", write_label, is_permanent=True)
    return task, noisy, model


def fake_run(tmp_path, name, task, result) -> RunData:
    """A run directory holding just what claims 4-5 read, past the stage gate."""
    run = tmp_path / name
    (run / "analysis").mkdir(parents=True)
    header = {"task": "fda", "task_config": vars(task.config), "model": {}, "train": {}, "seed": 0}
    (run / "config.json").write_text(json.dumps({"run": header}))
    (run / "summary.json").write_text(json.dumps({"final_metrics": {"test_acc": 1.0,
                                                                    "noisy_memorized_acc": 1.0}}))
    (run / "analysis" / "patching.json").write_text(json.dumps(to_jsonable(result.to_json())))
    return RunData(run)


def scored(tmp_path, kind):
    task, noisy, model = memorizer(kind)
    with torch.no_grad():
        recalled = (model(noisy.tokens)[:, noisy.answer_pos].argmax(-1) == noisy.labels).all(-1)
    assert recalled.float().mean() > 0.95  # the mechanism memorizes the noise
    runs = []
    for seed in (0, 1):  # two "seeds": two independent draws of counterfactuals
        items = {}
        for column in (0, 1):
            res = intermediate_dependence(model, noisy, "column_sum", column, seed=seed, site=SITE,
                                          method="full")
            items[res.label] = res
        runs.append(fake_run(tmp_path, f"{kind}-s{seed}", task, ResultSet(items, name="patching")))
    return {key: score_part(PART[key], runs, n_boot=200) for key in ("4a", "5a", "5b")}


def test_lookup_fails_claims_4_and_5(tmp_path):
    rows = scored(tmp_path, "lookup")
    assert rows["4a"]["verdict"] == "does not hold", rows["4a"]
    assert rows["5a"]["verdict"] == "does not hold"
    assert rows["4a"]["mean"] == pytest.approx(0.0, abs=0.02)  # no patch reaches a look-up
    assert rows["5b"]["verdict"] == "holds"  # other inputs lose the label: true of a look-up too


def test_distributed_memorizer_holds_claims_4_and_5(tmp_path):
    rows = scored(tmp_path, "distributed")
    assert rows["4a"]["verdict"] == "holds" and rows["4a"]["mean"] > 0.9, rows["4a"]
    assert rows["5a"]["verdict"] == "holds" and rows["5b"]["verdict"] == "holds"


def test_memorizer_keyed_on_the_intermediate_alone_fails_5b(tmp_path):
    rows = scored(tmp_path, "intermediate")
    assert rows["4a"]["verdict"] == "holds"
    assert rows["5b"]["verdict"] == "does not hold", rows["5b"]  # the preserving input keeps it


def test_held_out_group_is_patched_at_the_site_only_and_matches_the_full_sweep():
    """The held-out clean group is read at the chosen site alone; its outcomes there equal a
    full sweep's of the same examples (the noisy group, swept everywhere, gets the same pairs)."""
    task, noisy, model = memorizer("distributed")
    res = intermediate_dependence(model, noisy, "column_sum", 0, clean_select=noisy[: len(noisy) // 2],
                                  clean_heldout=noisy, seed=0, method="full")
    assert {k: res.site[k] for k in ("layer", "position")} == SITE
    held, swept = res.groups["clean_heldout"], res.groups["noisy"]
    assert held.n == swept.n > 0.9 * len(noisy)  # examples with both counterfactuals
    assert tuple(held.grid["change"].shape) == (1, 1, held.n)
    assert tuple(swept.grid["change"].shape) == (len(res.layers), len(res.positions), swept.n)
    assert res.at_site("clean_heldout") == res.at_site("noisy")
    at_site = res.summary()["clean_heldout"]["mean"]
    assert at_site["patch_preserve"] - at_site["patch_change"] > 0.9  # the site carries the recall
    frame = res.to_frame()
    assert set(frame[frame["group"] == "clean_heldout"]["layer"]) == {SITE["layer"]}
