"""Helpers shared by the benchmark scripts: synthetic data on disk, plain-text tables, machine notes."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from model.nn.checkpoint import TrainedModel

#: One folder of synthetic scenes (seed 0) shared by all benchmarks; scene i is the same whatever n.
SCENES = Path("/tmp/weather-al-bench/scenes")


def synthetic_set(directory: Path, n: int, seed: int = 0) -> Path:
    """A manifest of the first ``n`` synthetic 640x360 scenes in ``directory``, generated when missing.

    ``directory/manifest.csv`` and ``truth.csv`` hold all scenes made so far; for fewer than all a
    ``first<n>.csv`` beside them lists the first ``n``.
    """
    from model.sim.scenes import generate

    manifest = directory / "manifest.csv"
    have = sum(1 for _ in manifest.open()) - 1 if manifest.is_file() else 0
    if have < n:
        generate(directory, n, seed=seed, progress=True, workers=os.cpu_count())
        have = n
    if have == n:
        return manifest
    lines = manifest.read_text().splitlines()
    subset = directory / f"first{n}.csv"
    subset.write_text("\n".join(lines[: n + 1]) + "\n")
    return subset


def table(header: list[str], rows: list[list[object]]) -> str:
    """Left-aligned first column, right-aligned others; floats with 3 significant decimals."""
    cells = [[_fmt(c) for c in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for k, r in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def process_tree_memory(pid: int) -> dict[int, tuple[int, int]]:
    """RSS and PSS in bytes of ``pid`` and each of its descendants, from Linux's /proc.

    RSS counts pages a forked child shares with its parent (torch's libraries, once imported) in
    both, so a sum of RSS overstates what the tree costs; PSS splits shared pages between their users.
    A process that exits while it is read is left out.
    """
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()[1:])
            out[p] = (int(fields["Rss"].split()[0]) * 1024, int(fields["Pss"].split()[0]) * 1024)
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def machine() -> str:
    """One line on the hardware, and the load the benchmark shared it with (other processes skew figures)."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads; load average {load}"
    )


def untrained_model(image_size: int, trainable_stages: int | None = None) -> TrainedModel:
    """The default network with its ImageNet backbone and untrained heads: scoring costs the same whatever the
    weights. ``trainable_stages`` says how many stage groups its training would have trained (the feature
    cache starts after the others); None: as if all did, so nothing is read from a cache."""
    from model.nn.backbones import build_backbone
    from model.nn.checkpoint import TrainedModel
    from model.nn.network import MultiHeadNet
    from model.schema import LabelSchema

    schema = LabelSchema.from_file()
    net = MultiHeadNet(build_backbone("efficientnet_lite0"), schema).eval()
    meta = {
        "schema": schema.to_dict(),
        "backbone": "efficientnet_lite0",
        "image_size": image_size,
        "mean": list(net.backbone.mean),
        "std": list(net.backbone.std),
        "trainable_stages": 4 if trainable_stages is None else trainable_stages,
    }
    return TrainedModel(net=net, meta=meta)
