"""What the output records about the job, and the re-run checks built on it, without Ray: a
re-run with other parameters is refused before anything is touched; the same parameters
resume; --overwrite replaces. Also the reader's ids and its error for a damaged page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import JobConfig
from pipelines.errors import InputDataError, JobInputError, OutputError
from pipelines.files import resolve_input
from pipelines.job import prepare, prepare_output
from pipelines.manifest import MANIFEST_NAME, JobParams, model_fingerprint, read_manifest
from pipelines.stages import METADATA_KEY


@pytest.fixture
def job_dirs(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    texts = ["The match ended late", "Parliament voted", "Stocks fell"]
    pq.write_table(pa.table({"id": [1, 2, 3], "text": texts, "body": texts}), src / "a.parquet")
    return tmp_path


def cfg(tmp, model, **kw) -> JobConfig:
    args = dict(input=str(tmp / "in"), output=str(tmp / "out"), labels="sports,politics")
    args.update(model=model, id_column="id", dtype="float32")
    args.update(kw)
    return JobConfig(**args)


def scored_file(tmp, model, name="part-x.parquet", **kw) -> Path:
    """An output file as a run of `cfg(**kw)` writes it: its parameters in the footer."""
    plan = prepare(cfg(tmp, model, **kw))
    prepare_output(cfg(tmp, model, **kw), plan)
    table = pa.table({"id": [1], "labels": [["sports", "politics"]], "error": [None]})
    path = tmp / "out" / name
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: plan.spec.params_json}), path)
    return path


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_manifest_and_footer_record_the_parameters(job_dirs, tiny_model):
    path = scored_file(job_dirs, tiny_model, multi_label=True)
    recorded = JobParams.model_validate_json(pq.read_metadata(path).metadata[METADATA_KEY])
    assert recorded.labels == ["sports", "politics"] and recorded.multi_label
    assert recorded.model == tiny_model and recorded.model_fingerprint.startswith("files:")
    assert recorded.input == str(job_dirs / "in") and recorded.id_column == "id"
    out = resolve_input(str(job_dirs / "in")).location
    exists, manifest = read_manifest(out.filesystem, str(job_dirs / "out"))
    assert exists and manifest == recorded
    # The manifest is not a data file: readers of the output skip it.
    assert (job_dirs / "out" / MANIFEST_NAME).exists()
    assert pq.read_table(job_dirs / "out").num_rows == 1


@pytest.mark.parametrize(
    "change, named",
    [
        ({"labels": "finance,weather"}, "labels"),
        ({"labels": "politics,sports"}, "labels"),  # order decides ties
        ({"hypothesis_template": "It is about {}."}, "hypothesis_template"),
        ({"multi_label": True}, "multi_label"),
        ({"text_column": "body"}, "text_column"),
        ({"backend": "null"}, "backend"),
        ({"dtype": "bfloat16"}, "dtype"),
        ({"limits": {"max_chars": 10}}, "max_chars"),
        ({"keep_columns": "id,text"}, "columns"),
    ],
)
def test_rerun_with_other_parameters_is_refused_and_touches_nothing(
    job_dirs, tiny_model, change, named
):
    scored_file(job_dirs, tiny_model)
    before = snapshot(job_dirs / "out")
    with pytest.raises(JobInputError, match=f"other parameters: {named} ") as info:
        prepare(cfg(job_dirs, tiny_model, **change))
    assert "--overwrite" in info.value.message
    assert snapshot(job_dirs / "out") == before
    prepare(cfg(job_dirs, tiny_model))  # the same parameters resume
    prepare(cfg(job_dirs, tiny_model, overwrite=True, **change))


def test_another_model_at_the_same_path_is_refused(job_dirs, tiny_model, tmp_path):
    import shutil

    from zeroshot.fixtures import make_test_model

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    scored_file(job_dirs, str(model))
    first = model_fingerprint(str(model), None)
    shutil.rmtree(model)
    make_test_model(model, "tiny", seed=1)  # retrained in place: same shape, other weights
    assert model_fingerprint(str(model), None) != first
    with pytest.raises(JobInputError, match="model_fingerprint"):
        prepare(cfg(job_dirs, str(model)))


def test_not_needed_parameters_do_not_refuse(job_dirs, tiny_model):
    scored_file(job_dirs, tiny_model)
    prepare(cfg(job_dirs, tiny_model, batch_size=7, num_actors=3, rows_per_file=5, device="cpu"))


def test_files_without_parameters_are_foreign(job_dirs, tiny_model):
    (job_dirs / "out").mkdir()
    pq.write_table(pa.table({"id": [1], "error": [None]}), job_dirs / "out" / "old.parquet")
    with pytest.raises(JobInputError, match="not this job's results"):
        prepare(cfg(job_dirs, tiny_model))


def test_manifest_alone_does_not_block_other_parameters(job_dirs, tiny_model):
    """A run that stopped before writing a row left only its manifest: nothing to mix."""
    plan = prepare(cfg(job_dirs, tiny_model))
    prepare_output(cfg(job_dirs, tiny_model), plan)
    other = prepare(cfg(job_dirs, tiny_model, labels="a,b"))
    prepare_output(cfg(job_dirs, tiny_model, labels="a,b"), other)
    exists, manifest = read_manifest(other.output.location.filesystem, str(job_dirs / "out"))
    assert manifest.labels == ["a", "b"]


def test_non_string_text_column_is_refused_before_ray(job_dirs, tiny_model):
    pq.write_table(pa.table({"id": [1, 2], "text": [5, 6]}), job_dirs / "in" / "a.parquet")
    with pytest.raises(JobInputError, match="has type int64, not strings"):
        prepare(cfg(job_dirs, tiny_model))


def test_output_under_a_file_is_unwritable(job_dirs, tiny_model):
    (job_dirs / "file").write_text("x")
    config = cfg(job_dirs, tiny_model, output=str(job_dirs / "file" / "out"))
    with pytest.raises(OutputError, match="cannot write to the output") as info:
        prepare_output(config, prepare(config))
    assert str(job_dirs / "file" / "out") in info.value.message


def test_row_ids_are_deterministic_and_distinct():
    from pipelines.source import row_ids

    a = row_ids("x/part-0.parquet", 0, 100_000)
    assert np.array_equal(a, row_ids("x/part-0.parquet", 0, 100_000))
    assert np.array_equal(a[500:600], row_ids("x/part-0.parquet", 500, 100))
    b = row_ids("x/part-1.parquet", 0, 100_000)
    assert len(np.unique(np.concatenate([a, b]))) == 200_000


def damage_a_page(path: Path) -> None:
    """Overwrite bytes inside the first column chunk's data, leaving the footer valid."""
    meta = pq.read_metadata(path)
    chunk = meta.row_group(0).column(0)
    start = (chunk.dictionary_page_offset or chunk.data_page_offset) + 40
    data = bytearray(path.read_bytes())
    data[start : start + 200] = b"\xff" * 200  # inside the first (snappy) page
    path.write_bytes(bytes(data))
    pq.read_metadata(path)  # the footer still reads


