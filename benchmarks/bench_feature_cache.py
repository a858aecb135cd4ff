"""The feature cache against issue 13's targets: rescoring speed, disk size, agreement with the full forward.

On ``--n`` synthetic 640x360 scenes (default 5,000) at ``--image-size`` (160), with the default backbone
and an untrained model (scoring costs the same whatever the weights), for 0, 1 and 2 trainable stage
groups (cached depth 4, 3, 2), in one run:

- the full forward (``TrainedModel.score`` without a cache: read, decode, resize, every stage);
- the first pass through a fresh cache (computes and stores the frozen part: the cost of a new image);
- a rescoring from the warm cache (what every later cycle pays): target 5 s for 5,000 frozen, 40 s with
  the last stage trainable;
- the largest absolute difference between cached and full-forward probabilities and predicted losses
  (target 1e-4), and the cache's size on disk per 10,000 images (target 1 GB at 160 px).

    python benchmarks/bench_feature_cache.py [--n 5000] [--image-size 160] [--stages 0,1,2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import SCENES, machine, synthetic_set, table, untrained_model

from model.data.examples import read_manifest
from model.nn.checkpoint import TrainedModel
from model.nn.feature_cache import FeatureCache
from model.schema import LabelSchema
from model.training.scoring import ScoreResult

TARGET_WARM_S = {0: 5.0, 1: 40.0}  # per 5,000 images
TARGET_DIFF = 1e-4
TARGET_BYTES_PER_10K = 1e9


def max_difference(a: ScoreResult, b: ScoreResult) -> float:
    assert a.keys == b.keys, "cached and full-forward scores cover different images"
    diffs = [np.abs(a.predicted_loss - b.predicted_loss).max()] + [
        np.abs(a.probs[h] - b.probs[h]).max() for h in a.probs
    ]
    return float(max(diffs))


def timed_score(model: TrainedModel, examples: list, cache: FeatureCache | None) -> tuple[ScoreResult, float]:
    t0 = time.perf_counter()
    out = model.score(examples, batch_size=64, cache=cache)
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--stages", default="0,1,2")
    p.add_argument("--data", type=Path, default=SCENES)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    examples = read_manifest(synthetic_set(args.data, args.n), LabelSchema.from_file()).examples[: args.n]
    print(f"{len(examples)} scenes at {args.image_size} px; {machine()}", flush=True)
    rows = []
    for stages in (int(s) for s in args.stages.split(",")):
        model = untrained_model(args.image_size, stages)
        with tempfile.TemporaryDirectory(prefix="feature-cache-") as root:
            cache = FeatureCache(root)
            full, t_full = timed_score(model, examples, None)
            _, t_fill = timed_score(model, examples, cache)
            warm, t_warm = timed_score(model, examples, cache)
            size = cache.size_bytes()
        per_5k = t_warm * 5000 / len(examples)
        target = TARGET_WARM_S.get(stages)
        rows.append(
            [
                f"{stages} trainable (cached depth {4 - stages})",
                t_full,
                t_fill,
                t_warm,
                t_full / t_warm,
                per_5k,
                "-" if target is None else f"<= {target:.0f} s {'ok' if per_5k <= target else 'MISSED'}",
                f"{max_difference(full, warm):.1e}",
                size / len(examples) * 10_000 / 1e6,
            ]
        )
        print(table(HEADER, rows[-1:]), flush=True)
    print()
    print(table(HEADER, rows))
    worst = max(float(r[7]) for r in rows)
    print(
        f"\nlargest difference {worst:.1e} (target <= {TARGET_DIFF:.0e}); disk per 10,000 images is for the clean "
        f"view of every image at that depth (target <= {TARGET_BYTES_PER_10K / 1e9:.0f} GB); training views add "
        "half as much again per labeled image and view (float16)."
    )


HEADER = [
    "stages",
    "full forward s",
    "first pass s",
    "warm rescore s",
    "speed-up",
    "warm s / 5,000",
    "target",
    "max |diff|",
    "MB / 10,000",
]


if __name__ == "__main__":
    main()
