"""TransformerLens 4.x (TransformerBridge) against 3.9 (HookedTransformer), side by side.

    .venv/bin/python benchmarks/backends.py [--preset small] [--steps 150] [--repeats 3] [--skip-runs]

Needs both environments: ``.venv`` (``bash scripts/setup.sh``) and ``.venv-tl4``
(``MEMLENS_TL=4 bash scripts/setup.sh``). Every measurement runs in a fresh subprocess of one
environment; the two environments alternate (3.9 first on even repeats, 4.x first on odd ones)
on the same machine, and medians are compared, so that load from other work hits both alike.

1. Training throughput: :func:`memlens.train` for ``--steps`` steps of the preset's FDA model
   (evaluation off), as memlens trains (fused forward, ``train.fast_forward=true``) and through
   the model's own hooked forward (``false``). The figure is tokens/s on 4.x over 3.9.
2. Patching: :func:`memlens.analysis.patch_grid` against the ``transformer_lens.patching`` loop
   on the same model, inputs and metric (per-head ``z`` and ``resid_pre`` grids), on each version.
3. Cross-version runs (unless ``--skip-runs``): a tiny FDA run trained under each version,
   each analyzed under both, by tests/cross_version/reference.py's figures and by the whole
   ``memlens analyze`` (every number in RUN/analysis/*.json, timings aside); max |difference|.

Writes docs/benchmarks/backends.json and .md (collected into docs/benchmarks.md by
``benchmarks/run_all.py --collect-only``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENVS = {"3.9": ROOT / ".venv/bin/python", "4.x": ROOT / ".venv-tl4/bin/python"}


# --------------------------------------------------------------------------- workers (one env)

def work_throughput(preset: str, steps: int, fast: bool) -> dict:
    from memlens.training import make_run_config, train

    config = make_run_config("fda", preset, seed=0, overrides={
        "train.steps": steps, "train.eval_log_points": 0, "train.eval_every": steps,
        "train.checkpoint_log_points": 0, "train.fast_forward": fast})
    with tempfile.TemporaryDirectory() as tmp:
        result = train(config, Path(tmp) / "run", progress=False)
    seconds = result.wall_seconds - result.eval_seconds
    tokens = config.train.batch_size * steps * _seq_len(config)
    return {"seconds": seconds, "tokens_per_second": tokens / seconds}


def _seq_len(config) -> int:
    from memlens.tasks import task_from_config

    return task_from_config(config.task, config.task_config).seq_len


def work_patching(preset: str, n: int) -> dict:
    import torch
    from transformer_lens import patching as tl_patching

    from memlens.analysis import patch_grid
    from memlens.models import build_model
    from memlens.tasks import task_from_config
    from memlens.training import make_run_config
    from tests.analysis.helpers import label_logprob_metric

    config = make_run_config("fda", preset, seed=0)
    task = task_from_config(config.task, config.task_config)
    model = build_model(config.model, task, seed=0).eval()
    data = task.generate(0).test
    clean, corrupt = data[:n], data[n:2 * n]
    metric = label_logprob_metric(clean)
    out = {}
    for kind, tl_fn in (("z", tl_patching.get_act_patch_attn_head_out_by_pos),
                        ("resid_pre", tl_patching.get_act_patch_resid_pre)):
        with torch.no_grad():
            start = time.perf_counter()
            _, cache = model.run_with_cache(clean.tokens)
            want = tl_fn(model, corrupt.tokens, cache, metric)
            t_tl = time.perf_counter() - start
            start = time.perf_counter()
            got = patch_grid(model, clean.tokens, corrupt.tokens, metric, hook=kind)
            t_ours = time.perf_counter() - start
        out[kind] = {"memlens_s": t_ours, "transformer_lens_s": t_tl, "speedup": t_tl / t_ours,
                     "max_abs_difference": float((got - want.cpu()).abs().max()),
                     "grid": list(got.shape)}
    return out


def work_train(run_dir: str) -> dict:
    from memlens.training import make_run_config, train

    train(make_run_config("fda", "tiny", seed=0, overrides={"train.steps": 60}), Path(run_dir), progress=False)
    return {"run": run_dir}


def work_analyze(run_dir: str) -> dict:
    import memlens
    from tests.cross_version.reference import compute

    run = memlens.load_run(run_dir)
    return compute(run.model, run.task, run.dataset)


def worker(argv: list[str]) -> None:
    import torch

    import os

    # 2 threads, as on the 2-core machines, unless OMP_NUM_THREADS says otherwise (on a machine
    # loaded by other work, 1 thread avoids thread oversubscription swamping the comparison)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    kind, *args = argv
    fns = {"throughput": lambda: work_throughput(args[0], int(args[1]), args[2] == "1"),
           "patching": lambda: work_patching(args[0], int(args[1])),
           "train": lambda: work_train(args[0]), "analyze": lambda: work_analyze(args[0])}
    from memlens import backend

    print(json.dumps({"backend": backend.describe(), **fns[kind]()}))


# --------------------------------------------------------------------------- driver

def call(version: str, *args: str) -> dict:
    proc = subprocess.run([str(VENVS[version]), __file__, "--worker", *args], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{version} worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def alternate(repeats: int, *args: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {v: [] for v in VENVS}
    for i in range(repeats):
        for version in (list(VENVS) if i % 2 == 0 else list(VENVS)[::-1]):
            out[version].append(call(version, *args))
    return out


def analyze_cli(version: str, run_dir: Path, copy: Path) -> Path:
    """``memlens analyze`` of a copy of ``run_dir`` under ``version``; returns its analysis folder."""
    import shutil

    shutil.copytree(run_dir, copy)
    cli = VENVS[version].parent / "memlens"
    done = subprocess.run([str(cli), "analyze", str(copy)], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:  # compare what was written; say what failed
        print(f"memlens analyze under {version} exited {done.returncode}: {done.stderr.strip()[-300:]}",
              flush=True)
    return copy / "analysis"


def leaves(value, path=""):
    """(path, leaf) for every number and string in a JSON value; timings left out."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not any(t in k for t in ("second", "wall", "time")):
                yield from leaves(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, f"{path}[{i}]")
    else:
        yield path, value


