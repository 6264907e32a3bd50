"""Reading cutouts into Ray Data and writing shards and catalogues.

- :func:`read_cutouts` reads FITS cutouts (single images, multi-extension multi-band files,
  multi-HDU files, lensray cube shards) from files, directories, globs or URIs into a Ray Dataset.
- :func:`decode_fits` / :func:`read_fits_file` are the same parsing without Ray (one file).
- :func:`read_tiles` cuts a cutout around every source of a catalogue from survey tiles (FITS
  images with a WCS, one per band) into the same rows, plus the catalogue's columns.
- :func:`write_cube_shard` writes N cutouts + their label table as one FITS cube shard.
- :func:`write_catalog` writes a Dataset/table as Parquet, good rows and error rows apart.
"""

from pipeline.io.decode import CutoutReadError, ReadOptions, decode_fits, read_fits_file
from pipeline.io.reader import read_cutouts
from pipeline.io.sources import load_catalog
from pipeline.io.tiles import plan_tiles, read_tiles
from pipeline.io.writers import write_catalog, write_cube_shard

__all__ = [
    "CutoutReadError",
    "ReadOptions",
    "decode_fits",
    "load_catalog",
    "read_cutouts",
    "read_fits_file",
    "plan_tiles",
    "read_tiles",
    "write_catalog",
    "write_cube_shard",
]
