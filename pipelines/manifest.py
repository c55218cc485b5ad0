"""What an output's answers depend on, recorded with the output, so a re-run can tell whether
it may resume there.

The parameters (`JobParams`) are written twice, for two different failures:
- `_zeroshot_job.json` in the output directory, before any row is scored: the first write of a
  run, so it also proves the output writable before Ray starts, and a human can `cat` it.
  (Names starting with `_` are skipped by pyarrow, Spark and Ray Data readers.)
- the key-value metadata of every Parquet file's footer (`zeroshot.job`): written atomically
  with the rows themselves, so a file describes its own answers wherever it is copied, and a
  run killed at any point leaves no scored row without its parameters (a file cut off
  mid-write has no footer and is not counted as done).

A re-run compares its parameters with the manifest and with every file's footer; any
difference refuses the run (exit 2) before anything is written, unless --overwrite.

Which parameters count, and why (everything else only changes speed or placement):
- model, revision, model_fingerprint: the weights and tokenizer. A local directory can be
  rebuilt in place, and a hub branch can move, so a fingerprint of the directory's files (or
  the hub commit the config resolved to) is recorded with the name.
- backend: `null` answers are placeholders; they must never mix with a model's.
- dtype (as asked; 'auto' resolves per device): bfloat16 and float32 scores differ in the
  third decimal and can swap close labels.
- labels (in order: ties keep label order), hypothesis_template, multi_label: the question.
- text_column, max_chars: which text each row is, and which rows are errors instead.
- input, id_column: what the resume's anti-join matches on; a different input or id column
  would add rows instead of finishing the old ones.
- columns: the output's columns (--keep-columns, --record-scorer); files with different
  columns do not make one table.
Not counted: device, batching and batch sizes, actors and threads, rows per file, address,
null_pairs_per_s (float32 on CPU and GPU agree to rounding; padding is masked).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath

import pyarrow as pa
import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict

from pipelines.errors import JobInputError, OutputError

MANIFEST_NAME = "_zeroshot_job.json"
METADATA_KEY = b"zeroshot.job"
FORMAT = 1

# A fingerprint reads small files whole and samples big ones: cheap at start-up (a 1.6 GB
# checkpoint costs ~20 reads of 64 KiB), and a retrained or different checkpoint differs in
# every sampled chunk (and usually in the safetensors header at the start).
_WHOLE_FILE_BYTES = 8 << 20
_SAMPLES = 16
_SAMPLE_BYTES = 64 << 10


class JobParams(BaseModel):
    """The parameters an output's answers depend on (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    format: int = FORMAT
    model: str
    revision: str | None
    model_fingerprint: str | None
    backend: str
    dtype: str | None
    labels: list[str]
    hypothesis_template: str
    multi_label: bool
    text_column: str
    max_chars: int
    input: str
    id_column: str
    columns: list[str]

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def parse(cls, raw: bytes | str | None) -> JobParams | None:
        """The parameters in `raw`, or None when absent or unreadable (a foreign file)."""
        if raw is None:
            return None
        try:
            return cls.model_validate_json(raw)
        except ValueError:
            return None

    def differences(self, other: JobParams) -> list[str]:
        """'name: there X, now Y' for each parameter that differs (`self` is what is there)."""
        mine, theirs = self.model_dump(), other.model_dump()
        return [
            f"{name} {mine[name]!r} there, {theirs[name]!r} now"
            for name in mine
            if mine[name] != theirs[name]
        ]


def model_fingerprint(model: str, config) -> str | None:
    """A local model directory's files (names, sizes, sampled bytes), or the hub commit the
    config was resolved at; None when neither is known."""
    if os.path.isdir(model):
        digest = hashlib.blake2b(digest_size=16)
        for root, dirs, files in os.walk(model):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(f for f in files if not f.startswith(".")):
                path = os.path.join(root, name)
                size = os.path.getsize(path)
                digest.update(f"{os.path.relpath(path, model)}\0{size}\0".encode())
                with open(path, "rb") as fh:
                    if size <= _WHOLE_FILE_BYTES:
                        digest.update(fh.read())
                        continue
                    for k in range(_SAMPLES + 1):
                        fh.seek(min(size - _SAMPLE_BYTES, k * (size // _SAMPLES)))
                        digest.update(fh.read(_SAMPLE_BYTES))
        return "files:" + digest.hexdigest()
    commit = getattr(config, "_commit_hash", None)
    return f"commit:{commit}" if commit else None


def manifest_path(directory: str) -> str:
    return posixpath.join(directory.rstrip("/"), MANIFEST_NAME)


def read_manifest(filesystem: pafs.FileSystem, directory: str) -> tuple[bool, JobParams | None]:
    """(whether a manifest exists, its parameters or None when it does not parse)."""
    path = manifest_path(directory)
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        return False, None
    with filesystem.open_input_stream(path) as fh:
        return True, JobParams.parse(fh.read())


def write_manifest(filesystem: pafs.FileSystem, directory: str, params: JobParams, uri) -> None:
    """Write the manifest (creating the directory): the run's first write, which also proves
    the output writable. Written aside and moved into place, so it is whole or absent."""
    path = manifest_path(directory)
    tmp = path + ".tmp"
    body = json.dumps(json.loads(params.to_json()), indent=2).encode() + b"\n"
    try:
        filesystem.create_dir(directory, recursive=True)
        with filesystem.open_output_stream(tmp) as fh:
            fh.write(body)
        filesystem.move(tmp, path)
    except (OSError, pa.ArrowException) as exc:
        raise OutputError(
            f"cannot write to the output {uri(directory)!r}: {first_line(exc)}. Check that it "
            "is writable and has free space, or write elsewhere."
        ) from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def check_resume(
    params: JobParams,
    manifest: tuple[bool, JobParams | None],
    file_params: list[tuple[str, JobParams | None]],
    uri: str,
) -> None:
    """Refuse (`JobInputError`, exit 2) when what the output holds was scored with other
    parameters. An output without data files may be reused whatever its manifest says:
    nothing scored there can mix with this run."""
    if not file_params:
        return
    advice = (
        "Re-run with the same parameters to finish that job, pass --overwrite to replace "
        "its results, or write elsewhere."
    )
    foreign = [path for path, p in file_params if p is None]
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise JobInputError(
            f"the output {uri!r} already holds Parquet files that are not this job's results "
            f"(no recorded parameters), e.g. {foreign[0]!r}{more}. {advice}"
        )
    there = [p for _, p in file_params]
    exists, recorded = manifest
    if exists and recorded is not None:
        there.append(recorded)
    for other in dict.fromkeys(p.to_json() for p in there):
        diffs = JobParams.model_validate_json(other).differences(params)
        if diffs:
            raise JobInputError(
                f"the output {uri!r} holds results scored with other parameters: "
                f"{'; '.join(diffs)}. Its answers and this run's would mix. {advice}"
            )