def test_reader_names_the_file_with_a_damaged_page(tmp_path):
    from pipelines.source import ParquetSource

    texts = [f"text number {i} " * 20 for i in range(2000)]
    path = tmp_path / "in" / "bad.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"text": texts}), path, compression="snappy")
    damage_a_page(path)
    inputs = resolve_input(str(tmp_path / "in"))
    (task,) = ParquetSource(inputs, ["text", "row_hash"], 512, "row_hash").get_read_tasks(1)
    with pytest.raises(InputDataError, match="bad.parquet' cannot be read"):
        for _ in task():
            pass


def test_reader_blocks_ids_and_partitions(tmp_path):
    from pipelines.source import ParquetSource

    d = tmp_path / "in" / "lang=fr"
    d.mkdir(parents=True)
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(1000)]}), d / "a.parquet",
                   row_group_size=300)  # fmt: skip
    inputs = resolve_input(str(tmp_path / "in"))
    source = ParquetSource(inputs, ["text", "lang", "row_hash"], 256, "row_hash")
    blocks = [b for task in source.get_read_tasks(4) for b in task()]
    assert [b.num_rows for b in blocks] == [256, 256, 256, 232]
    table = pa.concat_tables(blocks)
    assert table.column_names == ["text", "lang", "row_hash"]
    assert table.column("text").to_pylist() == [f"t{i}" for i in range(1000)]
    assert set(table.column("lang").to_pylist()) == {"fr"}
    assert len(set(table.column("row_hash").to_pylist())) == 1000


class _Terminal:
    """A stream that says it is a terminal (what the progress line is drawn on)."""

    def __init__(self, tty: bool):
        self.text, self.tty = "", tty

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return self.tty


def test_progress_line_on_a_terminal_and_silence_elsewhere():
    from pipelines.progress import Progress

    tty = _Terminal(True)
    bar = Progress.for_terminal(1000, show=True, every_s=None, stream=tty)
    bar.update(250)
    bar.update(750)
    bar.close()
    last = tty.text.rsplit("\r", 1)[-1]
    assert last.startswith("scored 1,000 / 1,000 rows (100%)") and "rows/s" in last
    assert "ETA" in tty.text and tty.text.endswith("\n")

    pipe = _Terminal(False)
    quiet = Progress.for_terminal(1000, show=True, every_s=None, stream=pipe)
    quiet.update(1000)
    quiet.close()
    assert pipe.text == ""  # not a terminal, not asked: nothing

    asked = Progress.for_terminal(1000, show=True, every_s=0.0001, stream=pipe)
    asked.update(10)
    assert pipe.text.startswith("scored 10 / 1,000 rows (1%)") and "\r" not in pipe.text


def test_file_names_follow_the_rows():
    from pipelines.sink import file_name

    a = pa.table({"id": [1, 2, 3], "text": ["a", "b", "c"]})
    assert file_name(a, "id") == file_name(pa.table({"id": [1, 2, 3], "text": ["x"] * 3}), "id")
    assert file_name(a, "id") != file_name(a.slice(0, 2), "id")
    nulls = pa.table({"id": pa.array([None, None], pa.int64()), "text": ["a", "b"]})
    other = pa.table({"id": pa.array([None, None], pa.int64()), "text": ["c", "d"]})
    assert file_name(nulls, "id") != file_name(other, "id")  # never overwrite each other
