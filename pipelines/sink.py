"""The job's last stage: assemble a bundle of rows and write it as one Parquet file, whole or
not at all, returning one summary row (file, rows, errors) to the driver.

Written by the job rather than by Ray Data's `write_parquet`, because:
- a file appears only complete: locally it is written under a hidden `_tmp-` name and renamed
  (an object store's upload appears only when it completes), so a kill, a full disk or a
  failed task never leaves a half file that a re-run would have to notice;
- its name is a digest of the ids it holds, so a task Ray retries rewrites the same file
  instead of adding a second copy of its rows;
- the driver counts rows as files land (the progress bar, the summary) without reading the
  output back, and a write failure reaches it as one typed error naming the path.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import posixpath
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.errors import OutputError
from pipelines.files import Location, id_keys, locate
from pipelines.stages import StageSpec, assemble
from zeroshot.assemble import NliLabels

TMP_PREFIX = "_tmp-"
SUMMARY_SCHEMA = pa.schema([("file", pa.string()), ("rows", pa.int64()), ("errors", pa.int64())])


@functools.lru_cache(maxsize=4)
def _location(uri: str) -> Location:
    # One filesystem client per worker process (an S3 client is not free to build).
    return locate(uri)


def file_name(table: pa.Table, id_column: str) -> str:
    """`part-<digest of the rows' ids>.parquet`: the same rows always get the same name. Null
    ids (which a resume cannot match) fold the row count and the whole table's buffers in, so
    two bundles of null ids never share a name."""
    ids = table.column(id_column)
    digest = hashlib.blake2b(np.ascontiguousarray(id_keys(ids)).tobytes(), digest_size=10)
    if ids.null_count:
        digest.update(f"{table.num_rows}:{ids.null_count}".encode())
        for column in table.columns:
            for chunk in column.chunks:
                for buf in chunk.buffers():
                    if buf is not None:
                        digest.update(buf)
    return f"part-{digest.hexdigest()}.parquet"


def write_table(table: pa.Table, loc: Location, name: str) -> str:
    """Write `table` as `name` in `loc`'s directory, whole or not at all; the path written."""
    path = posixpath.join(loc.path, name)
    local = isinstance(loc.filesystem, pafs.LocalFileSystem)
    target = posixpath.join(loc.path, f"{TMP_PREFIX}{uuid.uuid4().hex}-{name}") if local else path
    try:
        with loc.filesystem.open_output_stream(target) as sink:
            pq.write_table(table, sink)
        if local:
            os.replace(target, path)  # atomic on one filesystem
    except (OSError, pa.ArrowException) as exc:
        if local:
            with contextlib.suppress(OSError):
                os.unlink(target)
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
        raise OutputError(f"cannot write {loc.uri(path)!r}: {reason}") from None
    return path


def assemble_and_write(
    batch: pa.Table, *, spec: StageSpec, nli: NliLabels, output: str
) -> pa.Table:
    """Assemble `batch` and write it as one file; one summary row (file, rows, errors)."""
    if not batch.num_rows:
        return SUMMARY_SCHEMA.empty_table()
    table = assemble(batch, spec=spec, nli=nli)
    loc = _location(output)
    path = write_table(table, loc, file_name(table, spec.id_column))
    errors = table.num_rows - table.column("error").null_count
    return pa.table(
        {"file": [loc.uri(path)], "rows": [table.num_rows], "errors": [errors]},
        schema=SUMMARY_SCHEMA,
    )


def remove_leftovers(loc: Location) -> int:
    """Delete `_tmp-` files a killed run left behind; how many."""
    info = loc.filesystem.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True))
    stale = [i.path for i in info if posixpath.basename(i.path).startswith(TMP_PREFIX)]
    for path in stale:
        loc.filesystem.delete_file(path)
    return len(stale)
