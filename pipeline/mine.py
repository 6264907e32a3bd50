"""Hard-negative rounds: the top-scored cutouts of a run, graded, as the next round's training set.

``lensray mine RUN_DIR --top K --out DIR [--labels FILE] [--base DATA]`` reads the run's
catalogue, takes its K highest ``p_lens`` rows, reads their cutouts again from the source files
as the run read them, fits them to the run's lens finder (bands, pixel scale, size: what it
scored) and writes them as training shards with ``is_lens`` from the grading: 1 for the lenses a
label file names, 0 for every other row (the confirmed non-lenses; with ``only_labelled`` the
rows the file does not name are left out). ``base`` (the set the finder was trained on) is
linked into ``DIR`` split by split, so ``lensray train --data DIR`` trains on both; the mined
rows go to train and val by a hash of their id (test stays the base's, so test metrics remain
comparable between rounds). A run over URI inputs whose query named their store
(``?endpoint_override=...``) recorded the sources without it (it may hold credentials): give
the same options again as ``store_options``. This is the grading loop of the survey searches
(KiDS, DES, HOLISMOKES, Euclid Q1): score, look at the top, retrain with the false positives as
negatives.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np

FORMAT = "lensray-mined/1"
MINED_KIND = "mined"  # the ``kind`` of every mined row (their class column, as the simulator's)


def _split(row_id: str, val_fraction: float) -> str:
    """train or val, fixed per id (a rerun or a later round puts a cutout in the same split)."""
    return "val" if zlib.crc32(row_id.encode()) / 2**32 < val_fraction else "train"


def _lens_finder(summary: dict, run_dir: Path):
    """The run's lens-detect stage, rebuilt from its recorded options (its geometry is what the
    mined cutouts are fitted to)."""
    from pipeline.stages import LensDetect

    opts = next((s["options"] for s in summary.get("stages", [])
                 if s.get("stage") == LensDetect.__name__), None)
    if opts is None:
        raise ValueError(f"{run_dir}: the run had no lens-detect stage; nothing to mine")
    return LensDetect(**opts)


def _link(src: Path, dst: Path) -> None:
    """Hard link (same filesystem) or symlink: the base's shards are not copied."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        dst.symlink_to(src.resolve())


def _store(rows: list[dict], store_options: str | None):
    """The filesystem of the run's URI sources with ``store_options`` (a URI query), or None."""
    from pipeline.io.files import uri_filesystem
    from pipeline.io.schema import SOURCE

    if not store_options:
        return None
    uri = next((str(r[SOURCE]) for r in rows if "://" in str(r[SOURCE])), None)
    if uri is None:
        raise ValueError("store options were given, but the run's sources are local files")
    return uri_filesystem(f"{uri}?{store_options.lstrip('?')}")[0]


def _unread(source: str, store_options: str | None) -> str:
    hint = (" (a URI: if the run's inputs named their store in a query, give it again, "
            "--store-options)" if "://" in str(source) and not store_options else "")
    return "cannot be read again" + hint


def link_base(base: Path, out: Path) -> dict[str, list[dict]]:
    """Every shard of the set ``base`` (its manifest's, with sibling catalogues) linked under
    ``out`` as ``base-*``: their manifest entries, paths relative to ``out``."""
    from pipeline.simulate.generate import SPLITS, read_manifest

    entries: dict[str, list[dict]] = {}
    for split in SPLITS:
        entries[split] = []
        for shard in read_manifest(base)["splits"].get(split, {}).get("shards", []):
            src = base / shard["path"]
            stem = src.name.split(".")[0]
            for f in sorted(src.parent.glob(f"{stem}.*")):
                _link(f, out / split / f"base-{f.name}")
            entries[split].append({**shard, "path": f"{split}/base-{src.name}"})
    return entries


