"""The job's reader: the input's Parquet row groups as Ray Data blocks of `block_rows` rows.

The driver has already read every footer (`pipelines.files.resolve_input`), so it plans the
read tasks itself (a file's row groups, split into tasks of about `TASK_ROWS` rows) instead of
Ray Data listing the files in a task and re-cutting its blocks in a repartition stage. A read
task emits blocks of the job's size as it reads, conformed to the input's unified schema, with
the hive partition values of its path and, without an id column, a deterministic row id.
A page that does not decode fails its task with an `InputDataError` naming the file and row
group.
"""

from __future__ import annotations

import hashlib
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipelines.errors import InputDataError
from pipelines.files import InputFiles, Location, hive_values

# Rows per read task: enough that a task's start-up cost is small against its reading, few
# enough that the first blocks reach the encoder early and many tasks share a big file.
TASK_ROWS = 65_536

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def row_ids(path_key: str, start: int, count: int) -> np.ndarray:
    """Deterministic uint64 ids of rows `start ..` of a file: splitmix64 of a 64-bit digest
    of the file's path (relative to the input) plus the row's position. The same file read
    again gives the same ids; different rows get different ids (a collision needs ~2^32
    rows)."""
    seed = np.uint64(int.from_bytes(hashlib.blake2b(path_key.encode(), digest_size=8).digest()))
    with np.errstate(over="ignore"):
        z = seed + np.arange(start, start + count, dtype=np.uint64)
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def _conform(
    table: pa.Table, schema: pa.Schema, constants: dict[str, str], id_column: str | None
) -> pa.Table:
    """`table` with exactly `schema`'s columns: missing ones null, types cast, partition
    values filled in (the id column is added by the caller)."""
    n = table.num_rows
    columns = []
    for f in schema:
        if f.name == id_column:
            continue
        if f.name in constants:
            columns.append(pa.array([constants[f.name]] * n, f.type))
        elif f.name in table.column_names:
            col = table.column(f.name)
            columns.append(col if col.type == f.type else col.cast(f.type))
        else:
            columns.append(pa.nulls(n, f.type))
    names = [f.name for f in schema if f.name != id_column]
    return pa.table(columns, names=names)


def _read(
    location: Location,
    path: str,
    path_key: str,
    groups: list[int],
    first_row: int,
    schema: pa.Schema,
    constants: dict[str, str],
    id_column: str | None,
    block_rows: int,
):
    uri = location.uri(path)
    file_columns = [f.name for f in schema if f.name != id_column and f.name not in constants]
    row = first_row
    group = groups[0]
    try:
        with location.filesystem.open_input_file(path) as fh:
            pf = pq.ParquetFile(fh)
            present = [c for c in file_columns if c in pf.schema_arrow.names]
            pending: list[pa.RecordBatch] = []
            pending_rows = 0
            for group in groups:
                for batch in pf.iter_batches(
                    batch_size=block_rows, row_groups=[group], columns=present
                ):
                    pending.append(batch)
                    pending_rows += batch.num_rows
                    while pending_rows >= block_rows:
                        table = pa.Table.from_batches(pending)
                        head, rest = table.slice(0, block_rows), table.slice(block_rows)
                        yield _finish(head, schema, constants, id_column, path_key, row)
                        row += block_rows
                        pending, pending_rows = rest.to_batches(), rest.num_rows
            if pending_rows:
                yield _finish(
                    pa.Table.from_batches(pending), schema, constants, id_column, path_key, row
                )
    except (OSError, pa.ArrowException) as exc:
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
        raise InputDataError(
            f"input file {uri!r} cannot be read (row group {group}): {reason}. Its footer "
            "is valid, so a data page is damaged; replace the file or move it out of the "
            "input, then re-run to resume."
        ) from None


def _finish(table, schema, constants, id_column, path_key, first_row) -> pa.Table:
    out = _conform(table, schema, constants, id_column)
    if id_column is not None:
        ids = pa.array(row_ids(path_key, first_row, out.num_rows), pa.uint64())
        out = out.append_column(pa.field(id_column, pa.uint64()), ids)
        out = out.select([f.name for f in schema])
    return out


class ParquetSource(Datasource):
    """Read tasks over the input's row groups (see the module docstring)."""

    def __init__(
        self,
        inputs: InputFiles,
        columns: list[str],
        block_rows: int,
        row_id_column: str | None = None,
    ):
        super().__init__()
        fields = []
        for name in columns:
            if name == row_id_column:
                fields.append(pa.field(name, pa.uint64()))
            elif name in inputs.schema.names:
                fields.append(inputs.schema.field(name))
            else:  # a hive partition key
                fields.append(pa.field(name, pa.string()))
        self.schema = pa.schema(fields)
        self.inputs = inputs
        self.block_rows = block_rows
        self.row_id_column = row_id_column

    def get_name(self) -> str:
        return "ReadParquet"

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(b for groups in self.inputs.row_groups for _, b in groups)

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        inputs = self.inputs
        tasks = []
        for path, groups in zip(inputs.files, inputs.row_groups):
            hive = hive_values(path, inputs.base_dir)
            constants = {k: v for k, v in hive.items() if k in self.schema.names}
            path_key = posixpath.relpath(path, inputs.base_dir) if inputs.base_dir else path
            start, chunk, rows, size = 0, [], 0, 0
            for i, (n, b) in enumerate(groups):
                if n == 0:
                    continue
                chunk.append(i)
                rows += n
                size += b
                if rows >= TASK_ROWS or i == len(groups) - 1:
                    tasks.append(self._task(path, path_key, chunk, start, rows, size, constants))
                    start += rows
                    chunk, rows, size = [], 0, 0
            if chunk:
                tasks.append(self._task(path, path_key, chunk, start, rows, size, constants))
        return tasks

    def _task(self, path, path_key, groups, first_row, rows, size, constants) -> ReadTask:
        args = (
            self.inputs.location,
            path,
            path_key,
            list(groups),
            first_row,
            self.schema,
            constants,
            self.row_id_column,
            self.block_rows,
        )
        meta = BlockMetadata(
            num_rows=rows,
            size_bytes=int(size),
            exec_stats=None,
            input_files=[self.inputs.location.uri(path)],
        )
        return ReadTask(lambda args=args: _read(*args), meta, schema=self.schema)
