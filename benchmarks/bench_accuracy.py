"""Accuracy on synthetic scenes: per-head macro-F1 on held-out scenes, loss module beside max-softmax.

Synthetic scenes, seed 0: the first ``--n-train`` for training (the annotator's labels, 2% noise),
the next ``--n-test`` held out. The default recipe (efficientnet_lite0, 160 px, the training defaults)
trains on the first part; the held-out part is scored once and judged against both the annotator's
labels (manifest.csv) and the noiseless truth (truth.csv). Target: macro-F1 >= 0.9 on every head.
Takes 15-25 min on 2 cores; run it in the background:

    nohup python benchmarks/bench_accuracy.py > accuracy.txt 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from common import SCENES, machine, synthetic_set, table

from model.data.examples import read_manifest
from model.nn.feature_cache import FeatureCache
from model.schema import LabelSchema
from model.training.evaluation import evaluate
from model.training.trainer import TrainConfig, train

TARGET = 0.9


def split_manifest(source: Path, name: str, start: int, stop: int) -> Path:
    """Rows ``start:stop`` of a manifest (or truth.csv) as a new CSV beside it."""
    lines = source.read_text().splitlines()
    path = source.parent / name
    path.write_text("\n".join([lines[0], *lines[1 + start : 1 + stop]]) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--data", type=Path, default=SCENES, help="folder of synthetic scenes (made when missing)")
    parser.add_argument("--model-out", type=Path, default=None, help="also save the trained model here")
    parser.add_argument(
        "--no-feature-cache",
        action="store_true",
        help="run the whole backbone on every pass, as before the feature cache (default: a fresh cache, so the "
        "time includes filling it)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    print(f"# {machine()}", flush=True)
    n = args.n_train + args.n_test
    synthetic_set(args.data, n, seed=0)
    manifest = args.data / "manifest.csv"
    schema = LabelSchema.from_file()
    train_csv = split_manifest(manifest, "train.csv", 0, args.n_train)
    test_labels = split_manifest(manifest, "test.csv", args.n_train, n)
    test_truth = split_manifest(args.data / "truth.csv", "test_truth.csv", args.n_train, n)

    config = TrainConfig(image_size=args.image_size)
    if args.epochs is not None:
        config.epochs = args.epochs
    with tempfile.TemporaryDirectory(prefix="feature-cache-") as tmp:
        cache = None if args.no_feature_cache else FeatureCache(tmp)
        t0 = time.perf_counter()
        result = train(read_manifest(train_csv, schema), config, progress=False, cache=cache)
        train_s = time.perf_counter() - t0
        if args.model_out:
            result.model.save(args.model_out)

        t0 = time.perf_counter()
        scored = result.model.score(read_manifest(test_labels, schema).examples, progress=False, cache=cache)
        score_s = time.perf_counter() - t0
    truth = read_manifest(test_truth, schema)
    index = {e.key: e.labels for e in truth.examples}
    by_labels = evaluate(scored)
    scored.targets[:] = [index[k] for k in scored.keys]
    by_truth = evaluate(scored)

    epochs_run = len(result.history)
    print(
        f"\n# synthetic scenes seed 0: {args.n_train} train ({result.model.meta['n_train']} after the split and "
        f"undersampling), {len(scored)} held out; {config.backbone} at {args.image_size} px, "
        f"{result.model.meta['trainable_stages']} stage(s) trainable, "
        f"{'no feature cache' if args.no_feature_cache else f'feature cache, {config.cached_views} views'}, "
        f"{epochs_run} epoch(s) "
        f"(best {result.model.metrics['best_epoch']}); "
        f"training {train_s / 60:.1f} min, scoring {len(scored) / score_s:.0f} img/s"
    )
    rows = []
    for h in schema.head_names:
        a, t = by_labels["heads"][h], by_truth["heads"][h]
        rows.append(
            [h, a["accuracy"], a["macro_f1"], t["accuracy"], t["macro_f1"], "yes" if t["macro_f1"] >= TARGET else "NO"]
        )
    print(table(["head", "acc (labels)", "macro-F1 (labels)", "acc (truth)", "macro-F1 (truth)", f">= {TARGET}"], rows))
    for h in schema.head_names:
        per = by_truth["heads"][h]["per_class"]
        print(
            f"  {h}: "
            + ", ".join(f"{c} P {v['precision']:.2f} R {v['recall']:.2f} (n={v['support']})" for c, v in per.items())
        )

    print("\n# loss module vs max-softmax on the held-out scenes (errors = some head wrong)")
    rows = []
    for name, m in (("annotator labels", by_labels["loss_module"]), ("truth", by_truth["loss_module"])):
        rows.append([name, m["error_rate"], m["auroc"], m["msp_auroc"], m["spearman"], m["msp_spearman"]])
    print(table(["judged against", "error rate", "AUROC loss", "AUROC MSP", "Spearman loss", "Spearman MSP"], rows))
    print("\n# per-epoch history")
    print(
        table(
            ["epoch", "loss", "rank loss", "val macro-F1", "img/s"],
            [
                [r["epoch"], r["loss"], r["rank_loss"], r.get("val_macro_f1", float("nan")), r["images_per_s"]]
                for r in result.history
            ],
        )
    )
    (args.data / "accuracy.json").write_text(
        json.dumps({"labels": by_labels, "truth": by_truth, "history": result.history}, indent=2)
    )


if __name__ == "__main__":
    main()
