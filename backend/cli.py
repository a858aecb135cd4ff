"""``weather-al``: the command line. Model commands come from ``model/cli.py``; the Label Studio
commands (serve, worker, connect, demo) are added here as they are built."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from backend.labelstudio.client import LabelStudioError
from backend.labelstudio.export import read_project_export
from backend.labelstudio.tasks import read_label_studio_export
from backend.settings import get_settings
from model import cli as model_cli
from model.schema import LabelSchema, SchemaError

if TYPE_CHECKING:
    from model.analysis.inputs import AnalysisInput


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weather-al", description="Active-learning image classification for Label Studio"
    )
    parser.add_argument("--log-level", default=None, help="logging level (default: the LOG_LEVEL setting, INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    model_cli.add_commands(sub, readers=READERS)
    _add_backend_commands(sub)
    return parser


def _add_backend_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="run the ML backend (web process; embeds Redis and a worker when REDIS_URL is unset)"
    )
    p.add_argument("--port", type=int, default=None, help="default: PORT or 9090")
    p.add_argument("--no-worker", action="store_true", help="do not start a worker beside the web process")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "worker", help="run a training worker on REDIS_URL (any number, on any machine sharing MODEL_DIR)"
    )
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("connect", help="connect a Label Studio project to this backend")
    p.add_argument("--url", default=None, help="Label Studio URL (default: the LABEL_STUDIO_URL setting)")
    p.add_argument("--api-key", default=None, help="default: the LABEL_STUDIO_API_KEY setting")
    p.add_argument("--project", required=True, type=int)
    p.add_argument(
        "--backend-url", required=True, help="the URL Label Studio reaches this backend at, e.g. http://localhost:9090"
    )
    p.add_argument("--title", default="weather-al")
    p.add_argument(
        "--local-storage",
        type=Path,
        default=None,
        help="absolute folder under LOCAL_FILES_DOCUMENT_ROOT to attach as Local Storage",
    )
    p.set_defaults(func=_cmd_connect)

    p = sub.add_parser(
        "demo", help="the whole loop on this machine: Label Studio, Redis, backend, worker, synthetic scenes"
    )
    p.add_argument(
        "--workdir", type=Path, default=Path("demo_data"), help="where everything is kept (default ./demo_data)"
    )
    p.add_argument("--n", type=int, default=600, help="synthetic scenes in the project (default 600)")
    p.add_argument("--seed-size", type=int, default=100, help="random seed set labeled first (default 100)")
    p.add_argument("--k", type=int, default=50, help="tasks people label per cycle (default 50)")
    p.add_argument("--cycles", type=int, default=0, help="unattended cycles after the first training (default 0)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the training default)")
    p.add_argument(
        "--no-wait", action="store_true", help="stop everything after the cycles instead of waiting for a person"
    )
    p.add_argument(
        "--label-studio-url",
        default=None,
        help="use this running Label Studio instead of starting one (with LABEL_STUDIO_API_KEY and --document-root)",
    )
    p.add_argument(
        "--document-root", type=Path, default=None, help="with --label-studio-url: its LOCAL_FILES_DOCUMENT_ROOT"
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("undo-accept", help="take back a bulk accept of certified predictions by its record id")
    p.add_argument("--project", required=True, type=int)
    p.add_argument("--record", default=None, help="record id; omit to list the records")
    p.set_defaults(func=_cmd_undo_accept)


def _cmd_serve(args: argparse.Namespace) -> None:
    from backend.web.server import serve

    settings = get_settings()
    if args.port:
        settings = settings.model_copy(update={"port": args.port})
    serve(settings, with_worker=False if args.no_worker else None)


def _cmd_worker(args: argparse.Namespace) -> None:
    from backend.worker.run import work

    work(burst=args.burst)


def _cmd_connect(args: argparse.Namespace) -> None:
    from backend.labelstudio.connect import connect

    s = get_settings()
    url, api_key = args.url or s.label_studio_url, args.api_key or s.label_studio_api_key
    if not api_key:
        raise model_cli.UsageError("--api-key (or the LABEL_STUDIO_API_KEY setting) is required")
    auth = (s.basic_auth_user, s.basic_auth_pass) if s.basic_auth_user and s.basic_auth_pass else None
    out = connect(url, api_key, args.project, args.backend_url, args.title, args.local_storage, auth)
    print(
        f"project {out['project']} ({out['title']}) is connected: ML backend {out['ml_backend']}, "
        "uniform sampling until the first model"
    )


def _cmd_demo(args: argparse.Namespace) -> None:
    from backend.dev.demo import RunningLabelStudio, run_demo

    label_studio = None
    if args.label_studio_url:
        key = get_settings().label_studio_api_key
        if not key or not args.document_root:
            raise model_cli.UsageError(
                "--label-studio-url needs LABEL_STUDIO_API_KEY (its token) "
                "and --document-root (its LOCAL_FILES_DOCUMENT_ROOT)"
            )
        label_studio = RunningLabelStudio(args.label_studio_url.rstrip("/"), key, args.document_root.resolve())
    run_demo(
        args.workdir,
        n=args.n,
        seed_size=args.seed_size,
        cycles=args.cycles,
        wait=not args.no_wait,
        k=args.k,
        epochs=args.epochs,
        label_studio=label_studio,
    )


def _cmd_undo_accept(args: argparse.Namespace) -> None:
    from backend.labelstudio.client import LabelStudioProject
    from backend.store import ModelStore
    from backend.worker.accepts import list_accepts
    from backend.worker.autolabel import undo_accept

    s = get_settings()
    store = ModelStore(s.model_dir, s.redis_url)
    if not args.record:
        for r in list_accepts(store, str(args.project)):
            print(
                f"{r['id']}  version {r['version']}  {len(r['task_ids'])} tasks  "
                f"bound {r['certified_lower_bound']}  {'undone' if r['undone'] else ''}"
            )
        return
    ls = LabelStudioProject(s.label_studio_url, s.label_studio_api_key or "", args.project)
    outcome = undo_accept(ls, store, str(args.project), args.record)
    print(f"deleted {outcome['deleted']} machine annotation(s) of record {args.record}")
    if outcome["kept"]:
        print(
            f"kept the annotations of {len(outcome['kept'])} task(s) a person saved after the accept: {outcome['kept']}"
        )


def _read_live_project(url: str | None, api_key: str | None, project: int, cache_dir: Path) -> AnalysisInput:
    """``analyze --project``: a live project, with Label Studio's URL and token from the settings unless given."""
    from backend.labelstudio.analysis_input import read_export_tasks

    s = get_settings()
    key = api_key or s.label_studio_api_key
    if not key:
        raise model_cli.UsageError("--project needs --api-key (or the LABEL_STUDIO_API_KEY setting)")
    export = read_project_export(url or s.label_studio_url, key, project, cache_dir)
    source = f"{url or s.label_studio_url} project {project}"
    return read_export_tasks(
        export.tasks,
        LabelSchema.from_xml(export.label_config),
        export.document_root,
        source=source,
        errors=export.errors,
    )


def _read_export_for_analysis(path: Path, schema: LabelSchema, document_root: Path | None) -> AnalysisInput:
    """``analyze --data export.json``; the analysis package is imported only when a command needs it."""
    from backend.labelstudio.analysis_input import read_export_input

    return read_export_input(path, schema, document_root)


#: Label Studio's formats for the model's commands (model/ reads manifests and examples only)
READERS = model_cli.LabelStudioReaders(
    examples=read_label_studio_export, analysis=_read_export_for_analysis, project=_read_live_project
)


def _log_level(given: str | None) -> str:
    """--log-level, else the LOG_LEVEL setting; INFO when the settings do not validate (the command then says why)."""
    if given:
        return given
    try:
        return get_settings().log_level
    except ValueError:
        return "INFO"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=_log_level(args.log_level).upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per SDK request drowns the useful ones
    try:
        args.func(args)
    except (model_cli.UsageError, SchemaError, FileNotFoundError, ValueError, LabelStudioError) as exc:
        print(f"weather-al {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
