"""`zeroshot` command line: classify, make-test-model, serve (Ray Serve), score (Ray Data).

`serve` and `score` live in the `serve` and `pipelines` packages; their modules are imported
only when their subcommand is parsed or run, so `zeroshot classify` never imports Ray.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from zeroshot.config import DEFAULT_MODEL, DEFAULT_TEMPLATE

# subcommand -> module with add_arguments(parser) and main(args) -> int
_PLUGINS = {
    "serve": ("serve.cli", "run the Ray Serve app (HTTP) until interrupted"),
    "score": ("pipelines.cli", "score a Parquet dataset with Ray Data, writing Parquet"),
}


def add_model_args(
    p: argparse.ArgumentParser, device_help: str = "auto, cpu, cuda or cuda:N"
) -> None:
    """--model, --revision, --device, --dtype: the same four options on every subcommand."""
    p.add_argument("--model", default=DEFAULT_MODEL, help="hub id or local directory")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument("--device", default="auto", help=device_help)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zeroshot", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("classify", help="classify one text locally (no Ray)")
    p.add_argument("text")
    p.add_argument("--labels", required=True, help='candidate labels, e.g. "a,b,c"')
    p.add_argument("--template", default=DEFAULT_TEMPLATE, help="hypothesis template with {}")
    p.add_argument("--multi-label", action="store_true")
    add_model_args(p)

    p = sub.add_parser("make-test-model", help="write a random-weight BART model for tests")
    p.add_argument("directory")
    p.add_argument("--size", choices=["tiny", "full"], default="tiny")
    p.add_argument(
        "--labels",
        default="contradiction,neutral,entailment",
        help="label names in id order (comma-separated)",
    )
    p.add_argument("--seed", type=int, default=0)

    for name, (module, help_text) in _PLUGINS.items():
        p = sub.add_parser(name, help=help_text)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from zeroshot.errors import ZeroShotError

    try:
        if args.command == "classify":
            from zeroshot.classifier import ZeroShotClassifier

            clf = ZeroShotClassifier.from_pretrained(
                args.model, args.revision, device=args.device, dtype=args.dtype
            )
            result = clf(args.text, args.labels, args.template, args.multi_label)
            print(json.dumps(result, ensure_ascii=False, indent=2))
            return 0
        if args.command == "make-test-model":
            from zeroshot.fixtures import make_test_model

            labels = [s.strip() for s in args.labels.split(",") if s.strip()]
            path = make_test_model(args.directory, args.size, labels, seed=args.seed)
            print(f"wrote a random-weight {args.size} model to {path}")
            return 0
        module = importlib.import_module(_PLUGINS[args.command][0])
        return int(module.main(args) or 0)
    except ZeroShotError as exc:
        print(f"error ({exc.type.value}): {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
