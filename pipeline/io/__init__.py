"""Reading cutouts into Ray Data and writing shards and catalogues.

- :func:`read_cutouts` reads FITS cutouts (single images, multi-extension multi-band files,
  multi-HDU files, lensray cube shards) from files, directories, globs or URIs into a Ray Dataset.
- :func:`decode_fits` / :func:`read_fits_file` are the same parsing without Ray (one file).
- :func:`list_inputs` lists a job's input files once (with their sizes) for all of the above.
- :func:`write_cube_shard` writes N cutouts + their label table as one FITS cube shard.
- :func:`write_catalog` writes a Dataset/table as Parquet, good rows and error rows apart;
  :class:`CatalogStore` writes one input file at a time, resumably (``lensray run``).

Every FITS file the package opens is opened here; this layer imports nothing from the models,
stages, training or the CLI (docs/architecture.md).
"""

from pipeline.io.catalog import CatalogStore, write_catalog
from pipeline.io.decode import CutoutReadError, ReadOptions, decode_fits, read_fits_file
from pipeline.io.files import Inputs, list_inputs
from pipeline.io.reader import read_cutouts
from pipeline.io.writers import write_cube_shard

__all__ = [
    "CatalogStore",
    "CutoutReadError",
    "Inputs",
    "ReadOptions",
    "decode_fits",
    "list_inputs",
    "read_cutouts",
    "read_fits_file",
    "write_catalog",
    "write_cube_shard",
]
