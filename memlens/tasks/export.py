"""Reading a dataset back out: JSONL export (DESIGN.md's format) and a human-readable listing."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

from memlens.io import atomic_path
from memlens.tasks.base import Dataset


def iter_records(task, dataset: Dataset) -> Iterator[dict]:
    """Every example as a JSON-ready dict: the training set first, then the test set."""
    for split, examples in (("train", dataset.train), ("test", dataset.test)):
        for i in range(len(examples)):
            yield task.record(examples, i, split)


def export_jsonl(task, dataset: Dataset, path: str | os.PathLike) -> int:
    """Write every example as one JSON object per line, atomically; returns the row count.

    >>> import tempfile, pathlib
    >>> from memlens.tasks import make_task
    >>> task = make_task("thr", preset="tiny")
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "thr.jsonl"
    >>> export_jsonl(task, task.generate(seed=0), path) == len(path.read_text().splitlines())
    True
    """
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        for record in iter_records(task, dataset):
            fh.write(json.dumps(record) + "\n")
            count += 1
    return count


def format_record(record: dict) -> str:
    """One example on a few lines: tokens, label (and true label where noisy), intermediates."""
    prompt = " ".join(t for t in record["tokens"] if t != "<bos>")
    flag = "NOISY" if record["is_noisy"] else "clean"
    lines = [f"[{record['split']:5s} {flag}] {prompt}"]
    label = " ".join(record["label"])
    if record["is_noisy"]:
        label += f"   (true: {' '.join(record['true_label'])})"
    lines.append(f"    label: {label}")
    inter = ", ".join(f"{k}={v}" for k, v in record["intermediates"].items())
    lines.append(f"    intermediates: {inter}")
    return "\n".join(lines)
