"""The model-side commands of ``weather-al``: synth, train, evaluate, score.

Each command is a thin layer over a library function; ``backend/cli.py`` mounts them next to the
Label Studio commands. Errors a user can fix are raised as :class:`UsageError` and printed without a
traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from .schema import DEFAULT_LABEL_CONFIG, LabelSchema

logger = logging.getLogger(__name__)


class UsageError(Exception):
    """A problem with the user's input, printed as a one-line message."""


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write synthetic weather scenes with ground truth")
    p.add_argument("--out", required=True, type=Path, help="output folder (images/, manifest.csv, truth.csv, tasks.json)")
    p.add_argument("--n", required=True, type=int, help="number of scenes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label-noise", type=float, default=0.02, help="share of head labels flipped (default 0.02)")
    p.add_argument("--document-root", type=Path, default=None, help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT for tasks.json URLs (default: the parent of --out)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train a model on a labeled manifest")
    _add_data_args(p)
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    p.add_argument("--config", type=Path, default=None, help="JSON training configuration (e.g. from `weather-al tune`)")
    p.add_argument("--backbone", default=None, help="efficientnet_lite0 (default) or resnet18")
    p.add_argument("--weights", default=None, help="local backbone weights file instead of the ImageNet weights")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--overfit-batch", action="store_true", help="only check capacity: overfit one batch and report its accuracy")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a model on a labeled manifest")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="CSV manifest or Label Studio JSON export")
    p.add_argument("--json", type=Path, default=None, help="also write the metrics as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("score", help="score images: per-head labels and probabilities, predicted loss")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="CSV manifest or a folder of images")
    p.add_argument("--out", required=True, type=Path, help="JSON lines output")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_score)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="CSV manifest (image,<head>...) or Label Studio JSON export")
    p.add_argument("--label-config", type=Path, default=DEFAULT_LABEL_CONFIG, help="Label Studio labeling config XML (default: the weather project)")


def load_examples(path: Path, schema: LabelSchema, require_labels: bool = True):
    """A manifest (.csv), a Label Studio export (.json) or, when labels are not required, a folder."""
    from .data import read_folder, read_label_studio_export, read_manifest

    if not path.exists():
        raise UsageError(f"{path} does not exist")
    if path.is_dir():
        if require_labels:
            raise UsageError(f"{path} is a folder; labels come from a CSV manifest or a Label Studio JSON export")
        return read_folder(path, schema)
    if path.suffix.lower() == ".json":
        return read_label_studio_export(path, schema)
    return read_manifest(path, schema, require_labels=require_labels)


def cmd_synth(args: argparse.Namespace) -> None:
    from .synth import generate

    generate(args.out, args.n, seed=args.seed, label_noise=args.label_noise, document_root=args.document_root)
    print(f"wrote {args.n} scenes to {args.out} (manifest.csv, truth.csv, tasks.json)")


def cmd_train(args: argparse.Namespace) -> None:
    from .training import TrainConfig, overfit_one_batch, train

    schema = _schema(args.label_config)
    config = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    for name, attr in (("backbone", "backbone"), ("weights", "weights"), ("image_size", "image_size"), ("epochs", "epochs"), ("seed", "seed")):
        value = getattr(args, attr)
        if value is not None:
            setattr(config, name, value)
    data = load_examples(args.data, schema)
    data.report_problems(str(args.data))
    if not data.examples:
        raise UsageError(f"{args.data}: no usable labeled images")
    if args.overfit_batch:
        report = overfit_one_batch(data, config)
        print(f"overfit one batch of {report['batch_size']} in {report['steps']} steps: "
              + ", ".join(f"{h} accuracy {a:.1%}" for h, a in report["accuracy"].items()))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "overfit.json").write_text(json.dumps(report, indent=2))
        return
    result = train(data, config)
    result.model.save(args.out)
    print(f"saved model {result.model.version} to {args.out}")
    if result.model.metrics.get("heads"):
        print("validation split:")
        print(format_metrics(result.model.metrics))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .checkpoint import TrainedModel
    from .evaluation import evaluate

    model = TrainedModel.load(args.model)
    data = load_examples(args.data, model.schema)
    data.report_problems(str(args.data))
    result = model.score(data.examples, progress=True, desc="evaluating")
    metrics = evaluate(result)
    metrics["skipped"] = len(data.problems) + len(result.failures)
    print(format_metrics(metrics))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(metrics, indent=2))


def cmd_score(args: argparse.Namespace) -> None:
    from .checkpoint import TrainedModel
    from .scoring import score_rows

    model = TrainedModel.load(args.model)
    data = load_examples(args.data, model.schema, require_labels=False)
    data.report_problems(str(args.data))
    result = model.score(data.examples, batch_size=args.batch_size, progress=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as fh:
        for row in score_rows(result):
            fh.write(json.dumps(row) + "\n")
    skipped = len(data.problems) + len(result.failures)
    print(f"scored {len(result)} image(s) to {args.out}" + (f"; skipped {skipped} (see the log)" if skipped else ""))


def format_metrics(metrics: dict[str, Any]) -> str:
    """A plain-text table: one line per head, then the loss module beside max-softmax."""
    lines = [f"{'head':<14}{'accuracy':>10}{'macro-F1':>10}  per-class recall"]
    for name, h in metrics["heads"].items():
        recall = ", ".join(f"{c} {v['recall']:.2f}" for c, v in h["per_class"].items())
        lines.append(f"{name:<14}{h['accuracy']:>10.3f}{h['macro_f1']:>10.3f}  {recall}")
    lm = metrics["loss_module"]
    lines.append(
        f"loss module: Spearman {lm['spearman']:.3f} (max-softmax {lm['msp_spearman']:.3f}); "
        f"AUROC for errors {lm['auroc']:.3f} (max-softmax {lm['msp_auroc']:.3f}); error rate {lm['error_rate']:.3f} on {lm['n']} images"
    )
    return "\n".join(lines)


def _schema(path: Path) -> LabelSchema:
    if not Path(path).is_file():
        raise UsageError(f"label config {path} does not exist")
    return LabelSchema.from_file(path)

