"""Reading cutouts into Ray Data and writing shards and catalogues.

- :func:`write_cube_shard` writes N cutouts + their label table as one FITS cube shard.
"""

from pipeline.io.writers import write_cube_shard

__all__ = ["write_cube_shard"]
