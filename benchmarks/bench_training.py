"""Training throughput at each unfreezing stage, and peak memory of `weather-al train`.

1. images/s of the real training loop (``train()``: decoding, augmentation, forward, classification
   and ranking losses, backward, AdamW step) with 0, 1, 2 and 4 backbone stages trainable; one epoch
   each, no validation, taken from the loop's own ``images_per_s``.
2. Peak RSS of ``weather-al train`` on 1,000 synthetic scenes at 160 px, run as a subprocess:
   ``ru_maxrss`` of the children (the largest single process: the trainer; DataLoader workers are
   separate processes and are counted on their own), and the peaks of the
   RSS summed over the trainer and its workers (an upper bound: forked workers share pages) and of
   the PSS summed over them (shared pages split between their users: the footprint).
   Target: under 3 GB.

    python benchmarks/bench_training.py [--n-throughput 256] [--n-memory 1000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import SCENES, machine, process_tree_memory, synthetic_set, table

from model.data.examples import read_manifest
from model.schema import LabelSchema
from model.training.trainer import TrainConfig, train

TARGET_GB = 3.0


def _cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the DataLoader workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def throughput(manifest: Path, image_size: int, batch_size: int, stages: int) -> tuple[float, float]:
    """(images/s of the loop, CPU ms per image of the whole call: loop, model build, worker start-up)."""
    data = read_manifest(manifest, LabelSchema.from_file())
    config = TrainConfig(
        image_size=image_size, batch_size=batch_size, epochs=1, min_steps=1, val_fraction=0.0, trainable_stages=stages
    )
    c0 = _cpu_seconds()
    rate = train(data, config, progress=False).history[0]["images_per_s"]
    return rate, 1000 * (_cpu_seconds() - c0) / len(data.examples)


def _tree_memory_peak(pid: int, stop: threading.Event, out: list[tuple[int, int]]) -> None:
    """Poll RSS and PSS summed over ``pid`` and its descendants until ``stop``; append the peaks."""
    peak_rss = peak_pss = 0
    while not stop.is_set():
        memory = process_tree_memory(pid).values()
        peak_rss, peak_pss = max(peak_rss, sum(r for r, _ in memory)), max(peak_pss, sum(p for _, p in memory))
        time.sleep(0.5)
    out.append((peak_rss, peak_pss))


def peak_memory(manifest: Path, image_size: int, epochs: int) -> tuple[float, tuple[float, float], float]:
    """(ru_maxrss of the children in GB, (summed RSS, summed PSS) peaks in GB, wall seconds)."""
    out_dir = Path(tempfile.mkdtemp(prefix="weather-al-bench-train-"))
    config = out_dir / "config.json"  # the defaults, but exactly ``epochs`` epochs (no min_steps floor)
    config.write_text(json.dumps({"epochs": epochs, "min_steps": 1}))
    cmd = [
        sys.executable,
        "-m",
        "backend.cli",
        "--log-level",
        "WARNING",
        "train",
        "--data",
        str(manifest),
        "--out",
        str(out_dir / "model"),
        "--config",
        str(config),
        "--image-size",
        str(image_size),
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    stop, peaks = threading.Event(), []
    poller = threading.Thread(target=_tree_memory_peak, args=(proc.pid, stop, peaks), daemon=True)
    poller.start()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    stop.set()
    poller.join()
    if rc != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed with exit status {rc}")
    maxrss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kilobytes on Linux
    return maxrss_kb / 2**20, (peaks[0][0] / 2**30, peaks[0][1] / 2**30), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-throughput", type=int, default=256, help="training images per throughput epoch")
    parser.add_argument("--n-memory", type=int, default=1000, help="training images for the memory run")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the memory run (the peak comes in the first)")
    parser.add_argument("--stages", default="0,1,2,4")
    parser.add_argument("--data", type=Path, default=SCENES, help="folder of synthetic scenes (made when missing)")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    print(f"# {machine()}")
    synthetic_set(args.data, max(args.n_throughput, args.n_memory))
    small, manifest = synthetic_set(args.data, args.n_throughput), synthetic_set(args.data, args.n_memory)

    # memory first: ru_maxrss of children must not see this process's own DataLoader workers
    if not args.skip_memory:
        maxrss, tree, wall = peak_memory(manifest, args.image_size, args.epochs)
        print(
            f"\n# `weather-al train` on {args.n_memory} images at {args.image_size} px, {args.epochs} epoch(s), "
            f"{wall:.0f} s"
        )
        rows = [["ru_maxrss of children (largest process)", maxrss, "yes" if maxrss < TARGET_GB else "NO"]]
        rows.append(
            [
                "peak RSS summed over trainer + workers (counts shared pages twice)",
                tree[0],
                "yes" if tree[0] < TARGET_GB else "NO",
            ]
        )
        rows.append(["peak PSS summed over trainer + workers", tree[1], "yes" if tree[1] < TARGET_GB else "NO"])
        print(table(["measure", "GB", f"< {TARGET_GB:.0f} GB"], rows), flush=True)

    rows = []
    for stages in (int(s) for s in args.stages.split(",")):
        rows.append([f"{stages} stage(s) trainable", *throughput(small, args.image_size, args.batch_size, stages)])
    print(
        f"\n# training throughput, {args.n_throughput} images at {args.image_size} px, batch {args.batch_size} "
        "(one epoch, real loop)"
    )
    print(table(["unfreezing stage", "images/s", "CPU ms/image"], rows))


if __name__ == "__main__":
    main()
