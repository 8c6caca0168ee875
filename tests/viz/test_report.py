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
    # dynamics, logit lens, probes, patching, encoding, neurons, circuits, neuron view
    assert page.count('class="plotly-graph-div"') == 8
    assert page.count("<h3>") == 9 and "interventions" in page
    assert page.count("CircuitsVis.render(") == 2 * 1  # a clean and a noisy example, 1 layer
    assert "Missing analyses" not in page
    assert re.search(r"<td>1</td><td>fda</td>", page)  # the claims table
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
    assert page.count('class="plotly-graph-div"') == 5


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


@pytest.mark.skipif(chromium() is None, reason="no Chromium on this machine (.ci/run installs it)")
def test_headless_chromium_draws_the_report_offline(tiny_run, tmp_path):
    out = write_report([tiny_run], tmp_path / "report.html")
    profile = tmp_path / "profile"
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
           "--virtual-time-budget=10000", "--dump-dom", Path(out).resolve().as_uri()]
    env = {**os.environ, "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env).stdout
    # plotly drew its figures: each graph div holds an <svg class="main-svg"> with traces.
    assert dom.count('class="main-svg"') >= 8
    assert dom.count('class="scatterlayer') >= 3 or dom.count("trace scatter") >= 3
    # circuitsvis drew the attention views: their divs are no longer empty.
    views = re.findall(r'<div id="circuits-vis-[0-9a-f]+">(.*?)</div></div>', dom, flags=re.S)
    assert len(views) == 2
    assert all(len(v) > 500 for v in views), [len(v) for v in views]