def compare_analyses(a: Path, b: Path) -> dict[str, dict]:
    """Per analysis file: numbers compared, max |difference|, and leaves that differ otherwise."""
    out = {}
    for fa in sorted(a.glob("*.json")):
        la, lb = dict(leaves(json.loads(fa.read_text()))), dict(leaves(json.loads((b / fa.name).read_text())))
        nums = [(la[k], lb[k]) for k in la if k in lb and isinstance(la[k], (int, float))
                and isinstance(lb[k], (int, float)) and not isinstance(la[k], bool)]
        finite = [abs(x - y) for x, y in nums if x == x and y == y and abs(x) != float("inf")]
        other = [k for k in set(la) | set(lb) if k not in la or k not in lb or (
            not isinstance(la[k], (int, float)) and la[k] != lb[k])]
        out[fa.name] = {"numbers": len(nums), "max_abs_difference": max(finite, default=0.0),
                        "other_differences": len(other)}
    return out


def max_differences(a: dict, b: dict) -> dict[str, float]:
    import torch

    return {k: float((torch.tensor(a[k]) - torch.tensor(b[k])).abs().max()) for k in a
            if k != "backend"}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.path.insert(0, str(ROOT))
        return worker(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patch-examples", type=int, default=100)
    parser.add_argument("--skip-runs", action="store_true")
    parser.add_argument("--patching-only", action="store_true",
                        help="remeasure patching only, keeping the other figures of backends.json")
    args = parser.parse_args()
    missing = [str(p) for p in VENVS.values() if not p.exists()]
    if missing:
        raise SystemExit(f"missing environments {missing}: run bash scripts/setup.sh and "
                         "MEMLENS_TL=4 bash scripts/setup.sh first")
    import os

    threads = os.environ.get("OMP_NUM_THREADS", "2")
    record: dict = {"command": "python benchmarks/backends.py " + " ".join(sys.argv[1:]), "torch_threads": int(threads)}
    if args.patching_only:
        old = json.loads((ROOT / "docs/benchmarks/backends.json").read_text())
        record = {**old, "patching": {v: call(v, "patching", args.preset, str(args.patch_examples)) for v in VENVS},
                  "patching_command": record["command"]}
        return write(record)
    for fast in ("1", "0"):
        runs = alternate(args.repeats, "throughput", args.preset, str(args.steps), fast)
        med = {v: statistics.median(r["tokens_per_second"] for r in rs) for v, rs in runs.items()}
        record[f"throughput_fast_forward_{fast}"] = {
            "tokens_per_second": med, "ratio_4x_over_39": med["4.x"] / med["3.9"], "runs": runs}
        print(f"throughput (fast_forward={fast}): {med}, 4.x/3.9 {med['4.x'] / med['3.9']:.3f}", flush=True)
    record["patching"] = {v: call(v, "patching", args.preset, str(args.patch_examples)) for v in VENVS}
    print("patching", json.dumps(record["patching"]), flush=True)
    if not args.skip_runs:
        with tempfile.TemporaryDirectory() as tmp:
            runs = {}
            for trained in VENVS:
                run_dir = str(Path(tmp) / f"fda-tiny-tl{trained}")
                call(trained, "train", run_dir)
                analyzed = {v: call(v, "analyze", run_dir) for v in VENVS}
                runs[f"trained on {trained}"] = max_differences(analyzed["3.9"], analyzed["4.x"])
                runs[f"trained on {trained}"]["logits[0,-1,:3] (3.9 | 4.x)"] = [
                    analyzed[v]["logits"][0][-1][:3] for v in VENVS]
                folders = [analyze_cli(v, Path(run_dir), Path(tmp) / f"{trained}-analyzed-on-{v}") for v in VENVS]
                record.setdefault("cross_version_analyze", {})[f"trained on {trained}"] = compare_analyses(*folders)
            record["cross_version_runs"] = runs
            print("memlens analyze", json.dumps(record["cross_version_analyze"], indent=1), flush=True)
            print("cross-version runs", json.dumps(runs, indent=1), flush=True)
    write(record)


def write(record: dict) -> None:
    from memlens.io import atomic_write_json, atomic_write_text

    record["headline"] = headline(record)
    out = ROOT / "docs/benchmarks/backends.json"
    atomic_write_json(out, record)
    atomic_write_text(out.with_suffix(".md"), page(record))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def headline(record: dict) -> list[dict]:
    rows = []
    for fast, how in (("1", "fused forward, as memlens trains"), ("0", "hooked forward")):
        r = record[f"throughput_fast_forward_{fast}"]
        rows.append({"benchmark": f"training fda, TransformerLens 4.x vs 3.9 ({how})",
                     "figure": "tokens/s 4.x / 3.9 (alternated runs)", "value": f"{r['ratio_4x_over_39']:.2f}",
                     "goal": None})
    for version, r in record["patching"].items():
        rows.append({"benchmark": f"z sweep on TransformerLens {version} ({r['backend'].split('(')[1][:-1]})",
                     "figure": "speed-up vs transformer_lens.patching loop", "value": f"{r['z']['speedup']:.1f}",
                     "goal": None})
    return rows


def page(record: dict) -> str:
    lines = ["# TransformerLens 4.x (TransformerBridge) vs 3.9 (HookedTransformer)", "",
             f"Command: `{record['command']}`" + (f", patching remeasured by `{record['patching_command']}`"
                                                   if "patching_command" in record else "")
             + f" ({record['torch_threads']} torch thread(s)). Each figure is "
             "the median of alternated runs, one fresh process per run, same machine (2 cores shared "
             "with other work: expect noise).", "",
             "| training path | tokens/s 3.9 | tokens/s 4.x | 4.x / 3.9 |", "|---|---|---|---|"]
    for fast, how in (("1", "fused forward (memlens default)"), ("0", "the model's hooked forward")):
        r = record[f"throughput_fast_forward_{fast}"]
        t = r["tokens_per_second"]
        lines.append(f"| {how} | {t['3.9']:,.0f} | {t['4.x']:,.0f} | {r['ratio_4x_over_39']:.2f} |")
    lines += ["", "| version | grid | memlens s | transformer_lens.patching s | speed-up | max abs difference |",
              "|---|---|---|---|---|---|"]
    for version, r in record["patching"].items():
        for kind in ("z", "resid_pre"):
            x = r[kind]
            lines.append(f"| {version} | {kind} {x['grid']} | {x['memlens_s']:.2f} | {x['transformer_lens_s']:.2f} "
                         f"| {x['speedup']:.1f} | {x['max_abs_difference']:.1e} |")
    if "cross_version_runs" in record:
        lines += ["", "Cross-version runs: max |analysis under 3.9 - analysis under 4.x| of the same run.", "",
                  "| figure | " + " | ".join(record["cross_version_runs"]) + " |",
                  "|---|" + "---|" * len(record["cross_version_runs"])]
        figures = [k for k in next(iter(record["cross_version_runs"].values())) if not k.startswith("logits[")]
        for name in figures:
            lines.append(f"| {name} | " + " | ".join(f"{r[name]:.1e}" for r in record["cross_version_runs"].values()) + " |")
        lines += ["", "`memlens analyze` of the same run under each version: every number in "
                  "RUN/analysis/*.json (timings aside), max |3.9 - 4.x|, and leaves that differ otherwise.", "",
                  "| trained on | file | numbers | max abs difference | other differences |", "|---|---|---|---|---|"]
        for run, files in record["cross_version_analyze"].items():
            for name, r in files.items():
                lines.append(f"| {run.split()[-1]} | {name} | {r['numbers']} | {r['max_abs_difference']:.1e} "
                             f"| {r['other_differences']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
