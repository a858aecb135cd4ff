"""The model-side commands of ``weather-al``: synth, train, evaluate, score, simulate.

Each command is a thin layer over a library function; ``backend/cli.py`` mounts them next to the
Label Studio commands. Errors a user can fix are raised as :class:`UsageError` and printed without a
traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.al.confidence import RISK_SCORES
from model.al.strategies import STRATEGY_NAMES
from model.schema import DEFAULT_LABEL_CONFIG, LabelSchema
from model.settings import DEFAULT_FEATURE_CACHE_DIR, CacheSettings

if TYPE_CHECKING:  # the commands import their modules lazily, so `weather-al --help` stays fast
    from model.analysis.inputs import AnalysisInput
    from model.data.examples import ExampleSet
    from model.nn.feature_cache import FeatureCache

logger = logging.getLogger(__name__)


class UsageError(Exception):
    """A problem with the user's input, printed as a one-line message."""


@dataclass(frozen=True)
class LabelStudioReaders:
    """What the backend offers the model's commands, so that model/ knows no Label Studio format or API.

    ``examples``: a JSON export -> labeled examples (train, evaluate, score, ...). ``analysis``: a JSON export
    (and its LOCAL_FILES_DOCUMENT_ROOT) -> what ``analyze`` reads. ``project``: a live project (url, token,
    id, image folder; url and token None mean the reader's own settings) -> what ``analyze`` reads.
    """

    examples: Callable[[Path, LabelSchema], ExampleSet]
    analysis: Callable[[Path, LabelSchema, Path | None], AnalysisInput]
    project: Callable[[str | None, str | None, int, Path], AnalysisInput]


