"""The offline job without Ray: input resolution, pre-flight checks, the stage functions, the CLI's
clear errors. (The job itself runs in test_pipelines_ray.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from reference import assert_same_result

from pipelines.config import JobConfig
from pipelines.errors import JobInputError
from pipelines.files import _glob_match, done_mask, id_keys, inspect_output, resolve_input, unify
from pipelines.job import prepare
from pipelines.stages import IDS, LENS, LOGITS, StageSpec, assemble, encode
from zeroshot.config import Limits
from zeroshot.errors import ErrorType, ZeroShotError

LABELS = ["sports", "politics", "business"]


def write(path, table) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return str(path)


@pytest.fixture
def tree(tmp_path):
    """A hive tree, a 0-row file, and a non-data marker file."""
    t = pa.table({"text": ["a b", "c d"], "n": [1, 2]})
    write(tmp_path / "in" / "lang=en" / "year=2024" / "a.parquet", t)
    write(tmp_path / "in" / "lang=fr" / "year=2024" / "b.parquet", t)
    write(tmp_path / "in" / "lang=fr" / "year=2025" / "empty.parquet", t.slice(0, 0))
    (tmp_path / "in" / "_SUCCESS").write_text("")
    return tmp_path / "in"


def test_resolve_directory_keeps_hive_keys_and_counts_rows(tree):
    files = resolve_input(str(tree))
    assert len(files.files) == 3
    assert files.num_rows == 4
    assert files.partition_columns == ["lang", "year"]
    assert files.columns == ["text", "n", "lang", "year"]


def test_resolve_glob_and_single_file(tree):
    files = resolve_input(str(tree / "lang=fr" / "*" / "*.parquet"))
    assert [f.rsplit("/", 1)[1] for f in files.files] == ["b.parquet", "empty.parquet"]
    assert files.num_rows == 2
    one = resolve_input(str(tree / "lang=en" / "year=2024" / "a.parquet"))
    assert one.num_rows == 2 and one.partition_columns == []


def test_glob_stars_stay_in_one_level():
    assert _glob_match("/d/x.parquet", "/d/*.parquet")
    assert not _glob_match("/d/sub/x.parquet", "/d/*.parquet")
    assert _glob_match("/d/sub/deeper/x.parquet", "/d/**/*.parquet")


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no Parquet files"),
        (lambda p: (p / "x.csv").write_text("text\nhi\n") and p / "x.csv", "not a readable"),
        (lambda p: p / "nothing-*.parquet", "no Parquet files match"),
    ],
)
def test_bad_inputs_are_clear_errors(tmp_path, setup, message):
    with pytest.raises(JobInputError, match=message):
        resolve_input(str(setup(tmp_path)))


def test_string_flavours_unify_to_large_string():
    schemas = [
        pa.schema([("text", pa.string()), ("n", pa.int32())]),
        pa.schema([("text", pa.dictionary(pa.int32(), pa.string())), ("n", pa.int64())]),
        pa.schema([("text", pa.large_string()), ("extra", pa.bool_())]),
    ]
    merged = unify(schemas)
    assert merged.field("text").type == pa.large_string()
    assert merged.field("n").type == pa.int64()
    assert merged.names == ["text", "n", "extra"]
    with pytest.raises(JobInputError, match="do not mix"):
        unify([pa.schema([("n", pa.int64())]), pa.schema([("n", pa.list_(pa.int8()))])])


def test_done_mask_matches_ids_of_any_type():
    ints = pa.array([5, 1, None, 9], pa.int64())
    done = np.unique(id_keys(pa.array([9, 5, 7])))
    assert done_mask(ints, done).tolist() == [True, False, False, True]
    strings = pa.array(["b", "a", None], pa.large_string())
    done = np.unique(id_keys(pa.array(["a", "zz"], pa.string())))
    assert done_mask(strings, done).tolist() == [False, True, False]
    assert done_mask(strings.dictionary_encode(), done).tolist() == [False, True, False]


def spec_for(model: str, **kw) -> StageSpec:
    args = dict(
        model=model,
        revision=None,
        limits=Limits(max_chars=200),
        labels=tuple(LABELS),
        template="This example is {}.",
        multi_label=False,
        text_column="body",
        id_column="id",
        output_columns=("id", "body", "labels", "scores", "top_label", "top_score", "error"),
    )
    args.update(kw)
    return StageSpec(**args)


@pytest.mark.parametrize("multi_label", [False, True])
def test_stages_without_ray_match_the_pipeline(tiny_model, reference_pipeline, multi_label):
    from zeroshot.assemble import NliLabels
    from zeroshot.loading import load_config
    from zeroshot.pairs import Pairs
    from zeroshot.score import Scorer

    texts = ["The team won the match", None, "", "x" * 201, "Élections à Zürich 🙂 today", "ok"]
    batch = pa.table({"id": list(range(6)), "body": pa.array(texts, pa.large_string())})
    spec = spec_for(tiny_model, multi_label=multi_label)
    encoded = encode(batch, spec=spec, done_ids=np.array([5]))
    assert encoded.num_rows == 5  # id 5 is already done

    # What the Score actor does, minus Ray: one flat id buffer and pair lengths per block.
    ids = np.concatenate([np.asarray(r, np.int32) for r in encoded[IDS].to_pylist()])
    lens = [np.asarray(r, np.int64) for r in encoded[LENS].to_pylist()]
    assert [len(x) for x in lens] == [3, 0, 0, 0, 3]  # one pair per label; none on errors
    scorer = Scorer.from_pretrained(tiny_model, device="cpu", dtype="float32")
    logits, _ = scorer.score(Pairs.from_lengths(ids, np.concatenate(lens)))
    bounds = np.cumsum([0] + [len(x) for x in lens])
    rows = [logits[a:b].reshape(-1).tolist() for a, b in zip(bounds[:-1], bounds[1:])]
    scored = encoded.drop_columns([IDS, LENS]).append_column(
        LOGITS, pa.array(rows, pa.list_(pa.float32()))
    )
    out = assemble(scored, spec=spec, nli=NliLabels.from_config(load_config(tiny_model)))
    assert out.column_names == list(spec.output_columns)
    got = out.to_pylist()
    assert [r["error"] for r in got[1:4]] == [
        "no_text: body is null.",
        "no_text: body is empty: give some text to classify.",
        "text_too_long: body has 201 characters; the limit is 200.",
    ]
    for row in got[1:4]:
        assert row["labels"] is None and row["scores"] is None and row["top_score"] is None
    for row in (got[0], got[4]):
        expected = reference_pipeline(row["body"], candidate_labels=LABELS, multi_label=multi_label)
        assert_same_result({"sequence": row["body"], **row}, expected)
        assert row["top_label"] == row["labels"][0] and row["top_score"] == row["scores"][0]


@pytest.fixture
def small_input(tmp_path):
    write(tmp_path / "in" / "a.parquet", pa.table({"text": ["hi there"], "id": [1]}))
    return tmp_path


def config(tmp_path, model, **kw) -> JobConfig:
    args = dict(input=str(tmp_path / "in"), output=str(tmp_path / "out"), labels="a, b")
    args.update(model=model, dtype="float32")
    args.update(kw)
    return JobConfig(**args)


def test_config_splits_labels_and_columns(tmp_path):
    cfg = JobConfig(input="i", output="o", labels=" a, b ,,c", keep_columns="x, y")
    assert cfg.labels == ["a", "b", "c"]
    assert cfg.keep_columns == ["x", "y"]


@pytest.mark.parametrize(
    "kw, error_type, message",
    [
        ({"text_column": "body"}, ErrorType.VALIDATION, "text column 'body' is not in the input"),
        ({"id_column": "key"}, ErrorType.VALIDATION, "id column 'key'"),
        ({"keep_columns": "nope"}, ErrorType.VALIDATION, "--keep-columns"),
        ({"labels": " , "}, ErrorType.NO_LABELS, "label"),
        ({"hypothesis_template": "no slot"}, ErrorType.INVALID_TEMPLATE, "{}"),
        ({"output": "IN"}, ErrorType.VALIDATION, "inside the input"),
    ],
)
def test_prepare_rejects_bad_jobs_before_ray(small_input, tiny_model, kw, error_type, message):
    if kw.get("output") == "IN":
        kw["output"] = str(small_input / "in" / "scored")
    with pytest.raises(ZeroShotError, match=message) as info:
        prepare(config(small_input, tiny_model, **kw))
    assert info.value.type == error_type


def test_prepare_refuses_an_output_of_foreign_files(small_input, tiny_model):
    write(small_input / "out" / "other.parquet", pa.table({"x": [1]}))
    with pytest.raises(JobInputError, match="--overwrite"):
        prepare(config(small_input, tiny_model))
    prepare(config(small_input, tiny_model, overwrite=True))


def test_inspect_output_sets_aside_cut_off_files(tmp_path):
    good = write(tmp_path / "out" / "a.parquet", pa.table({"error": [None, "x"]}))
    data = Path(good).read_bytes()
    (tmp_path / "out" / "b.parquet").write_bytes(data[: len(data) // 2])
    state = inspect_output(str(tmp_path / "out"))
    assert state.num_rows == 2
    assert [p.rsplit("/", 1)[1] for p in state.broken] == ["b.parquet"]


@pytest.mark.parametrize("entry", [["-m", "pipelines"], ["-m", "zeroshot", "score"]])
def test_cli_missing_text_column_is_exit_2_without_ray(small_input, tiny_model, entry):
    out = subprocess.run(
        [
            sys.executable,
            *entry,
            str(small_input / "in"),
            str(small_input / "out"),
            "--labels",
            "a,b",
            "--text-column",
            "body",
            "--model",
            tiny_model,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert "text column 'body' is not in the input" in out.stderr
    assert "Traceback" not in out.stderr
    assert "Ray" not in out.stderr  # no cluster was started
    assert not (small_input / "out").exists()


def test_cli_module_does_not_import_ray():
    code = "import sys, pipelines.cli, pipelines; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
