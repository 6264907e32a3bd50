"""lensray: survey-scale strong-lens pipeline on Ray.

The main road is ``FITS files -> Pipeline([Denoise(), LensDetect(), Substructure()]) -> catalogue``::

    import pipeline as lp
    pipe = lp.Pipeline([lp.Denoise(), lp.LensDetect(threshold=0.9), lp.Substructure()])
    cat = pipe.run_files("cutouts/*.fits", bands=["VIS"], size=64)   # or pipe.run(read_cutouts(...))
    cat = pipe.run(lp.read_tiles("tiles/*_{band}.fits", "sources.parquet", size=64, bands=["VIS"]))

Heavy imports (Ray, torch) happen on first use of a name, so ``import pipeline`` stays fast.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lensray")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

# public name -> module that defines it
_LAZY = {
    "read_cutouts": "pipeline.io",
    "read_tiles": "pipeline.io",
    "write_cube_shard": "pipeline.io",
    "write_catalog": "pipeline.io",
    "create_model": "pipeline.models",
    "Pipeline": "pipeline.compose",
    "Denoise": "pipeline.stages",
    "LensDetect": "pipeline.stages",
    "Substructure": "pipeline.stages",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
