"""Parquet files on any pyarrow filesystem: resolving the input, reading footers, and taking
stock of an output directory. Driver-side and Ray-free, so every input problem shows before a
cluster is touched.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.errors import JobInputError

PARQUET_SUFFIX = ".parquet"
_GLOB_CHARS = "*?["
# Footers are small; remote stores answer slowly, so many at once.
_FOOTER_THREADS = 32


@dataclass
class Location:
    """A user path split into a pyarrow filesystem and the path on it."""

    filesystem: pafs.FileSystem
    path: str
    scheme: str = ""  # "" for local paths, else e.g. "s3"

    def uri(self, path: str) -> str:
        """`path` on this filesystem in the form Ray Data resolves the same way."""
        return f"{self.scheme}://{path}" if self.scheme else path


def locate(uri: str) -> Location:
    if "://" not in uri:
        import os

        return Location(pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri)))
    scheme = uri.split("://", 1)[0]
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise JobInputError(f"cannot open {uri!r}: {exc}") from None
    if isinstance(filesystem, pafs.LocalFileSystem):
        return Location(filesystem, path)
    return Location(filesystem, path.rstrip("/"), scheme)


def _is_data_file(path: str) -> bool:
    # Spark/Hadoop markers (_SUCCESS, _committed_*) and hidden files (.crc) are not data.
    name = posixpath.basename(path)
    return name.endswith(PARQUET_SUFFIX) and not name.startswith(("_", "."))


def _list_files(loc: Location, directory: str) -> list[str]:
    infos = loc.filesystem.get_file_info(pafs.FileSelector(directory, recursive=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def _glob_match(path: str, pattern: str) -> bool:
    """Segment-wise glob: '*' stays inside one directory level, '**' spans any number."""
    parts, pats = path.split("/"), pattern.split("/")

    def match(i: int, j: int) -> bool:
        if j == len(pats):
            return i == len(parts)
        if pats[j] == "**":
            return any(match(k, j + 1) for k in range(i, len(parts) + 1))
        return i < len(parts) and fnmatch.fnmatchcase(parts[i], pats[j]) and match(i + 1, j + 1)

    return match(0, 0)


@dataclass
class InputFiles:
    """The Parquet files a job reads, what is in them, and where partitions start."""

    location: Location
    base_dir: str
    files: list[str]
    schema: pa.Schema
    partition_columns: list[str] = field(default_factory=list)
    num_rows: int = 0
    pattern: str | None = None  # the glob, when the input was one
    single: bool = False  # the input named one file
    uri: str = ""  # the input as given, made absolute (what the output's parameters record)
    # (rows, uncompressed bytes) of each row group of each file, from the footers.
    row_groups: list[list[tuple[int, int]]] = field(default_factory=list)

    def would_read(self, directory: str) -> bool:
        """Whether a Parquet file written under `directory` would be part of this input on a
        re-run (a directory input is read recursively; a glob matches what it matches)."""
        probe = directory.rstrip("/") + "/part-0.parquet"
        if self.single:
            return False
        if self.pattern is not None:
            return _glob_match(probe, self.pattern)
        return probe.startswith(self.base_dir.rstrip("/") + "/")

    @property
    def uris(self) -> list[str]:
        return [self.location.uri(f) for f in self.files]

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names) + [
            c for c in self.partition_columns if c not in self.schema.names
        ]


def hive_values(path: str, base_dir: str) -> dict[str, str]:
    """The `key=value` directories between `base_dir` and the file, in order."""
    rel = path[len(base_dir) :].strip("/") if path.startswith(base_dir) else ""
    return dict(seg.split("=", 1) for seg in rel.split("/")[:-1] if "=" in seg)


def _hive_keys(path: str, base_dir: str) -> list[str]:
    return list(hive_values(path, base_dir))


def read_footers(loc: Location, files: list[str]) -> list[pq.FileMetaData | BaseException]:
    def one(path: str) -> pq.FileMetaData | BaseException:
        try:
            return pq.read_metadata(path, filesystem=loc.filesystem)
        except (pa.ArrowException, OSError) as exc:
            return exc

    if len(files) <= 1:
        return [one(f) for f in files]
    with ThreadPoolExecutor(min(_FOOTER_THREADS, len(files))) as pool:
        return list(pool.map(one, files))


def unify(schemas: list[pa.Schema]) -> pa.Schema:
    """One read schema for files written by different tools.

    A column missing from some files is null there. Text stored as string, large_string,
    string_view or dictionary<string> in different files (pyarrow, pandas and Spark pick
    differently) reads as large_string; other differences follow pyarrow's permissive
    promotion (int32 + int64 -> int64), and what cannot be promoted is an input error. Ray Data
    is given this schema, so it never has to reconcile the files itself.
    """
    by_name: dict[str, list[pa.Field]] = {}
    for schema in schemas:
        for f in schema:
            by_name.setdefault(f.name, []).append(f)
    fields = []
    for name, found in by_name.items():
        types = {f.type for f in found}
        if len(types) == 1:
            fields.append(pa.field(name, found[0].type))
        elif all(is_string_type(t) for t in types):
            fields.append(pa.field(name, pa.large_string()))
        else:
            try:
                merged = pa.unify_schemas(
                    [pa.schema([f]) for f in found], promote_options="permissive"
                )
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                shown = ", ".join(sorted(str(t) for t in types))
                raise JobInputError(
                    f"column {name!r} has types that do not mix across the input files: {shown}."
                ) from None
            fields.append(pa.field(name, merged.field(name).type))
    return pa.schema(fields)


def resolve_input(uri: str) -> InputFiles:
    """List the Parquet files of a file, directory or glob and read their footers.

    Raises `JobInputError` when nothing is there, nothing is Parquet, or a file is not
    readable Parquet, naming the path.
    """
    loc = locate(uri)
    pattern = loc.path
    is_glob = any(c in pattern for c in _GLOB_CHARS)
    if is_glob:
        segments = pattern.split("/")
        first = next(i for i, s in enumerate(segments) if any(c in s for c in _GLOB_CHARS))
        base_dir = "/".join(segments[:first]) or "/"
        info = loc.filesystem.get_file_info(base_dir)
        candidates = _list_files(loc, base_dir) if info.type == pafs.FileType.Directory else []
        files = [f for f in candidates if _glob_match(f, pattern) and _is_data_file(f)]
        if not files:
            raise JobInputError(f"no Parquet files match {uri!r}.")
    else:
        info = loc.filesystem.get_file_info(pattern)
        if info.type == pafs.FileType.NotFound:
            raise JobInputError(f"input {uri!r} does not exist.")
        if info.type == pafs.FileType.Directory:
            base_dir = pattern
            listed = _list_files(loc, pattern)
            files = [f for f in listed if _is_data_file(f)]
            if not files:
                found = f" (it holds {len(listed)} other files)" if listed else " (it is empty)"
                raise JobInputError(
                    f"no Parquet files (*{PARQUET_SUFFIX}) in directory {uri!r}{found}."
                )
        else:
            base_dir = posixpath.dirname(pattern)
            files = [pattern]

    footers = read_footers(loc, files)
    bad = [(f, m) for f, m in zip(files, footers) if isinstance(m, BaseException)]
    if bad:
        path, exc = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise JobInputError(
            f"{loc.uri(path)!r}{more} is not a readable Parquet file: "
            f"{str(exc).splitlines()[0][:200]}"
        )
    schema = unify([m.schema.to_arrow_schema() for m in footers])
    partitions: list[str] = []
    for f in files:
        for key in _hive_keys(f, base_dir):
            if key not in partitions:
                partitions.append(key)
    return InputFiles(
        location=loc,
        base_dir=base_dir,
        files=files,
        schema=schema,
        partition_columns=partitions,
        num_rows=sum(m.num_rows for m in footers),
        pattern=pattern if is_glob else None,
        single=not is_glob and files == [pattern],
        uri=loc.uri(loc.path),
        row_groups=[
            [
                (m.row_group(i).num_rows, m.row_group(i).total_byte_size)
                for i in range(m.num_row_groups)
            ]
            for m in footers
        ],
    )


def is_string_type(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


@dataclass
class OutputState:
    """What an output directory already holds."""

    location: Location
    files: list[str]
    num_rows: int
    broken: list[str]
    # Each readable file's footer key-value metadata under `key` (None where absent).
    recorded: list[bytes | None] = field(default_factory=list)


def inspect_output(uri: str, key: bytes | None = None) -> OutputState:
    """The readable Parquet files under `uri`, their rows, and the unreadable ones (a write
    cut off by an interruption leaves a file without a footer); with `key`, each readable
    file's footer metadata under it."""
    loc = locate(uri)
    info = loc.filesystem.get_file_info(loc.path)
    if info.type == pafs.FileType.NotFound:
        return OutputState(loc, [], 0, [])
    if info.type != pafs.FileType.Directory:
        raise JobInputError(f"output {uri!r} exists and is not a directory.")
    files = [f for f in _list_files(loc, loc.path) if _is_data_file(f)]
    footers = read_footers(loc, files)
    good = [(f, m) for f, m in zip(files, footers) if not isinstance(m, BaseException)]
    broken = [f for f, m in zip(files, footers) if isinstance(m, BaseException)]
    recorded = [(m.metadata or {}).get(key) if key else None for _, m in good]
    return OutputState(
        loc, [f for f, _ in good], sum(m.num_rows for _, m in good), broken, recorded
    )