def mine(run_dir: str | os.PathLike, out: str | os.PathLike, *, top: int,
         labels: str | os.PathLike | None = None, only_labelled: bool = False,
         base: str | os.PathLike | None = None, val_fraction: float = 0.1,
         store_options: str | None = None) -> dict:
    """Write the graded top ``top`` cutouts of the run in ``run_dir`` as a training set in
    ``out`` (see the module docstring); returns its manifest (also ``out/manifest.json``)."""
    from pipeline.gallery import reread_cutouts, top_candidates
    from pipeline.io import write_cube_shard
    from pipeline.io.catalog import CATALOG_DIR
    from pipeline.io.files import sha256_file
    from pipeline.io.labels import load_labels
    from pipeline.io.schema import ID, SOURCE
    from pipeline.io.writers import write_json
    from pipeline.models.tasks import P_LENS
    from pipeline.simulate.generate import MANIFEST, SPLITS, read_manifest

    run_dir, out = Path(run_dir), Path(out)
    if top < 1:
        raise ValueError(f"--top must be >= 1, got {top}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not (run_dir / "summary.json").is_file():
        raise FileNotFoundError(f"{run_dir}: no summary.json (not a finished `lensray run` "
                                "output directory)")
    if (out / MANIFEST).exists():
        raise FileExistsError(f"{out / MANIFEST}: exists (mine into a new directory)")
    if base is not None:
        read_manifest(base)  # a set with a manifest, before any work
    summary = json.loads((run_dir / "summary.json").read_text())
    finder = _lens_finder(summary, run_dir)
    rows = top_candidates(run_dir / CATALOG_DIR, top)
    if not rows or P_LENS not in rows[0]:
        raise ValueError(f"{run_dir / CATALOG_DIR}: no scored rows (p_lens) to mine")
    truth = np.zeros(len(rows))
    if labels is not None:
        truth, _ = load_labels(labels).of([r[ID] for r in rows], [r[SOURCE] for r in rows])
        if only_labelled:
            keep = np.isfinite(truth)
            rows, truth = [r for r, k in zip(rows, keep, strict=True) if k], truth[keep]
        truth = np.nan_to_num(truth, nan=0.0)  # graded: what the file does not call a lens is not
    geometry = finder.geometry
    images = reread_cutouts(rows, summary.get("read") or {}, fit_to={**geometry,
                                                                    "task": finder.task},
                            filesystem=_store(rows, store_options))
    want = (len(geometry["bands"]), geometry["size"], geometry["size"])
    split_rows: dict[str, list] = {"train": [], "val": []}
    skipped = []
    for row, img, label in zip(rows, images, truth, strict=True):
        if img is None or tuple(np.shape(img)) != want:
            why = _unread(row[SOURCE], store_options) if img is None else (
                f"does not fit the lens finder ({tuple(np.shape(img))}, wants {want})")
            skipped.append([row[ID], row[SOURCE], why])
            continue
        split_rows[_split(str(row[ID]), val_fraction)].append((row, img, int(label)))
    base_shards = link_base(Path(base), out) if base is not None else {}
    splits: dict[str, dict] = {}
    for split in SPLITS:
        items = split_rows.get(split, [])
        shards = list(base_shards.get(split, []))
        if not items:
            splits[split] = {"n": sum(e["n"] for e in shards), "shards": shards}
            continue
        path = out / split / "mined-00000.fits"
        table = {
            "id": np.array([str(r[ID]) for r, _, _ in items]),
            "ra": np.array([r.get("ra", np.nan) for r, _, _ in items], dtype=np.float64),
            "dec": np.array([r.get("dec", np.nan) for r, _, _ in items], dtype=np.float64),
            "is_lens": np.array([lab for _, _, lab in items], dtype=np.int64),
            "kind": np.array([MINED_KIND] * len(items)),
            "p_lens_mined": np.array([r[P_LENS] for r, _, _ in items], dtype=np.float64),
            "mined_from": np.array([str(r[SOURCE]) for r, _, _ in items]),
        }
        write_cube_shard(path, np.stack([np.asarray(img, np.float32) for _, img, _ in items]),
                         table, geometry["bands"], pixel_scale=geometry["pixel_scale"],
                         header={"TASK": "lens", "MINED": True})
        shards.append({"path": path.relative_to(out).as_posix(), "n": len(items),
                       "sha256": sha256_file(path), "counts": {
                           "lens": int(table["is_lens"].sum()),
                           "non-lens": int(len(items) - table["is_lens"].sum())}})
        splits[split] = {"n": sum(e["n"] for e in shards), "shards": shards}
    mined = [e for sp in splits.values() for e in sp["shards"] if "/mined-" in e["path"]]
    n = sum(e["n"] for e in mined)
    lenses = sum(e["counts"]["lens"] for e in mined)
    manifest = {
        "format": FORMAT, "task": "lens", "class_column": "kind",
        "bands": list(geometry["bands"]), "size": int(geometry["size"]),
        "pixel_scale": float(geometry["pixel_scale"]),
        "run": {"dir": run_dir.name, "models": summary.get("models"),
                "survey": (summary.get("survey") or {}).get("name")},
        "top": top, "labels": Path(labels).name if labels is not None else None,
        "only_labelled": only_labelled, "val_fraction": val_fraction,
        "n": n, "counts": {"lens": lenses, "non-lens": n - lenses},
        "skipped": skipped, "adds_up": n + len(skipped) == len(rows),
        "splits": splits, "base": None if base is None else Path(base).name,
    }
    if base is not None:  # the base's preset, for the model card
        manifest["preset"] = read_manifest(base).get("preset")
    write_json(out / MANIFEST, manifest)
    return manifest
