"""An output directory on the local disk or an object store, written whole file by whole file.

    out = OutDir("s3://bucket/run1?endpoint_override=127.0.0.1:9000&scheme=http")
    out.write("catalog/x.parquet", lambda f: pq.write_table(table, f))

Local paths and ``s3://`` / ``gs://`` URIs (and any other ``pyarrow.fs`` URI) take the same
calls. The URI's query holds the filesystem's options (``endpoint_override``, ``scheme``,
``region``, ... as ``pyarrow.fs.FileSystem.from_uri`` reads them); :attr:`OutDir.uri` leaves the
query out, so messages and summaries never carry it.

Every file appears whole or not at all: a local file is written under a temporary name and
renamed (:func:`pipeline.io.writers.atomic_write`); an object is serialised in memory and put in
one upload, which the store makes visible only once it is complete.
"""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Callable


class OutDir:
    """A directory given as a local path or a URI (see the module doc)."""

    def __init__(self, out: str | os.PathLike):
        out = os.fspath(out)
        if "://" in out:
            from pipeline.io.files import uri_filesystem

            fs, path = uri_filesystem(out)
            self.fs, self.root = fs, path.rstrip("/")
            self.uri = out.split("?", 1)[0].rstrip("/")
        else:
            self.fs, self.root = None, os.path.abspath(out)
            self.uri = out.rstrip("/") or "."

    def sub(self, rel: str) -> OutDir:
        """The subdirectory ``rel``, on the same filesystem."""
        sub = object.__new__(OutDir)
        sub.fs, sub.root, sub.uri = self.fs, self.path(rel), self.show(rel)
        return sub

    @property
    def local(self) -> bool:
        return self.fs is None

    def path(self, rel: str = "") -> str:
        """``rel`` on the filesystem (a local path, or the store's ``bucket/key``)."""
        if not rel:
            return self.root
        return os.path.join(self.root, rel) if self.local else posixpath.join(self.root, rel)

    def show(self, rel: str = "") -> str:
        """``rel`` as the user named the directory (for messages; no URI query)."""
        return f"{self.uri}/{rel}" if rel else self.uri

    # ------------------------------------------------------------------ writing
    def makedirs(self, *subs: str) -> None:
        for sub in subs:
            if self.local:
                os.makedirs(self.path(sub), exist_ok=True)
            else:
                self.fs.create_dir(self.path(sub), recursive=True)

    def write(self, rel: str, write: Callable, sync: bool = False) -> None:
        """Call ``write(fileobj)`` and put the bytes at ``rel``, whole (see the module doc)."""
        if self.local:
            from pipeline.io.writers import atomic_write

            atomic_write(self.path(rel), write, sync=sync)
            return
        buf = io.BytesIO()
        write(buf)
        with self.fs.open_output_stream(self.path(rel)) as f:
            f.write(buf.getvalue())

    def write_json(self, rel: str, data) -> None:
        import json

        text = json.dumps(data, indent=2, default=str) + "\n"
        self.write(rel, lambda f: f.write(text.encode()))

    def delete(self, rel: str) -> None:
        """Remove the file ``rel`` if it is there."""
        if self.local:
            try:
                os.unlink(self.path(rel))
            except FileNotFoundError:
                pass
        elif self.exists(rel):
            self.fs.delete_file(self.path(rel))

    # ------------------------------------------------------------------ reading
    def exists(self, rel: str) -> bool:
        if self.local:
            return os.path.isfile(self.path(rel))
        from pyarrow.fs import FileType

        return self.fs.get_file_info(self.path(rel)).type == FileType.File

    def read_text(self, rel: str) -> str | None:
        """The text of ``rel``, or None when there is no such file."""
        if self.local:
            try:
                with open(self.path(rel), encoding="utf-8") as f:
                    return f.read()
            except FileNotFoundError:
                return None
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read().decode("utf-8")
        except FileNotFoundError:
            return None

    def list(self, sub: str) -> list[str]:
        """Names of the visible files directly in ``sub`` (not hidden '.'/'_' ones: temporary
        files and records), sorted."""
        if self.local:
            try:
                names = [e.name for e in os.scandir(self.path(sub)) if e.is_file()]
            except FileNotFoundError:
                return []
        else:
            from pyarrow.fs import FileSelector, FileType

            infos = self.fs.get_file_info(FileSelector(self.path(sub), allow_not_found=True))
            names = [posixpath.basename(i.path) for i in infos if i.type == FileType.File]
        return sorted(n for n in names if not n.startswith((".", "_")))

    def parquet_rows(self, rel: str) -> int:
        """Rows of the Parquet file ``rel`` (from its footer)."""
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.path(rel), filesystem=self.fs).metadata.num_rows

    def read_parquet(self, rel: str):
        import pyarrow.parquet as pq

        return pq.read_table(self.path(rel), filesystem=self.fs)