def count_nonnull(loc: Location, files: list[str], column: str) -> int:
    """Non-null values of a flat `column` over `files`, from footer statistics where they
    exist; row groups without them are read (that one column only)."""
    total = 0
    for path, meta in zip(files, read_footers(loc, files)):
        if isinstance(meta, BaseException):
            raise meta
        leaf = next(
            (i for i in range(meta.num_columns) if meta.schema.column(i).path == column), None
        )
        if leaf is None:
            continue
        for rg in range(meta.num_row_groups):
            group = meta.row_group(rg)
            stats = group.column(leaf).statistics
            if stats is not None and stats.has_null_count:
                total += group.num_rows - stats.null_count
            else:
                pf = pq.ParquetFile(path, filesystem=loc.filesystem)
                total += len(pf.read_row_group(rg, columns=[column]).column(0).drop_null())
    return total


def read_ids(loc: Location, files: Iterable[str], column: str) -> pa.ChunkedArray:
    """The `column` of every file, one small column read at a time."""
    chunks: list[pa.Array] = []
    for path in files:
        col = pq.read_table(path, columns=[column], filesystem=loc.filesystem).column(0)
        chunks.extend(col.chunks)
    return pa.chunked_array(chunks) if chunks else pa.chunked_array([], pa.null())


def id_keys(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Non-null ids as sortable 64-bit keys: integers as they are, anything else by a 64-bit
    hash (pandas' SipHash with its fixed key: the same value gives the same key in every
    process). The key kind depends only on the type, so a batch and the ids read back from
    the output always agree."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], values.type)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    values = values.drop_null()
    t = values.type
    if pa.types.is_integer(t):
        return values.to_numpy().astype(np.uint64 if pa.types.is_unsigned_integer(t) else np.int64)
    from pandas.util import hash_array

    return hash_array(np.asarray(values.to_pylist(), dtype=object))


def done_mask(values: pa.Array | pa.ChunkedArray, done_sorted: np.ndarray) -> np.ndarray:
    """True where the id is in `done_sorted` (sorted keys from `id_keys`); null ids never are."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], values.type)
    mask = np.zeros(len(values), dtype=bool)
    if not len(done_sorted) or not len(values):
        return mask
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    keys = id_keys(values)
    pos = np.searchsorted(done_sorted, keys)
    pos[pos == len(done_sorted)] = 0
    mask[valid] = done_sorted[pos] == keys
    return mask
