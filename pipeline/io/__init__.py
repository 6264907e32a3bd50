"""Reading cutouts into Ray Data and writing shards and catalogues.

- :func:`read_cutouts` reads FITS cutouts (single images, multi-extension multi-band files,
  multi-HDU files, lensray cube shards) from files, directories, globs or URIs into a Ray Dataset.
- :func:`decode_fits` / :func:`read_fits_file` are the same parsing without Ray (one file).
- :func:`read_tiles` cuts a cutout around every source of a catalogue from survey tiles (FITS
  images with a WCS, one per band) into the same rows, plus the catalogue's columns.
- :func:`list_inputs` lists a job's input files once (with their sizes) for all of the above.
- :func:`write_cube_shard` writes N cutouts + their label table as one FITS cube shard.
- :func:`write_catalog` writes a Dataset/table as Parquet, good rows and error rows apart;
  :class:`CatalogStore` writes one input file at a time, resumably (``lensray run``).

Every FITS file the package opens is opened here; this layer imports nothing from the models,
stages, training or the CLI (docs/architecture.md).
"""

from importlib import import_module

# public name -> module that defines it; loaded on first use, so that the column names of
# ``pipeline.io.schema`` (which every layer reads) cost no Ray import
_LAZY = {
    "CatalogStore": "pipeline.io.catalog",
    "write_catalog": "pipeline.io.catalog",
    "CutoutReadError": "pipeline.io.decode",
    "ReadOptions": "pipeline.io.decode",
    "decode_fits": "pipeline.io.decode",
    "read_fits_file": "pipeline.io.decode",
    "Inputs": "pipeline.io.files",
    "list_inputs": "pipeline.io.files",
    "read_cutouts": "pipeline.io.reader",
    "load_catalog": "pipeline.io.sources",
    "plan_tiles": "pipeline.io.tiles",
    "read_tiles": "pipeline.io.tiles",
    "write_cube_shard": "pipeline.io.writers",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline.io' has no attribute {name!r}")
