"""The scorecard's machinery: intervals, three verdicts, the reference rule, claim verdicts, and
claim 1-2 statistics on curves whose answer is known."""

from pathlib import Path

import numpy as np
import pytest

from memlens.claims import (
    PARTS, _recorded_run, NotMeasured, Part, RunData, Unpaired, claim_verdicts, crossing, lag_fraction, leak_rate, parse_claims,
    score_part, to_markdown, true_label_first, worst_phase_difference,
)
from memlens.config import ConfigError
from memlens.stats import hierarchical_bootstrap, resample, verdict


class FakeRun(RunData):
    """A run whose part data is given directly."""

    def __init__(self, name, data):
        super().__init__(Path(name))
        self.data = data


def mean_part(threshold=0.9, direction=">=", reference_rule=False, role="verdict"):
    """A part whose per-seed value is the mean of 0/1 outcomes, resampled per example."""
    def load(run):
        if run.data is None:
            raise NotMeasured("no data")
        if isinstance(run.data, str):
            raise Unpaired(run.data)
        return {"x": np.asarray(run.data, float), "n": len(run.data)}

    def value(d, rng):
        return float(d["x"][resample(len(d["x"]), rng)].mean())
    return Part(9, "a", "mean outcome", threshold, direction, role, "examples", load, value,
                reference_rule=reference_rule, reference_load=load)


def seeds(rates, n=400, seed=0):
    rng = np.random.default_rng(seed)
    return [FakeRun(f"s{i}", (rng.random(n) < r).astype(float)) for i, r in enumerate(rates)]


@pytest.mark.parametrize("rates, expected", [
    ([0.98, 0.97, 0.99, 0.98, 0.97], "holds"),
    ([0.60, 0.62, 0.58, 0.61, 0.59], "does not hold"),
    ([0.80, 0.99, 0.95, 0.85, 0.97], "inconclusive"),  # seeds straddle the threshold
    ([0.90, 0.90, 0.90], "inconclusive"),  # sampling error alone puts it on both sides
])
def test_known_verdicts(rates, expected):
    row = score_part(mean_part(), seeds(rates), n_boot=400)
    assert row["verdict"] == expected, row
    lo, hi = row["ci95"]
    assert 0 <= lo <= row["mean"] <= hi <= 1  # a bounded statistic keeps a bounded interval
    assert row["n_seeds"] == len(rates) and row["n_units"] == [400] * len(rates)


def test_within_seed_sampling_widens_the_interval():
    # One seed: the interval comes from resampling examples alone, and shrinks with more of them.
    narrow = score_part(mean_part(), seeds([0.95], n=4000), n_boot=400)["ci95"]
    wide = score_part(mean_part(), seeds([0.95], n=100), n_boot=400)["ci95"]
    assert (wide[1] - wide[0]) > 2 * (narrow[1] - narrow[0]) > 0


def test_less_or_equal_direction_and_missing_data():
    row = score_part(mean_part(0.05, "<="), seeds([0.01, 0.02, 0.0]), n_boot=300)
    assert row["verdict"] == "holds"
    row = score_part(mean_part(), seeds([0.99]) + [FakeRun("s9", None)], n_boot=50)
    assert row["verdict"] == "not measured" and "s9: no data" in row["why"]
    assert row["mean"] is None and row["ci95"] is None


def test_seeds_without_a_baseline_are_left_out_of_paired_parts():
    runs = seeds([0.99, 0.98]) + [FakeRun("s7", "no baseline")]
    row = score_part(mean_part(), runs, n_boot=200)
    assert row["verdict"] == "holds" and row["n_seeds"] == 2 and row["unpaired"] == ["s7"]
    assert "no noise-free baseline: s7" in row["why"] and len(row["per_seed"]) == 2
    row = score_part(mean_part(), [FakeRun("s7", "no baseline")], n_boot=50)
    assert row["verdict"] == "not measured" and "no seed has a noise-free baseline" in row["why"]
    # A seed that lacks data for another reason still makes the part not measured.
    row = score_part(mean_part(), runs + [FakeRun("s9", None)], n_boot=50)
    assert row["verdict"] == "not measured" and "s9: no data" in row["why"]


def test_reference_rule_turns_holds_into_inconclusive():
    runs = seeds([0.98, 0.97, 0.99])
    passing_reference = FakeRun("memorizer", np.ones(300))
    failing_reference = FakeRun("memorizer", np.zeros(300))
    row = score_part(mean_part(reference_rule=True), runs, passing_reference, n_boot=300)
    assert row["verdict"] == "inconclusive" and "reference passes too" in row["why"]
    assert row["reference"] == 1.0
    row = score_part(mean_part(reference_rule=True), runs, failing_reference, n_boot=300)
    assert row["verdict"] == "holds" and row["reference"] == 0.0
    # without the rule the reference is shown but decides nothing
    assert score_part(mean_part(), runs, passing_reference, n_boot=300)["verdict"] == "holds"


