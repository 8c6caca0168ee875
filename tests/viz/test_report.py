"""The report page: every analysis found, claims on top, clear notes for missing or corrupted
results, no network needed; and a real headless Chromium draws it."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from memlens.cli import main
from memlens.training.run import RunDirError
from memlens.viz.report import write_report


def test_report_holds_every_analysis_claims_and_attention_offline(tiny_run, tmp_path):
    out = write_report([tiny_run], tmp_path / "report.html")
    page = out.read_text()
    # dynamics, 8 analyses (behaviour, logit lens, probes, patching, interventions, encoding,
    # neurons, circuits) and the neuron view
    assert page.count('class="plotly-graph-div"') == 10
    assert page.count("<h3>") == 12  # the claims' parts table, 8 analyses, 3 model views
    assert page.count("CircuitsVis.AttentionPatterns,") == 2 * 1  # a clean and a noisy example, 1 layer
    assert page.count("CircuitsVis.TextNeuronActivations,") == 2  # token-level neuron views, clean and noisy
    assert "Missing analyses" not in page
    assert re.search(r"<td>1</td><td>fda</td>", page)  # the verdict per claim
    assert re.search(r"<td>4a</td><td>fda</td><td>verdict</td>", page)  # and every part
    anchor = f"run-{tiny_run.name}"  # the contents link and the section it opens
    assert f'<a href="#{anchor}">' in page and f'<h2 id="{anchor}">' in page
    # Self-contained: no script or stylesheet is fetched from anywhere.
    assert not re.search(r'<script[^>]+src="http', page)
    assert "unpkg.com" not in page
    assert page.count("var CircuitsVis") == 1 and page.count("plotly.js v") >= 1


def test_missing_and_corrupted_results_say_how_to_produce_them(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    (copy / "analysis" / "probes.json").unlink()
    (copy / "analysis" / "encoding.json").write_text("{not json")
    page = write_report([copy], tmp_path / "r.html", attention=False).read_text()
    assert "Missing analyses" in page
    assert f"memlens analyze {copy} --only probes" in page
    assert "encoding.json is corrupted" in page and "--only encoding" in page
    assert page.count('class="plotly-graph-div"') == 7


def test_patching_across_runs_averages_claim_4_intermediates(tiny_run, tmp_path):
    """Two runs of a task: one figure of what the changing and preserving patches cost, from
    the claim-4 entries of each run's patching.json (not the carries, which claim 4 leaves out)."""
    import json

    from memlens.viz.figures import patch_loss_by_run
    from memlens.viz.report import claim4_patching

    summary = json.loads((tiny_run / "analysis" / "patching.json").read_text())["summary"]
    entries = claim4_patching(tiny_run, summary)
    assert sorted(entries) == [f"column_sum[{c}]" for c in range(2)]  # tiny: two digits
    expected = sum(e["noisy"]["mean"]["base"] - e["noisy"]["mean"]["patch_change"]
                   for e in entries.values()) / len(entries)
    fig = patch_loss_by_run({"a": entries})
    assert fig.data[0].name == "noisy recall, changing patch"
    assert fig.data[0].y[0] == pytest.approx(expected)
    second = tmp_path / "fda-tiny-s1"
    shutil.copytree(tiny_run, second)
    page = write_report([tiny_run, second], tmp_path / "r.html", attention=False).read_text()
    assert page.count("Counterfactual patching across runs") == 1
    one = write_report([tiny_run], tmp_path / "one.html", attention=False).read_text()
    assert "Counterfactual patching across runs" not in one


def test_not_a_run_directory_is_refused_before_writing(tmp_path, capsys):
    with pytest.raises(RunDirError, match="not memlens run directories"):
        write_report([tmp_path], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "not memlens run directories" in capsys.readouterr().err


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def dump_dom(page: Path, tmp_path: Path, fragment: str = "") -> str:
    """The DOM after headless Chromium ran the page's scripts (opened at ``#fragment`` if
    given), with the network unreachable: every proxy points nowhere and no host name resolves."""
    profile = tmp_path / f"profile-{page.stem}-{fragment}"
    url = Path(page).resolve().as_uri() + (f"#{fragment}" if fragment else "")
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
           "--proxy-server=http://127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
           "--virtual-time-budget=10000", "--dump-dom", url]
    env = {**os.environ, "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env).stdout


def drawn_views(dom: str) -> list[str]:
    """The inner HTML of each circuitsvis view div (empty until its script ran)."""
    return re.findall(r'<div id="circuits-vis-[0-9a-f]+">(.*?)</div></div>', dom, flags=re.S)


@pytest.mark.skipif(chromium() is None, reason="no Chromium on this machine (.ci/run installs it)")
def test_headless_chromium_draws_the_report_offline(tiny_run, tmp_path):
    dom = dump_dom(write_report([tiny_run], tmp_path / "report.html"), tmp_path)
    # plotly drew its figures: each graph div holds an <svg class="main-svg"> with traces.
    assert dom.count('class="main-svg"') >= 8
    assert dom.count('class="scatterlayer') >= 3 or dom.count("trace scatter") >= 3
    # circuitsvis drew the attention and token-level neuron views: their divs are no longer empty.
    views = drawn_views(dom)
    assert len(views) == 4
    assert all(len(v) > 500 for v in views), [len(v) for v in views]


@pytest.mark.skipif(chromium() is None, reason="no Chromium on this machine (.ci/run installs it)")
def test_headless_chromium_draws_standalone_views_offline(tiny_run, tmp_path):
    from memlens.training.run import load_run
    from memlens.viz.attention import attention_views_html, clean_and_noisy_views, write_views_page
    from memlens.viz.neuron_views import token_neuron_views_html

    run = load_run(tiny_run)
    groups = {"clean": run.splits["train_clean"], "noisy": run.splits["train_noisy"]}
    attention = write_views_page(attention_views_html(clean_and_noisy_views(run.model, run.splits)),
                                 tmp_path / "attention.html")
    tokens = write_views_page(token_neuron_views_html(run.model, groups, 0, [0, 1, 2]), tmp_path / "tokens.html")
    for page, n_views in ((attention, 2), (tokens, 2)):
        views = drawn_views(dump_dom(page, tmp_path))
        assert len(views) == n_views, page
        assert all(len(v) > 500 for v in views), (page, [len(v) for v in views])
    # The empty page the browser starts from: an undrawn view stays empty (the check can fail).
    blank = write_views_page('<div class="x"><h4>t</h4><div id="circuits-vis-0123456789ab"></div></div>',
                             tmp_path / "blank.html")
    assert [len(v) for v in drawn_views(dump_dom(blank, tmp_path))] == [0]