def add_commands(sub: argparse._SubParsersAction, readers: LabelStudioReaders | None = None) -> None:
    """The model's commands; with ``readers`` they also read Label Studio exports and live projects."""
    p = sub.add_parser("synth", help="write synthetic weather scenes with ground truth")
    p.add_argument(
        "--out", required=True, type=Path, help="output folder (images/, manifest.csv, truth.csv, tasks.json)"
    )
    p.add_argument("--n", required=True, type=int, help="number of scenes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label-noise", type=float, default=0.02, help="share of head labels flipped (default 0.02)")
    p.add_argument(
        "--document-root",
        type=Path,
        default=None,
        help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT for tasks.json URLs (default: the parent of --out)",
    )
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train a model on a labeled manifest")
    _add_data_args(p)
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    p.add_argument(
        "--config", type=Path, default=None, help="JSON training configuration (e.g. from `weather-al tune`)"
    )
    p.add_argument("--backbone", default=None, help="efficientnet_lite0 (default) or resnet18")
    p.add_argument("--weights", default=None, help="local backbone weights file instead of the ImageNet weights")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--overfit-batch", action="store_true", help="only check capacity: overfit one batch and report its accuracy"
    )
    add_cache_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a model on a labeled manifest")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="CSV manifest or Label Studio JSON export")
    p.add_argument("--json", type=Path, default=None, help="also write the metrics as JSON")
    add_cache_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("score", help="score images: per-head labels and probabilities, predicted loss")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="CSV manifest or a folder of images")
    p.add_argument("--out", required=True, type=Path, help="JSON lines output")
    p.add_argument("--batch-size", type=int, default=32)
    add_cache_args(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser(
        "simulate", help="run the active-learning loop against a simulated annotator; write results.csv and report.html"
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="labeled CSV manifest (truth.csv beside it is used); default: synthesise scenes into OUT/data",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--pool",
        type=int,
        default=None,
        help="pool size (default: all of --data but the test set; 2000 synthetic scenes)",
    )
    p.add_argument(
        "--test", type=int, default=None, help="held-out test images (default: a quarter of the pool, 20..2000)"
    )
    p.add_argument(
        "--seed-size", type=int, default=200, help="random seed set (about half is held out for calibration)"
    )
    p.add_argument("--k", type=int, default=100, help="manual picks per cycle")
    p.add_argument("--audit", type=int, default=50, help="audit sample per cycle")
    p.add_argument("--probes", type=int, default=50, help="random probes drawn per cycle (they certify)")
    p.add_argument(
        "--score",
        choices=RISK_SCORES,
        default="confidence",
        help="what scores, ranks and bands: the learned confidence or the loss module's predicted loss",
    )
    p.add_argument("--cycles", type=int, default=10)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds")
    p.add_argument(
        "--strategies",
        default="loss,random,entropy,margin,confidence",
        help=f"comma-separated: {', '.join(STRATEGY_NAMES)}",
    )
    p.add_argument(
        "--calibration-labels",
        choices=("annotator", "truth"),
        default="annotator",
        help="what the holdout, audits and probes reveal: the annotator's (noisy) labels or the truth (a reviewer)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="JSON training configuration (e.g. from `weather-al tune`); the flags below override it",
    )
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--backbone", default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers for decoding (default: up to 2)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs side by side in their own processes (a GPU host: one per run, --workers 0)",
    )
    p.add_argument(
        "--label-config",
        type=Path,
        default=DEFAULT_LABEL_CONFIG,
        help="Label Studio labeling config XML of the manifest's heads (default: the weather project)",
    )
    add_cache_args(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "analyze",
        help=(
            "analyse a data set: distribution, unreadable images, label problems, duplicates, outliers, human baseline"
        ),
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="CSV manifest or Label Studio JSON export (or --url/--api-key/--project)",
    )
    p.add_argument("--out", required=True, type=Path, help="folder for report.html and summary.json")
    p.add_argument("--model", type=Path, default=None, help="a checkpoint to compare with the human baseline")
    p.add_argument(
        "--label-config",
        type=Path,
        default=DEFAULT_LABEL_CONFIG,
        help="labeling config XML (default: the weather project; a live project uses its own)",
    )
    p.add_argument(
        "--document-root",
        type=Path,
        default=None,
        help="for an export: LOCAL_FILES_DOCUMENT_ROOT its image paths are under (default: the export's folder)",
    )
    p.add_argument("--url", default=None, help="live project: Label Studio URL (default: the LABEL_STUDIO_URL setting)")
    p.add_argument("--api-key", default=None, help="live project: token (default: the LABEL_STUDIO_API_KEY setting)")
    p.add_argument("--project", type=int, default=None, help="live project id, read through the SDK")
    p.add_argument("--image-size", type=int, default=None, help="embedding input size (default 128)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers for decoding (default: up to 2)")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser(
        "tune", help="random search of training settings on the validation split; writes best_config.json"
    )
    _add_data_args(p)
    p.add_argument("--trials", required=True, type=int, help="number of trials; trial 0 is the baseline configuration")
    p.add_argument(
        "--out", required=True, type=Path, help="folder for best_config.json, trials.csv/json and trials.png"
    )
    p.add_argument(
        "--config", type=Path, default=None, help="baseline configuration (default: the fixed TrainConfig defaults)"
    )
    p.add_argument(
        "--space", type=Path, default=None, help='JSON search space, e.g. {"epochs": [5, 10], "lr": [1e-4, 1e-2]}'
    )
    p.add_argument("--epochs", type=int, default=None, help="baseline epochs")
    p.add_argument("--image-size", type=int, default=None, help="baseline image size")
    p.add_argument("--seed", type=int, default=0, help="seed of the search (training keeps the configuration's seed)")
    p.set_defaults(func=cmd_tune)
    for command in sub.choices.values():
        command.set_defaults(readers=readers)


