"""Parquet catalogues: :func:`write_catalog` (a table or a Dataset at once) and
:class:`CatalogStore` (a resumable catalogue written one input file at a time).

A catalogue directory holds good rows in ``catalog/`` and error rows in ``errors/``, without image
columns, with the provenance columns ``source``, ``index`` and ``lensray_version``. A store adds,
per input file ``F`` with key ``K`` (:func:`shard_key`)::

    OUT/catalog/K.parquet    good rows (written even when there are none)
    OUT/errors/K.parquet     rows that could not be read or computed: id, source, index, error,
                             kind (:data:`ERROR_COLUMNS`, written even when there are none)
    OUT/_shards/K.json       written last: F's counts (errors by kind), stamp (size, mtime) and
                             whether it is finished (not with transient errors); the record
    OUT/_shards/_options.json  what the catalogue is computed with, written with the first
                             finished file (a run resuming finished files must match)

``OUT`` is a local directory or a URI (``s3://``, ``gs://``; :class:`pipeline.io.outdir.OutDir`).
Every file appears whole (a local one is renamed into place, an object is put in one upload), so
a killed run leaves no half file, and a reopened store skips the finished input files. A file
is *finished* when its marker says it had no transient error (those may go away:
``pipeline.io.schema.ERROR_KIND``) and holds the stamp the file has now (a file replaced since,
e.g. a corrupt one by a good one, is read again and its old rows replaced).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.io import schema
from pipeline.io.outdir import OutDir
from pipeline.io.writers import _version

CATALOG_DIR = "catalog"
ERRORS_DIR = "errors"
SHARDS_DIR = "_shards"
IMAGE_COLUMNS = (schema.IMAGE, schema.CLEAN, schema.DENOISED, schema.IMAGE_SCALE)  # pixels and what only they need
COUNTS = ("rows", "good", "errors", *schema.ERROR_KINDS, "candidates", "ids_renamed")  # a marker's
OPTIONS_FILE = f"{SHARDS_DIR}/_options.json"
ERROR_COLUMNS = (schema.ID, schema.SOURCE, schema.INDEX, schema.ERROR, schema.KIND)  # errors/


# ----------------------------------------------------------------------------- whole catalogues
def write_catalog(
    data: Any,
    out_dir: str | os.PathLike,
    *,
    drop_columns: Sequence[str] = IMAGE_COLUMNS,
    mode: str = "overwrite",
) -> dict[str, int]:
    """Write a catalogue as Parquet: good rows to ``<out>/catalog/``, error rows to ``<out>/errors/``.

    Image columns are dropped (``drop_columns`` plus any other tensor column of 2 or more
    dimensions); a ``lensray_version`` column is added next to the provenance columns ``source`` and
    ``index`` (added as nulls if the input lacks them). Rows without an ``error`` column are good.
    Error rows keep the columns of :data:`ERROR_COLUMNS` only.

    Args:
        data: a ``ray.data.Dataset`` (executed once), a ``pyarrow.Table``, a pandas DataFrame or a
            dict of 1-D columns.
        out_dir: local directory or URI (``s3://...``); created if needed.
        drop_columns: columns to leave out of the catalogue.
        mode: "overwrite" (default: a rerun replaces the previous catalogue) or "append".

    Returns:
        ``{"rows": n, "good": n_good, "errors": n_errors}`` with rows == good + errors.
    """
    if mode not in ("overwrite", "append"):
        raise ValueError(f"mode must be 'overwrite' or 'append', got {mode!r}")
    out = os.fspath(out_dir).rstrip("/")
    if hasattr(data, "materialize") and hasattr(data, "write_parquet"):
        return _write_catalog_ray(data, out, drop_columns, mode)
    import uuid

    import pyarrow as pa
    import pyarrow.parquet as pq

    good, errors = catalog_parts(_as_arrow(data), drop_columns)
    for sub, part in ((CATALOG_DIR, good), (ERRORS_DIR, error_table(errors))):
        target = f"{out}/{sub}"
        fs, path = pa.fs.FileSystem.from_uri(target if "://" in target else os.path.abspath(target))
        if mode == "overwrite":
            try:
                fs.delete_dir_contents(path, missing_dir_ok=True)
            except OSError:
                pass
        fs.create_dir(path, recursive=True)
        if part.num_rows or sub == ERRORS_DIR:  # errors/: the schema even without rows
            pq.write_table(part, f"{path}/{uuid.uuid4().hex}.parquet", filesystem=fs)
    return {"rows": good.num_rows + errors.num_rows, "good": good.num_rows,
            "errors": errors.num_rows}


def catalog_parts(table, drop_columns: Sequence[str] = IMAGE_COLUMNS):
    """A pyarrow table's catalogue rows, ``(good, errors)``: image columns dropped, provenance
    columns added (:func:`_catalog_table`)."""
    table = _catalog_table(table.drop_columns(_to_drop(table.schema, drop_columns)))
    return _split(table)


def _as_arrow(data: Any):
    import pyarrow as pa

    if isinstance(data, pa.Table):
        return data
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas
        return pa.Table.from_pandas(data, preserve_index=False)
    if isinstance(data, Mapping):
        return pa.table({k: list(v) if np.asarray(v).ndim > 1 else v for k, v in data.items()})
    raise TypeError(f"cannot write a catalogue from {type(data)!r}")


def _to_drop(arrow_schema, drop_columns: Sequence[str]) -> list[str]:
    """Named image columns + any tensor column of >= 2 dimensions (images, maps)."""
    drop = []
    for f in arrow_schema:
        ndim = getattr(f.type, "ndim", None) or len(getattr(f.type, "shape", ()) or ())
        if f.name in drop_columns or ndim >= 2:
            drop.append(f.name)
    return drop


def _catalog_table(table):
    """Add the provenance columns (lensray_version, and source/index/error if missing); all-null
    columns typed as strings (:func:`pipeline.io.schema.string_nulls`)."""
    import pyarrow as pa

    n = table.num_rows
    for name, kind in ((schema.SOURCE, pa.string()), (schema.INDEX, pa.int64()),
                       (schema.ERROR, pa.string()), (schema.ERROR_KIND, pa.string())):
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(n, kind))
    table = schema.string_nulls(table)
    table = _fill_kind(table)
    return table.append_column("lensray_version", pa.array([_version()] * n, pa.string()))


def _fill_kind(table):
    """Error rows without a ``kind`` (a stage's or the tiles' errors) are permanent."""
    import pyarrow as pa
    import pyarrow.compute as pc

    is_error = pc.fill_null(pc.is_valid(table[schema.ERROR]), False)
    unknown = pc.and_(is_error, pc.is_null(table[schema.ERROR_KIND]))
    if not pc.any(unknown).as_py():
        return table
    kind = pc.if_else(unknown, pa.scalar(schema.PERMANENT), table[schema.ERROR_KIND])
    return table.set_column(table.schema.get_field_index(schema.ERROR_KIND), schema.ERROR_KIND,
                            kind)


def _split(table):
    """(good rows, error rows); the error kind is the errors' ``kind`` column (in place of a
    label of that name), not a column of the good rows."""
    import pyarrow.compute as pc

    is_error = pc.fill_null(
        pc.and_(pc.is_valid(table[schema.ERROR]), pc.not_equal(table[schema.ERROR], "")), False
    )
    good = table.filter(pc.invert(is_error)).drop_columns([schema.ERROR_KIND])
    errors = table.filter(is_error)
    if schema.KIND in errors.column_names:
        errors = errors.drop_columns([schema.KIND])
    return good, errors.rename_columns([schema.KIND if c == schema.ERROR_KIND else c
                                        for c in errors.column_names])


def _write_catalog_ray(ds, out: str, drop_columns, mode: str) -> dict[str, int]:
    drop = _to_drop(ds.schema().base_schema, drop_columns)
    if drop:
        ds = ds.drop_columns(drop)
    cat = ds.map_batches(_catalog_table, batch_format="pyarrow").materialize()
    good = cat.map_batches(lambda t: _split(t)[0], batch_format="pyarrow").materialize()
    errors = cat.map_batches(lambda t: error_table(_split(t)[1]),
                             batch_format="pyarrow").materialize()
    counts = {"rows": cat.count(), "good": good.count(), "errors": errors.count()}
    for sub, part in ((CATALOG_DIR, good), (ERRORS_DIR, errors)):
        target = f"{out}/{sub}"
        if "://" not in target:
            target = os.path.abspath(target)
            os.makedirs(target, exist_ok=True)
        part.write_parquet(target, mode=mode)
    return counts


# ----------------------------------------------------------------------------- per-file store
def shard_key(source: str) -> str:
    """File name (without extension) for one input file's output: readable and unique (never
    hidden: readers of a Parquet directory skip names starting with '.' or '_')."""
    from pipeline.io.files import file_stem

    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", file_stem(source))[:80].lstrip("._") or "shard"
    return f"{stem}-{hashlib.sha1(source.encode()).hexdigest()[:10]}"


def check_options(out: str | os.PathLike | OutDir, spec: dict) -> None:
    """Record ``spec`` (what decides the values of a resumable output directory ``out``) in
    ``out/_shards/_options.json`` when it is new; when it is resumed, refuse another: one
    catalogue must not mix two thresholds, checkpoints or precisions without saying so."""
    out = out if isinstance(out, OutDir) else OutDir(out)
    spec = _as_saved(spec)
    old = out.read_text(OPTIONS_FILE)
    if old is None:
        out.write_json(OPTIONS_FILE, spec)
        return
    _refuse_other(out.show(), json.loads(old), spec)


def _as_saved(spec: dict) -> dict:
    """``spec`` as it reads back from disk."""
    return json.loads(json.dumps(spec, default=str))


def _refuse_other(out, old: dict, spec: dict) -> None:
    changed = [f"{k}: {old.get(k)!r} then, {spec.get(k)!r} now"
               for k in sorted(set(old) | set(spec)) if old.get(k) != spec.get(k)]
    if changed:
        raise ValueError(f"{out} was written with other options ({'; '.join(changed)}); "
                         "rerun with the same options to resume it, or write to a new --out")


class CatalogStore:
    """A catalogue in ``out`` (a local directory or a URI, :class:`OutDir`) written one input
    file at a time, in the order the rows arrive.

    The directory is owned: its record (``_shards/``) lists every file set it wrote. Opening it
    creates the directories, refuses Parquet in ``catalog/`` or ``errors/`` that is not on
    record (``force``: adopt it, recorded as a finished file set of no input) and notes which
    of ``sources`` are finished already (``pending`` lists the others). Outputs of inputs no
    longer given are ``stale``: kept and counted, or deleted with ``prune``.

    :meth:`add` takes ordered pyarrow tables of output rows (all rows of a file together, in
    ``sources`` order; any split across tables); a file is committed (catalogue, errors, then
    its marker) as soon as the next one begins, the last by :meth:`close`. Ids stay unique in
    the whole directory: an id already written (or earlier in this run) gets the suffix
    ``~2``, ``~3``, ... (the first that is free; counted as ``ids_renamed``).
    """

    def __init__(self, out: str | os.PathLike | OutDir, sources: Sequence[str], *,
                 force: bool = False, prune: bool = False,
                 stamps: Mapping[str, Sequence] | None = None):
        self.out = out if isinstance(out, OutDir) else OutDir(out)
        self.keys = {s: shard_key(s) for s in sources}
        self.stamps = {s: list(v) for s, v in (stamps or {}).items()}  # source -> [size, mtime]
        self.out.makedirs(CATALOG_DIR, ERRORS_DIR, SHARDS_DIR)
        records = self._records()
        self.adopted = self._foreign(records, force)
        records.update(self.adopted)
        mine = set(self.keys.values())
        stale = {k: m for k, m in records.items() if k not in mine}
        self.pruned = sorted(stale) if prune else []
        for key in self.pruned:
            self._delete(key)
        self.stale = {} if prune else stale  # key -> marker of outputs kept for no input
        self.records = {k: m for k, m in records.items() if k not in self.pruned}  # key -> marker
        self.pending = [s for s in sources if not self.finished(s)]
        self._expected = set(self.pending)
        again = {self.keys[s] for s in self.pending}  # their old rows are replaced
        self.ids = self._ids_on_disk([k for k in self.records if k not in again])
        self.current: str | None = None
        self.parts: list = []
        self.done: dict[str, dict] = {}  # finished by this run: source -> marker
        self.models: dict[str, str] = {}  # provenance column -> first value seen
        self.empty: list[str] = []
        self.rows_seen = self.candidates_seen = 0
        self._options: dict | None = None  # to record with the first finished file

    # ------------------------------------------------------------------ ownership
    def _records(self) -> dict[str, dict]:
        """key -> marker of every file set on record."""
        names = [n for n in self.out.list(SHARDS_DIR) if n.endswith(".json")]
        return {n[: -len(".json")]: json.loads(self.out.read_text(f"{SHARDS_DIR}/{n}"))
                for n in names}

    def _foreign(self, records: dict, force: bool) -> dict[str, dict]:
        """Refuse Parquet in catalog/ or errors/ that is not on record, or with ``force`` adopt
        it: key -> the marker written for it. A pending input's own key is not foreign (its
        files are from an interrupted run, rewritten whole)."""
        known = set(records) | set(self.keys.values())
        found: dict[str, list[str]] = {}
        for sub in (CATALOG_DIR, ERRORS_DIR):
            for name in self.out.list(sub):
                key = name[: -len(".parquet")] if name.endswith(".parquet") else None
                if key is not None and key not in known:
                    found.setdefault(key, []).append(f"{sub}/{name}")
        if not found:
            return {}
        if not force:
            files = sorted(f for fs in found.values() for f in fs)
            shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
            raise ValueError(f"{self.out.show()}: {len(files)} Parquet file(s) this output "
                             f"directory has no record of ({shown}); move them away, write to a "
                             "new --out, or pass --force to adopt them into the catalogue")
        adopted = {}
        for key, files in found.items():
            parts = {sub: self.out.read_parquet(f"{sub}/{key}.parquet")
                     if f"{sub}/{key}.parquet" in files else None for sub in (CATALOG_DIR, ERRORS_DIR)}
            good, bad = (t.num_rows if t is not None else 0 for t in parts.values())
            marker = {"source": None, "adopted": sorted(files), "rows": good + bad, "good": good,
                      "errors": bad, "candidates": _candidates(parts[CATALOG_DIR])
                      if parts[CATALOG_DIR] is not None else 0}
            self.out.write_json(f"{SHARDS_DIR}/{key}.json", marker)
            adopted[key] = marker
        return adopted

    def _delete(self, key: str) -> None:
        """Remove a file set: its data first, its marker last (a kill in between leaves a
        record that the next prune finishes)."""
        for sub in (CATALOG_DIR, ERRORS_DIR):
            self.out.delete(f"{sub}/{key}.parquet")
        self.out.delete(f"{SHARDS_DIR}/{key}.json")

    def _ids_on_disk(self, keys: Sequence[str]) -> set[str]:
        """The ids of the finished file sets ``keys`` (one column, read in parallel)."""
        import pyarrow.dataset as pads

        paths = [self.out.path(f"{sub}/{k}.parquet") for sub in (CATALOG_DIR, ERRORS_DIR)
                 for k in sorted(set(keys) & {n[: -len(".parquet")] for n in self.out.list(sub)})]
        if not paths:
            return set()
        fs = self.out.fs
        if fs is None:
            from pyarrow.fs import LocalFileSystem

            fs = LocalFileSystem()
        ds = pads.dataset(paths, format="parquet", filesystem=fs)
        return set(ds.to_table(columns=[schema.ID]).column(schema.ID).to_pylist())

    def _unique_ids(self, table):
        """``table`` with ids already taken renamed by the stated rule (``~2``, ``~3``...), and
        how many were renamed."""
        import pyarrow as pa

        ids = table.column(schema.ID).to_pylist()
        renamed = 0
        for i, given in enumerate(ids):
            new, n = given, 1
            while new in self.ids:
                n += 1
                new = f"{given}~{n}"
            renamed += new != given
            ids[i] = new
            self.ids.add(new)
        if renamed:
            col = table.schema.get_field_index(schema.ID)
            table = table.set_column(col, schema.ID, pa.array(ids, pa.string()))
        return table, renamed

    # ------------------------------------------------------------------ options
    def check_options(self, spec: dict) -> None:
        """Take ``spec`` (what decides the catalogue's values), recorded with the first file
        this store finishes; in a store with finished files, refuse another (as
        :func:`check_options`). A run that failed or was stopped before finishing a file binds
        nothing."""
        self._options = _as_saved(spec)
        old = self.out.read_text(OPTIONS_FILE)
        if old is not None and self.records:
            _refuse_other(self.out.show(), json.loads(old), self._options)

    # ------------------------------------------------------------------ writing
    def add(self, table) -> None:
        """Take the next ordered output rows (a pyarrow table)."""
        sources = table.column(schema.SOURCE).to_pylist()
        start = 0
        for i in range(1, len(sources) + 1):
            if i == len(sources) or sources[i] != sources[start]:
                self._take(sources[start], table.slice(start, i - start))
                start = i

    def _take(self, source: str, part) -> None:
        if source != self.current:
            self._commit()
            if source in self.done:
                raise RuntimeError(f"{source}: rows arrived after the file was written (row order "
                                   "was not preserved); rerun with the same --out to repair")
            if source not in self._expected:
                raise RuntimeError(f"{source}: rows from a file that was not asked for")
            self.current = source
        self.parts.append(part)
        self.rows_seen += part.num_rows
        self.candidates_seen += _candidates(part)

    def close(self) -> None:
        """After a complete run: commit the last file; files that gave no row at all are empty
        (every row was delivered), so they are finished too (rows of an earlier read gone)."""
        self._commit()
        for source in self.missing():
            if self.keys[source] in self.records:
                self._delete(self.keys[source])
            self._finish(source, dict.fromkeys(COUNTS, 0))
            self.empty.append(source)

    def _commit(self) -> None:
        """Write the current file's catalogue and error rows (both files always, so readers
        find the schema), then its marker."""
        if self.current is None:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table, renamed = self._unique_ids(pa.concat_tables(self.parts, promote_options="permissive"))
        good, errors = catalog_parts(table)
        key = self.keys[self.current]
        for sub, part in ((CATALOG_DIR, good), (ERRORS_DIR, error_table(errors))):
            self.out.write(f"{sub}/{key}.parquet", lambda f, part=part: pq.write_table(part, f))
        for name in table.column_names:
            if name.startswith(schema.PROVENANCE_PREFIX) and name not in self.models:
                tags = [t for t in table.column(name).to_pylist() if t]
                if tags:
                    self.models[name] = tags[0]
        self._finish(self.current, {**_file_counts(table, good, errors), "ids_renamed": renamed})
        self.current, self.parts = None, []

    def _finish(self, source: str, counts: dict) -> None:
        """Write ``source``'s marker: its counts and stamp, ``finished`` unless it had a
        transient error (the next run reads it again)."""
        if self._options is not None:  # before the first marker: what the markers mean
            self.out.write_json(OPTIONS_FILE, self._options)
            self._options = None
        marker = {"source": source, **counts, "finished": not counts.get(schema.TRANSIENT),
                  "stamp": self.stamps.get(source)}
        self.out.write_json(f"{SHARDS_DIR}/{self.keys[source]}.json", marker)
        self.done[source] = self.records[self.keys[source]] = marker

    # ------------------------------------------------------------------ reading back
    def missing(self) -> list[str]:
        """Pending files that have produced no row (yet)."""
        return [s for s in self.pending if s not in self.done]

    def finished(self, source: str) -> bool:
        """Whether ``source`` needs no reading: a marker on record without transient errors,
        for the file as it is now (same stamp, when both the marker and this run know it)."""
        marker = self.records.get(self.keys[source])
        if marker is None or not marker.get("finished", True):
            return False
        now, then = self.stamps.get(source) or (), marker.get("stamp") or ()
        return all(x == y for x, y in zip(now, then, strict=False) if None not in (x, y))

    def unfinished(self) -> list[str]:
        """Files written by this run that the next run reads again (transient errors)."""
        return sorted(s for s, m in self.done.items() if not m.get("finished", True))

    def counts(self) -> dict[str, int]:
        """Counts of the files finished by this run."""
        return {k: sum(m.get(k, 0) for m in self.done.values()) for k in COUNTS}

    def totals(self) -> dict[str, int]:
        """Counts of every file set on record (this run's inputs, stale and adopted ones: the
        whole catalogue on disk), and the rows actually on disk (an independent check)."""
        records = self.records
        out = {k: sum(m.get(k, 0) for m in records.values()) for k in COUNTS}
        names = {sub: set(self.out.list(sub)) for sub in (CATALOG_DIR, ERRORS_DIR)}
        for sub in (CATALOG_DIR, ERRORS_DIR):
            out[f"{sub}_parquet_rows"] = sum(self.out.parquet_rows(f"{sub}/{k}.parquet")
                                             for k in records if f"{k}.parquet" in names[sub])
        return out

    def _marker(self, source: str) -> dict | None:
        text = self.out.read_text(f"{SHARDS_DIR}/{self.keys[source]}.json")
        return json.loads(text) if text is not None else None


def error_table(errors):
    """Error rows in the fixed schema of ``errors/`` (:data:`ERROR_COLUMNS`; a column the rows
    lack is null), so every errors file reads the same, with or without rows."""
    import pyarrow as pa

    types = {schema.ID: pa.string(), schema.SOURCE: pa.string(), schema.INDEX: pa.int64(),
             schema.ERROR: pa.string(), schema.KIND: pa.string()}
    cols = [errors.column(c).cast(types[c]) if c in errors.column_names
            else pa.nulls(errors.num_rows, types[c]) for c in ERROR_COLUMNS]
    return pa.table(cols, names=list(ERROR_COLUMNS))


def _file_counts(table, good, errors) -> dict[str, int]:
    """A file's marker counts: rows, good, errors (and by kind), candidates."""
    kinds = errors.column(schema.KIND).to_pylist() if errors.num_rows else []
    return {"rows": table.num_rows, "good": good.num_rows, "errors": errors.num_rows,
            **{k: kinds.count(k) for k in schema.ERROR_KINDS}, "candidates": _candidates(table)}


def _candidates(table) -> int:
    if schema.CANDIDATE not in table.column_names:
        return 0
    return int(np.asarray(table.column(schema.CANDIDATE).to_numpy(zero_copy_only=False)).sum())
