"""How long ``weather-al analyze`` takes, and how much memory, on N synthetic 640x360 scenes.

Prints the time of each phase (reading images, embedding pass, duplicates, label ranking, ...), the
peak resident memory of the process and of its DataLoader workers, and the embedding pass's time per
image beside that of ``score`` (the training-size forward pass through the same DataLoader path; an
untrained network costs the same as a trained one) on the same images.

    python benchmarks/bench_analysis.py --n 10000            # the issue's figure
    python benchmarks/bench_analysis.py --n 1000 --score-n 500
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

from common import machine, synthetic_set, table  # noqa: E402

from model.analysis import analyze, read_input  # noqa: E402
from model.backbones import build_backbone  # noqa: E402
from model.checkpoint import TrainedModel  # noqa: E402
from model.network import MultiHeadNet  # noqa: E402
from model.schema import LabelSchema  # noqa: E402
from model.training import TrainConfig  # noqa: E402


def peak_rss_mib() -> tuple[float, float]:
    """Peak resident memory (MiB) of this process and of its largest finished child (ru_maxrss is in KiB on Linux)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def score_seconds_per_image(schema: LabelSchema, examples, image_size: int, workers: int | None) -> float:
    """Seconds per image of ``TrainedModel.score`` at the training image size."""
    net = MultiHeadNet(build_backbone("efficientnet_lite0", weights=None), schema).eval()
    model = TrainedModel(net=net, meta={"image_size": image_size, "mean": list(net.backbone.mean), "std": list(net.backbone.std)})
    start = time.perf_counter()
    result = model.score(examples, workers=workers, progress=True)
    return (time.perf_counter() - start) / max(len(result), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="synthetic 640x360 scenes (default 10,000)")
    parser.add_argument("--data", type=Path, default=None, help="where the scenes are kept (default /tmp/weather-al-bench/analysis-N)")
    parser.add_argument("--score-n", type=int, default=1000, help="images `score` is timed on (default 1,000)")
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
    n_embedded = int(result.findings.usable.sum())
    embed_per_image = timings["embedding"] / max(n_embedded, 1)

    subset = [it.example() for it in data.items[: args.score_n]]
    score_per_image = score_seconds_per_image(schema, subset, TrainConfig().image_size, args.workers)

    print(f"\nanalyze: {args.n} images of 640x360 ({machine()})")
    print(table(["phase", "seconds", "ms per image"], [[k, v, 1000 * v / args.n] for k, v in timings.items()] + [["total", total, 1000 * total / args.n]]))
    print(f"peak RSS: {rss_self:.0f} MiB (analysis process), {rss_children:.0f} MiB (largest DataLoader worker)")
    print(table(["pass", "image size", "ms per image"], [
        ["analyze embedding", result.summary["settings"]["embedding_size"], 1000 * embed_per_image],
        [f"score ({len(subset)} images)", TrainConfig().image_size, 1000 * score_per_image],
    ]))
    found = result.summary
    print(f"found: {found['duplicates']['n_exact_groups']} exact / {found['duplicates']['n_near_groups']} near duplicate groups, "
          f"{found['label_problems']['n_flagged']} flagged labels (synthetic label noise 2%)")
    (directory / "analysis" / "bench.json").write_text(json.dumps({
        "n": args.n, "timings_s": timings, "total_s": total, "peak_rss_mib": rss_self, "peak_rss_children_mib": rss_children,
        "embedding_ms_per_image": 1000 * embed_per_image, "score_ms_per_image": 1000 * score_per_image, "machine": machine(),
    }, indent=2))


if __name__ == "__main__":
    main()