def test_claim_verdicts_combine_parts():
    def row(part, verdict, role="verdict"):
        return {"claim": 4, "task": "fda", "part": part, "role": role, "verdict": verdict}
    combine = lambda rows: claim_verdicts(rows)[0]["verdict"]  # noqa: E731
    assert combine([row("a", "holds"), row("b", "does not hold", "diagnostic")]) == "holds"
    assert combine([row("a", "holds"), row("b", "inconclusive")]) == "inconclusive"
    assert combine([row("a", "not measured"), row("b", "does not hold")]) == "does not hold"
    assert combine([row("a", "not measured"), row("b", "holds")]) == "not measured"


def test_bootstrap_and_verdict_basics():
    out = hierarchical_bootstrap([np.array([1.0, 1.0]), np.array([0.0, 0.0])],
                                 lambda d, rng: float(d[resample(len(d), rng)].mean()), n_boot=300)
    assert out["point"] == 0.5 and out["ci95"][0] == 0.0 and out["ci95"][1] == 1.0
    assert verdict([0.2, 0.3], 0.0, ">") == "holds"
    assert verdict([0.0, 0.3], 0.0, ">") == "inconclusive"
    with pytest.raises(ValueError, match="direction='=>'"):
        verdict([0, 1], 0.5, "=>")


def curves(test, mem, true, n=2000):
    steps = np.arange(len(test)) * 100.0
    return {"steps": steps, "test": np.array(test), "mem": np.array(mem), "true": np.array(true),
            "n": {"test": n, "noisy": n, "clean": n}}


def test_claim1_on_known_curves():
    generalize_first = curves([0, .5, .95, .97, .97, .98], [0, 0, 0, .3, .7, .95],
                              [0, .45, .93, .6, .2, .01])
    assert crossing(generalize_first["steps"], generalize_first["mem"], 0.5) == 350.0
    assert lag_fraction(generalize_first, None) > 0.3
    assert true_label_first(generalize_first, None) == pytest.approx(.93 / .95)
    memorize_first = curves([0, .1, .2, .5, .92, .95], [0, .6, .9, .95, .97, .98],
                            [0, .05, .02, .01, .01, .0])
    assert lag_fraction(memorize_first, None) < 0
    assert true_label_first(memorize_first, None) < 0.8
    pure_memorizer = curves([0, 0, 0, 0], [0, .3, .8, .99], [0, 0, 0, 0])
    assert lag_fraction(pure_memorizer, None) == -1.0


def test_claim2_phase_and_leak_statistics():
    d = {"test": np.array([.99, .95, .97]), "base": np.array([.99, .99, .99]), "n": 2000}
    assert worst_phase_difference(d, None) == pytest.approx(-0.04)
    leaks = {"leak": np.array([1, 1, 0, 0, 0, 0.]), "clusters": [np.array([0, 1]), np.array([2, 3]),
                                                                  np.array([4, 5])]}
    assert leak_rate(leaks, None) == pytest.approx(1 / 3)
    rates = {leak_rate(leaks, np.random.default_rng(s)) for s in range(30)}
    assert rates <= {0.0, 1 / 3, 2 / 3, 1.0}  # whole clusters are drawn


def test_a_recorded_baseline_is_found_beside_a_moved_study(tmp_path):
    """Studies trained on another machine record that machine's baseline path (claim 2c)."""
    run, base = tmp_path / "study" / "fda-small-s0", tmp_path / "study" / "fda-small-clean-s0"
    for d in (run, base):
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
    assert _recorded_run(RunData(run), str(base)) == base
    assert _recorded_run(RunData(run), "/elsewhere/fda-small-clean-s0") == base
    with pytest.raises(NotMeasured, match="/elsewhere/fda-small-clean-s9 is not found"):
        _recorded_run(RunData(run), "/elsewhere/fda-small-clean-s9")


def test_parts_registry_and_markdown():
    assert [p.key for p in PARTS if p.claim == 5] == ["5a", "5b"]
    assert all(p.role in ("verdict", "diagnostic") for p in PARTS)
    assert parse_claims("7, 3") == [3, 7]
    with pytest.raises(ConfigError, match="unknown claim '9'"):
        parse_claims("9")
    row = {"task": "fda", **score_part(mean_part(), seeds([0.98, 0.97]), n_boot=100)}
    text = to_markdown([row])
    assert "| 9 | fda | **holds** |" in text and "| 9a | fda | verdict |" in text
