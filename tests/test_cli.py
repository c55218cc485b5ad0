"""The `zeroshot` command line: classify and make-test-model, in a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

from transformers import AutoConfig, AutoTokenizer


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zeroshot", *args], capture_output=True, text=True, timeout=300
    )


def test_help_lists_the_subcommands():
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("classify", "make-test-model", "serve", "score", "render"):
        assert cmd in out.stdout


def test_classify_prints_the_pipeline_result(tiny_model, reference_pipeline):
    out = run("classify", "The team won the match", "--labels", "sports, politics",
              "--model", tiny_model, "--dtype", "float32")  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    expected = reference_pipeline("The team won the match", candidate_labels="sports, politics")
    assert result["labels"] == expected["labels"]
    assert abs(result["scores"][0] - expected["scores"][0]) < 1e-5


def test_classify_bad_input_is_a_clear_error(tiny_model):
    out = run("classify", "text", "--labels", " , ", "--model", tiny_model)
    assert out.returncode == 2
    assert "no_labels" in out.stderr and "Traceback" not in out.stderr


def test_make_test_model_with_custom_label_order(tmp_path):
    out = run(
        "make-test-model", str(tmp_path / "m"), "--labels", "Entailment,Neutral,Contradiction"
    )
    assert out.returncode == 0, out.stderr
    config = AutoConfig.from_pretrained(tmp_path / "m")
    assert config.label2id == {"Entailment": 0, "Neutral": 1, "Contradiction": 2}
    assert config.model_type == "bart" and config.encoder_layers == 2
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert tok.model_max_length == config.max_position_embeddings
