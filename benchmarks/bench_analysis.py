"""How long ``weather-al analyze`` takes, and how much memory, on N synthetic 640x360 scenes.

Prints the time of each phase (reading images, embedding pass, duplicates, label ranking, ...), the
peak resident memory of the process and of its DataLoader workers, the embedding pass's time per
image beside that of ``score`` (the training-size forward pass through the same DataLoader path; an
untrained network costs the same as a trained one) on the same images, and the time of the
all-pairs phases (duplicate search, label ranking) on 10,000 synthetic fingerprints, which shows how
they scale when the image run is smaller.

    python benchmarks/bench_analysis.py --n 10000            # the issue's figure
    python benchmarks/bench_analysis.py --n 1000
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from common import machine, synthetic_set, table  # noqa: E402

from model.analysis import analyze, read_input  # noqa: E402
from model.analysis.duplicates import near_groups  # noqa: E402
from model.analysis.embeddings import embed  # noqa: E402
from model.analysis.label_problems import suspected_labels  # noqa: E402
from model.nn.backbones import build_backbone  # noqa: E402
from model.nn.checkpoint import TrainedModel  # noqa: E402
from model.nn.network import MultiHeadNet  # noqa: E402
from model.schema import LabelSchema  # noqa: E402
from model.training.trainer import TrainConfig  # noqa: E402


def peak_rss_mib() -> tuple[float, float]:
    """Peak resident memory (MiB) of this process and of its largest finished child (ru_maxrss is in KiB on Linux)."""
    return (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    )


def per_image_seconds(schema: LabelSchema, items, workers: int | None, repeats: int = 2) -> tuple[float, float]:
    """Seconds per image of the analysis embedding pass and of ``TrainedModel.score`` at the training size,
    on the same images, alternated ``repeats`` times (best of each) so that a change in machine load
    does not favour either; both times include building the network."""
    examples = [it.example() for it in items]
    embed_times, score_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        embed(items, schema, np.arange(len(items)), workers=workers)
        embed_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        net = MultiHeadNet(build_backbone("efficientnet_lite0", weights=None), schema).eval()
        model = TrainedModel(
            net=net,
            meta={
                "image_size": TrainConfig().image_size,
                "mean": list(net.backbone.mean),
                "std": list(net.backbone.std),
            },
        )
        model.score(examples, workers=workers)
        score_times.append(time.perf_counter() - start)
    return min(embed_times) / len(items), min(score_times) / len(items)


def quadratic_phases(n: int, dim: int = 1280, seed: int = 0) -> dict[str, float]:
    """Seconds of the all-pairs duplicate search and of the label ranking for ``n`` synthetic fingerprints
    (random hashes, embeddings with class structure), to check how these phases scale beyond the images run."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=(n, 2))
    embeddings = (
        rng.normal(size=(n, dim)) + 3 * rng.normal(size=(6, dim))[labels[:, 0] * 2 + (labels[:, 1] > 0)]
    ).astype(np.float32)
    hashes = rng.integers(0, 2**63, size=n, dtype=np.uint64)
    tiny = rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8)
    usable = np.ones(n, dtype=bool)
    start = time.perf_counter()
    near_groups(hashes, embeddings, tiny, usable, np.ones(n), [])
    duplicates = time.perf_counter() - start
    start = time.perf_counter()
    suspected_labels(LabelSchema.from_file(), embeddings, labels, usable)
    return {"duplicates": duplicates, "label ranking": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="synthetic 640x360 scenes (default 10,000)")
    parser.add_argument(
        "--data", type=Path, default=None, help="where the scenes are kept (default /tmp/weather-al-bench/analysis-N)"
    )
    parser.add_argument(
        "--score-n", type=int, default=500, help="images the embedding pass and `score` are timed on (default 500)"
    )
    parser.add_argument(
        "--scale-n",
        type=int,
        default=10_000,
        help="synthetic fingerprints for the all-pairs phases (default 10,000; 0 skips)",
    )
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    directory = args.data or Path(f"/tmp/weather-al-bench/analysis-{args.n}")
    manifest = synthetic_set(directory, args.n)
    schema = LabelSchema.from_file()
    data = read_input(manifest, schema)

    start = time.perf_counter()
    result = analyze(data, directory / "analysis", workers=args.workers, progress=True)
    total = time.perf_counter() - start
    rss_self, rss_children = peak_rss_mib()
    timings = result.summary["timings_s"]

    embed_per_image, score_per_image = per_image_seconds(schema, data.items[: args.score_n], args.workers)
    scale = quadratic_phases(args.scale_n) if args.scale_n else {}

    print(f"\nanalyze: {args.n} images of 640x360 ({machine()})")
    print(
        table(
            ["phase", "seconds", "ms per image"],
            [[k, v, 1000 * v / args.n] for k, v in timings.items()] + [["total", total, 1000 * total / args.n]],
        )
    )
    print(f"peak RSS: {rss_self:.0f} MiB (analysis process), {rss_children:.0f} MiB (largest DataLoader worker)")
    print(
        table(
            [f"pass ({args.score_n} images, best of 2)", "image size", "ms per image"],
            [
                ["analyze embedding", result.summary["settings"]["embedding_size"], 1000 * embed_per_image],
                ["score", TrainConfig().image_size, 1000 * score_per_image],
            ],
        )
    )
    if scale:
        print(
            f"all-pairs phases on {args.scale_n} synthetic fingerprints: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in scale.items())
        )
    found = result.summary
    print(
        f"found: {found['duplicates']['n_exact_groups']} exact / "
        f"{found['duplicates']['n_near_groups']} near duplicate groups, "
        f"{found['label_problems']['n_flagged']} flagged labels (synthetic label noise 2%)"
    )
    (directory / "analysis" / "bench.json").write_text(
        json.dumps(
            {
                "n": args.n,
                "timings_s": timings,
                "total_s": total,
                "peak_rss_mib": rss_self,
                "peak_rss_children_mib": rss_children,
                "embedding_ms_per_image": 1000 * embed_per_image,
                "score_ms_per_image": 1000 * score_per_image,
                "scale_n": args.scale_n,
                "scale_timings_s": scale,
                "machine": machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
