"""`zeroshot` command line: classify, make-test-model, serve (Ray Serve), score (Ray Data).

`serve` and `score` live in the `serve` and `pipelines` packages; only the module of the
subcommand being run is imported, so `zeroshot classify` and `zeroshot --help` never import
Ray. Options that set a config field are declared by that field (`zeroshot.flags`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

# subcommand -> (module with add_arguments(parser) and main(args) -> int, help)
_PLUGINS = {
    "serve": ("serve.cli", "run the Ray Serve app (HTTP) until interrupted"),
    "score": ("pipelines.cli", "score a Parquet dataset with Ray Data, writing Parquet"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; a plugin subcommand's options are loaded only when it is `command`."""
    from zeroshot.config import DEFAULT_TEMPLATE, ModelConfig
    from zeroshot.flags import MODEL_FLAGS, add_flags

    parser = argparse.ArgumentParser(prog="zeroshot", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("classify", help="classify one text locally (no Ray)")
    p.add_argument("text")
    p.add_argument("--labels", required=True, help='candidate labels, e.g. "a,b,c"')
    p.add_argument("--template", default=DEFAULT_TEMPLATE, help="hypothesis template with {}")
    p.add_argument("--multi-label", action="store_true")
    add_flags(p, ModelConfig, MODEL_FLAGS)

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
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command(argv)).parse_args(argv)
    from zeroshot.errors import ZeroShotError

    try:
        if args.command == "classify":
            from zeroshot.classifier import ZeroShotClassifier
            from zeroshot.config import ModelConfig
            from zeroshot.flags import values

            clf = ZeroShotClassifier.from_config(ModelConfig.model_validate(values(args)))
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
