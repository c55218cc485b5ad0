"""`zeroshot` command line: classify, make-test-model, serve (Ray Serve), score (Ray Data),
render (KubeRay manifests).

`serve`, `score` and `render` live in the `serve`, `pipelines` and `cluster` packages; only the
module of the subcommand being run is imported, so `zeroshot classify` and `zeroshot --help`
never import Ray. Options that set a config field are declared by that field (`zeroshot.flags`).
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
    "render": ("cluster.render", "write the KubeRay manifests (RayService, RayJob, RayCluster)"),
}

DISTRIBUTION = "zeroshot-serving"
DESCRIPTION = (
    "Zero-shot text classification with an NLI model: classify one text here, serve an HTTP "
    "API (Ray Serve), score Parquet datasets (Ray Data), render KubeRay manifests, or make a "
    "random-weight test model."
)

SIZES_HELP = (
    "tiny: 2 encoder layers, d_model 64, a 2000-token vocabulary (about 1 MB; built in a "
    "second, for tests); full: valhalla/distilbart-mnli-12-1's exact shape (12 encoder "
    "layers, 1 decoder layer, d_model 1024, 50265 tokens; about 900 MB of float32 weights, "
    "for benchmarks; for --arch roberta, deberta-v2 and bert, the family's base shape: 12 "
    "layers, 768 wide, 512 tokens). Both use random weights and a tokenizer of the family's "
    "kind trained here."
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, except where there is none worth showing (None, an
    on/off switch) or the help already states it (the config flags of `zeroshot.flags`)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        # A switch's default is its absence: "--no-x (default: True)" would only confuse.
        if switch or action.default is None or "(default: " in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def version() -> str:
    """This distribution's version, and those of the libraries answers depend on (read from
    the installed metadata: nothing is imported)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    def of(name: str) -> str:
        try:
            return installed(name)
        except PackageNotFoundError:
            return "not installed"

    deps = ", ".join(f"{name} {of(name)}" for name in ("ray", "torch", "transformers"))
    return f"{DISTRIBUTION} {of(DISTRIBUTION)} ({deps})"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; a plugin subcommand's options are loaded only when it is `command`."""
    from zeroshot.config import DEFAULT_TEMPLATE, ModelConfig
    from zeroshot.flags import MODEL_FLAGS, add_flags

    parser = argparse.ArgumentParser(
        prog="zeroshot", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=version())
    sub = parser.add_subparsers(dest="command", required=True)

    def add_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=HelpFormatter
        )

    p = add_parser("classify", "classify one text locally (no Ray)")
    p.add_argument("text")
    p.add_argument("--labels", required=True, help='candidate labels, e.g. "a,b,c"')
    p.add_argument("--template", default=DEFAULT_TEMPLATE, help="hypothesis template with {}")
    p.add_argument(
        "--multi-label",
        action="store_true",
        help="score each label on its own (entailment vs contradiction) instead of a softmax "
        "across labels",
    )
    add_flags(p, ModelConfig, MODEL_FLAGS)

    p = add_parser("make-test-model", "write a random-weight NLI model for tests")
    p.add_argument("directory")
    p.add_argument("--size", choices=["tiny", "full"], default="tiny", help=SIZES_HELP)
    p.add_argument(
        "--arch",
        choices=["bart", "roberta", "deberta-v2", "bert"],
        default="bart",
        help="the family: its real architecture and a tokenizer of its kind trained here "
        "(byte-level BPE for bart/roberta, unigram for deberta-v2, WordPiece for bert)",
    )
    p.add_argument(
        "--labels",
        default="contradiction,neutral,entailment",
        help="label names in id order (comma-separated; entailment,not_entailment for a "
        "two-class head)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")

    for name, (module, help_text) in _PLUGINS.items():
        p = add_parser(name, help_text)
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
            path = make_test_model(
                args.directory, args.size, labels, seed=args.seed, arch=args.arch
            )
            print(f"wrote a random-weight {args.size} {args.arch} model to {path}")
            return 0
        module = importlib.import_module(_PLUGINS[args.command][0])
        return int(module.main(args) or 0)
    except ZeroShotError as exc:
        print(f"error ({exc.type.value}): {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