def add_cache_args(p: argparse.ArgumentParser) -> None:
    """--feature-cache DIR and --no-feature-cache, read back by :func:`feature_cache`."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--feature-cache",
        type=Path,
        default=None,
        help="folder of the frozen-backbone feature cache (default: FEATURE_CACHE_DIR, else "
        f"{DEFAULT_FEATURE_CACHE_DIR})",
    )
    group.add_argument(
        "--no-feature-cache", action="store_true", help="run the whole backbone on every pass (slower; same scores)"
    )


def feature_cache(args: argparse.Namespace) -> FeatureCache | None:
    """The cache the command line asks for: --feature-cache, else FEATURE_CACHE_DIR and FEATURE_CACHE_MAX_MB."""
    if args.no_feature_cache:
        return None
    settings = CacheSettings()
    if args.feature_cache is not None:
        settings.feature_cache_dir = args.feature_cache
    from model.nn.feature_cache import FeatureCache

    return FeatureCache.from_settings(settings, DEFAULT_FEATURE_CACHE_DIR)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", required=True, type=Path, help="CSV manifest (image,<head>...) or Label Studio JSON export"
    )
    p.add_argument(
        "--label-config",
        type=Path,
        default=DEFAULT_LABEL_CONFIG,
        help="Label Studio labeling config XML (default: the weather project)",
    )


def load_examples(path: Path, schema: LabelSchema, readers: LabelStudioReaders | None, require_labels: bool = True):
    """A manifest (.csv), a Label Studio export (.json, through ``readers``) or, without labels, a folder."""
    from model.data.examples import read_folder, read_manifest

    if not path.exists():
        raise UsageError(f"{path} does not exist")
    if path.is_dir():
        if require_labels:
            raise UsageError(f"{path} is a folder; labels come from a CSV manifest or a Label Studio JSON export")
        return read_folder(path, schema)
    if path.suffix.lower() == ".json":
        if readers is None:
            raise UsageError(f"{path}: Label Studio exports are read by `weather-al` (the backend's command line)")
        return readers.examples(path, schema)
    return read_manifest(path, schema, require_labels=require_labels)


def cmd_synth(args: argparse.Namespace) -> None:
    from model.sim.scenes import generate

    generate(args.out, args.n, seed=args.seed, label_noise=args.label_noise, document_root=args.document_root)
    print(f"wrote {args.n} scenes to {args.out} (manifest.csv, truth.csv, tasks.json)")


def cmd_train(args: argparse.Namespace) -> None:
    from model.training.trainer import TrainConfig, overfit_one_batch, train

    schema = _schema(args.label_config)
    config = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    for name, attr in (
        ("backbone", "backbone"),
        ("weights", "weights"),
        ("image_size", "image_size"),
        ("epochs", "epochs"),
        ("seed", "seed"),
    ):
        value = getattr(args, attr)
        if value is not None:
            setattr(config, name, value)
    data = load_examples(args.data, schema, args.readers)
    data.report_problems(str(args.data))
    if not data.examples:
        raise UsageError(f"{args.data}: no usable labeled images")
    if args.overfit_batch:
        report = overfit_one_batch(data, config)
        print(
            f"overfit one batch of {report['batch_size']} in {report['steps']} steps: "
            + ", ".join(f"{h} accuracy {a:.1%}" for h, a in report["accuracy"].items())
        )
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "overfit.json").write_text(json.dumps(report, indent=2))
        return
    result = train(data, config, cache=feature_cache(args))
    result.model.save(args.out)
    print(f"saved model {result.model.version} to {args.out}")
    if result.model.metrics.get("heads"):
        print("validation split:")
        print(format_metrics(result.model.metrics))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from model.nn.checkpoint import TrainedModel
    from model.training.evaluation import evaluate

    model = TrainedModel.load(args.model)
    data = load_examples(args.data, model.schema, args.readers)
    data.report_problems(str(args.data))
    result = model.score(data.examples, progress=True, desc="evaluating", cache=feature_cache(args))
    metrics = evaluate(result)
    metrics["skipped"] = len(data.problems) + len(result.failures)
    print(format_metrics(metrics))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(metrics, indent=2))


def cmd_score(args: argparse.Namespace) -> None:
    from model.nn.checkpoint import TrainedModel
    from model.training.scoring import score_rows

    model = TrainedModel.load(args.model)
    data = load_examples(args.data, model.schema, args.readers, require_labels=False)
    data.report_problems(str(args.data))
    result = model.score(data.examples, batch_size=args.batch_size, progress=True, cache=feature_cache(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as fh:
        for row in score_rows(result):
            fh.write(json.dumps(row) + "\n")
    skipped = len(data.problems) + len(result.failures)
    print(f"scored {len(result)} image(s) to {args.out}" + (f"; skipped {skipped} (see the log)" if skipped else ""))


def cmd_simulate(args: argparse.Namespace) -> None:
    from model.sim.simulate import SimulationData, default_test_size, simulate
    from model.training.trainer import TrainConfig

    config = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    for name in ("image_size", "epochs", "backbone", "device", "workers"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    if args.data is None:
        from model.sim.scenes import generate

        args.pool = args.pool or 2000
        args.test = args.test or default_test_size(args.pool)
        generate(args.out / "data", args.pool + args.test, seed=0, workers=args.workers)
        args.data = args.out / "data" / "manifest.csv"
    elif not args.data.is_file():
        raise UsageError(f"{args.data} is not a manifest file")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    data = SimulationData.from_manifest(
        args.data, schema=_schema(args.label_config), pool_size=args.pool, test_size=args.test
    )
    cache = feature_cache(args)
    result = simulate(
        data,
        strategies,
        seeds,
        args.out,
        seed_size=args.seed_size,
        k=args.k,
        cycles=args.cycles,
        audit_size=args.audit,
        probe_size=args.probes,
        score=args.score,
        train_config=config,
        calibration_labels=args.calibration_labels,
        jobs=args.jobs,
        cache_features=cache is not None,
        feature_cache=cache,
    )
    print(f"wrote {result.results_path} and {result.report_path}")


def cmd_analyze(args: argparse.Namespace) -> None:
    from model.analysis import analyze, read_input
    from model.analysis.embeddings import EMBEDDING_SIZE
    from model.nn.checkpoint import TrainedModel

    readers: LabelStudioReaders | None = args.readers
    if args.project is not None:
        if readers is None:
            raise UsageError("--project reads a live project through the backend; run it as `weather-al analyze`")
        data = readers.project(args.url, args.api_key, args.project, args.out / "images")
    elif args.data is not None and args.data.suffix.lower() == ".json":
        if readers is None:
            raise UsageError(f"{args.data}: Label Studio exports are read by `weather-al` (the backend's command line)")
        data = readers.analysis(args.data, _schema(args.label_config), args.document_root)
    elif args.data is not None:
        data = read_input(args.data, _schema(args.label_config))
    else:
        raise UsageError(
            "give --data (a CSV manifest or a Label Studio JSON export), or --url, --api-key and --project"
        )
    model = TrainedModel.load(args.model) if args.model else None
    result = analyze(data, args.out, model=model, image_size=args.image_size or EMBEDDING_SIZE, workers=args.workers)
    s = result.summary
    d = s["duplicates"]
    print(
        f"{s['n_items']} images ({s['n_labeled']} labeled): {s['n_unreadable']} unreadable, "
        f"{len(s['label_problems']['issues'])} unusable labels, "
        f"{len(s['label_problems']['disagreements'])} disagreements, "
        f"{s['label_problems']['n_flagged']} suspected wrong labels, "
        f"{d['n_exact_groups']} exact and {d['n_near_groups']} near duplicate groups"
    )
    print(f"wrote {result.report_path} and {result.summary_path}")


def cmd_tune(args: argparse.Namespace) -> None:
    from model.training.trainer import TrainConfig
    from model.training.tune import SearchSpace, format_table, tune, write_outputs

    base = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    if args.epochs is not None:
        base.epochs = args.epochs
    if args.image_size is not None:
        base.image_size = args.image_size
    space = SearchSpace.from_file(args.space) if args.space else SearchSpace()
    data = load_examples(args.data, _schema(args.label_config), args.readers)
    data.report_problems(str(args.data))
    if not data.examples:
        raise UsageError(f"{args.data}: no usable labeled images")
    result = tune(data, args.trials, base=base, space=space, seed=args.seed)
    paths = write_outputs(result, args.out, space)
    print(format_table(result))
    best, baseline = result.best, result.trials[0]
    print(
        f"best: trial {best.number}, validation mean macro-F1 {best.score:.3f} "
        f"(baseline: {baseline.score if baseline.score is None else round(baseline.score, 3)})"
    )
    print(
        f"wrote {paths['best_config']} (use: weather-al train --config {paths['best_config']}, "
        f"or TRAIN_CONFIG for the backend), {paths['plot']}"
    )


def format_metrics(metrics: dict[str, Any]) -> str:
    """A plain-text table: one line per head, then the loss module beside max-softmax."""
    lines = [f"{'head':<14}{'accuracy':>10}{'macro-F1':>10}  per-class recall"]
    for name, h in metrics["heads"].items():
        recall = ", ".join(f"{c} {v['recall']:.2f}" for c, v in h["per_class"].items())
        lines.append(f"{name:<14}{h['accuracy']:>10.3f}{h['macro_f1']:>10.3f}  {recall}")
    lm = metrics["loss_module"]
    lines.append(
        f"loss module: Spearman {lm['spearman']:.3f} (max-softmax {lm['msp_spearman']:.3f}); "
        f"AUROC for errors {lm['auroc']:.3f} (max-softmax {lm['msp_auroc']:.3f}); "
        f"error rate {lm['error_rate']:.3f} on {lm['n']} images"
    )
    return "\n".join(lines)


def _schema(path: Path) -> LabelSchema:
    if not Path(path).is_file():
        raise UsageError(f"label config {path} does not exist")
    return LabelSchema.from_file(path)
