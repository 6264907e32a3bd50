"""Arcs painted onto real survey cutouts: training sets made of the survey's own galaxies.

Every lens search that worked on a real survey trained on its own cutouts with simulated arcs
added (HOLISMOKES, KiDS, DES, DECaLS, the Euclid Q1 engine): real galaxies, real neighbours,
real PSF and noise, in both classes. :func:`inject_lens` turns one real cutout (a
:class:`Background`) into a lens:

1. **The deflector is the central galaxy.** Its centre, axis ratio, position angle and
   half-light radius are measured from the cutout (pixels above 2 sigma near the centre,
   flux-weighted moments); the lens mass (EPL + external shear) is centred on it and follows its
   shape, and the Einstein radius is drawn from the preset's prior, restricted to 0.5-3 times the
   measured half-light radius (bigger galaxies are heavier), or the whole prior when that leaves
   nothing.
2. **The source** is the simulator's (Sersic + star-forming clumps, colours from the prior),
   lensed with lenstronomy at the background's own pixel scale and size, and convolved with the
   file's own PSF (``<BAND>_PSF``, e.g. Euclid) when it has one, else the preset band's Gaussian.
3. **Brightness without a zero point.** The files' units are unknown (ADU, nanomaggies...), so
   the arcs are set by their S/N against the cutout's own noise (border MAD): a target drawn
   log-uniformly from ``snr_range``, bands in quadrature (as ``noise.arc_snr``). Each band is
   first put in the file's units assuming the file is as deep as the preset (``k_b`` = the
   file's noise / the preset's), which keeps the prior's colours.
4. **Poisson noise of the added light** in the file's units: variance ``k_b * f / t_exp`` for
   added flux ``f`` (the preset's exposure, same depth assumption). Pixels the arcs do not reach
   (below 1e-6 of their peak) are untouched.

The untouched cutout is the matching non-lens: positives and negatives share the survey's
galaxies, PSF and noise, so only the arc separates them. ``simulate_injections`` does this for a
folder of cutouts on Ray and writes the usual shards + manifest (``lensray simulate
--backgrounds``).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass

import numpy as np

from pipeline.io.pixels import image_stats
from pipeline.simulate.instruments import ConfigError, Preset
from pipeline.simulate.priors import Priors

SNR_RANGE = (10.0, 200.0)  # default target arc S/N (log-uniform)


@dataclass(frozen=True)
class Background:
    """One real cutout: ``image`` (bands, H, W) in its file's units, its pixel scale, band
    names, PSF kernels per band (None where the file has none) and where it came from."""

    image: np.ndarray
    pixel_scale: float
    bands: tuple[str, ...]
    psf: tuple
    id: str
    source: str = ""
    index: int = 0


def measure_galaxy(image: np.ndarray, pixel_scale: float) -> dict:
    """Centre (arcsec from the cutout centre, lenstronomy's grid), axis ratio, position angle
    and half-light radius (arcsec) of the central galaxy of a (B, H, W) cutout, and each band's
    sky and noise."""
    sky, noise = image_stats(image[None])
    z = ((image - sky[0, :, None, None]) / noise[0, :, None, None]).sum(0)
    n = image.shape[-1]
    yy, xx = np.indices(z.shape, dtype=np.float64)
    c = (n - 1) / 2
    near = np.hypot(xx - c, yy - c) < n / 4
    w = np.where((z > 2 * math.sqrt(len(image))) & near, z, 0.0)
    if w.sum() <= 0:  # nothing above the noise near the centre: a round point at the centre
        return {"x": 0.0, "y": 0.0, "q": 1.0, "phi": 0.0, "r_half": pixel_scale,
                "sky": sky[0], "noise": noise[0]}
    cx, cy = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
    dx, dy = xx - cx, yy - cy
    qxx, qyy, qxy = ((w * dx * dx).sum(), (w * dy * dy).sum(), (w * dx * dy).sum())
    qxx, qyy, qxy = qxx / w.sum(), qyy / w.sum(), qxy / w.sum()
    root = math.sqrt((qxx - qyy) ** 2 + 4 * qxy**2)
    a2, b2 = (qxx + qyy + root) / 2, max((qxx + qyy - root) / 2, 1e-6)
    r = np.hypot(dx, dy)
    order = np.argsort(r[w > 0])
    cum = np.cumsum(w[w > 0][order])
    r_half = float(r[w > 0][order][np.searchsorted(cum, cum[-1] / 2)]) * pixel_scale
    return {"x": (cx - c) * pixel_scale, "y": (cy - c) * pixel_scale,
            "q": float(np.clip(math.sqrt(b2 / a2), 0.3, 1.0)), "phi": 0.5 * math.atan2(2 * qxy, qxx - qyy),
            "r_half": max(r_half, pixel_scale), "sky": sky[0], "noise": noise[0]}


def on_grid(preset: Preset, bg: Background) -> Preset:
    """The preset's bands on the background's grid (its pixel scale and size)."""
    if len(bg.bands) != len(preset.bands):
        raise ConfigError(f"{bg.id}: {len(bg.bands)} band(s) {list(bg.bands)}; preset "
                          f"{preset.name!r} paints {len(preset.bands)} ({preset.band_names})")
    bands = tuple(dataclasses.replace(b, pixel_scale=bg.pixel_scale) for b in preset.bands)
    return dataclasses.replace(preset, bands=bands, size=bg.image.shape[-1])


def _snr(arcs, sigma, poisson) -> float:
    """Arc S/N as ``noise.arc_snr`` (pixels above 1 sigma, bands in quadrature)."""
    total = 0.0
    for a, s, p in zip(arcs, sigma, poisson, strict=True):
        mask = a > s
        if mask.any():
            total += a[mask].sum() ** 2 / (s**2 + p * a[mask]).sum()
    return math.sqrt(total)


def poisson_noise(rng: np.random.Generator, arcs: np.ndarray, per_flux) -> np.ndarray:
    """Gaussian-limit Poisson noise of added light ``arcs`` (B, H, W): variance
    ``per_flux[b] * arcs`` per pixel (0 where nothing is added)."""
    var = np.clip(arcs, 0, None) * np.asarray(per_flux, np.float64)[:, None, None]
    return rng.standard_normal(arcs.shape) * np.sqrt(var)


def inject_lens(rng: np.random.Generator, bg: Background, preset: Preset, priors: Priors,
                snr_range=SNR_RANGE, sources=()) -> tuple[np.ndarray, np.ndarray, dict]:
    """A lens made of ``bg`` (module doc): returns the image with arcs and Poisson noise added,
    the noiseless arcs (both in the file's units) and the labels. ``sources``: real source
    stamps (``pipeline.simulate.real_sources``) instead of clumpy Sersic sources."""
    from pipeline.simulate.psf import nominal_kernel
    from pipeline.simulate.render import LenstronomyRenderer
    from pipeline.simulate.scenes import LENS_LABELS, Scene, add_lens

    grid = on_grid(preset, bg)
    galaxy = measure_galaxy(bg.image, bg.pixel_scale)
    lo, hi = priors.theta_e
    lo_c, hi_c = max(lo, 0.5 * galaxy["r_half"]), min(hi, 3.0 * galaxy["r_half"])
    prior = dataclasses.replace(priors, theta_e=(lo_c, hi_c) if lo_c < hi_c else (lo, hi))
    psf = [k if k is not None else nominal_kernel(b)
           for k, b in zip(bg.psf or [None] * len(grid.bands), grid.bands, strict=True)]
    centre = (galaxy["x"], galaxy["y"])
    scene = Scene("lens", psf=psf, labels={"x_lens": centre[0], "y_lens": centre[1]})
    scene = add_lens(rng, scene, {"q": galaxy["q"], "phi": galaxy["phi"]}, centre, grid, prior,
                      "lens", sources)
    arcs_e = LenstronomyRenderer(grid).render(scene).arcs  # preset units (e-/s)
    # FFT convolution leaves ~1e-16 ripples everywhere: below 1e-6 of the peak, nothing is added
    arcs_e = np.where(arcs_e > 1e-6 * arcs_e.max(axis=(1, 2), keepdims=True), arcs_e, 0.0)
    sigma = galaxy["noise"].astype(np.float64)
    k = sigma / np.array([b.background_noise for b in grid.bands])  # file units per e-/s
    poisson = k / np.array([b.total_exposure for b in grid.bands])  # variance per unit flux
    arcs = arcs_e * k[:, None, None]
    target = math.exp(rng.uniform(math.log(snr_range[0]), math.log(snr_range[1])))
    scale = 1.0
    for _ in range(4):  # S/N is not linear in the flux (the mask and Poisson term move)
        snr = _snr(arcs * scale, sigma, poisson)
        if snr <= 0:
            scale *= 10
            continue
        scale *= target / snr
    arcs = arcs * scale
    image = bg.image + arcs + poisson_noise(rng, arcs, poisson)
    labels = {**LENS_LABELS, **scene.labels, "snr_arcs": _snr(arcs, sigma, poisson),
              "r_eff_lens": galaxy["r_half"], "mag_source": float("nan"), "kind": "injected"}
    return image.astype(np.float32), arcs, labels


# ----------------------------------------------------------------------------- sets on Ray
def _split_of(source: str, fractions) -> str:
    """A file's split, from a hash of its name: every cutout of a file in one split, so no
    galaxy is in two (the same bytes on any machine)."""
    from pipeline.io.files import file_stem
    from pipeline.simulate.generate import SPLITS

    u = zlib.crc32(file_stem(source).encode()) / 2**32
    edges = np.cumsum(fractions)
    return SPLITS[int(np.searchsorted(edges, u, side="right").clip(0, 2))]


def backgrounds_of(path: str, size: int, bands=None,
                   pixel_scale: float | None = None) -> tuple[list, list]:
    """The cutouts of one file as :class:`Background` s (``bands`` picked by name when given,
    centre-cropped/padded to ``size``) and the ``(id, reason)`` of each row that cannot be one."""
    from pipeline.io import ReadOptions, read_fits_file
    from pipeline.io.psf import read_psfs
    from pipeline.io.schema import BAND_NAMES, ERROR, ID, IMAGE, INDEX, PIXEL_SCALE, SOURCE

    rows = read_fits_file(path, ReadOptions(bands=bands, size=size, geometry=True))
    good, skipped = [], []
    for i in range(len(rows[ID])):
        if rows[ERROR][i]:
            skipped.append((rows[ID][i], rows[ERROR][i]))
            continue
        scale = pixel_scale or float(rows[PIXEL_SCALE][i])
        if not np.isfinite(scale) or scale <= 0:
            skipped.append((rows[ID][i], f"{path}: pixel scale unknown (no WCS or PIXSCALE; "
                                          "pass pixel_scale=)"))
            continue
        names = rows[BAND_NAMES][i]
        bands = tuple(names.split(",")) if names else tuple(
            str(b) for b in range(rows[IMAGE][i].shape[0]))
        psf = tuple(read_psfs(path, bands if names else None)) or (None,) * len(bands)
        good.append(Background(np.asarray(rows[IMAGE][i], np.float64), scale, bands, psf,
                               str(rows[ID][i]), str(rows[SOURCE][i]), int(rows[INDEX][i])))
    return good, skipped


INJECT_LABELS = ("is_lens", "kind", "theta_e", "snr_arcs", "x_lens", "y_lens", "r_eff_lens",
                 "e1_lens", "e2_lens", "gamma_slope", "gamma1", "gamma2", "x_source",
                 "y_source", "r_eff_source", "n_clumps", "source_stamp", "z_lens", "z_source",
                 "n_images", "mu_total")


def make_injection_shard(preset: Preset, priors: Priors, files: list[str], path: str, seed: int,
                         key: tuple[int, ...], snr_range=SNR_RANGE, bands=None,
                         pixel_scale: float | None = None, sources=()) -> dict:
    """One shard (the body of one Ray task): every background of ``files`` twice, untouched
    (``kind`` "real", a non-lens) and with arcs (``kind`` "injected"), next to each other;
    lensed sources from the real ``sources`` stamps when given."""
    from pipeline.io import write_cube_shard
    from pipeline.io.files import sha256_file
    from pipeline.simulate.scenes import LENS_LABELS

    images, table, skipped = [], {c: [] for c in ("id", "background", *INJECT_LABELS)}, []
    scales: set[float] = set()
    for f in files:
        bgs, bad = backgrounds_of(f, preset.size, bands, pixel_scale)
        scales.update(round(b.pixel_scale, 4) for b in bgs)
        skipped += bad
        for bg in bgs:
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(*key, len(images))))
            try:
                lensed, _, lab = inject_lens(rng, bg, preset, priors, snr_range, sources)
            except ConfigError as exc:
                skipped.append((bg.id, str(exc)))
                continue
            for img, labels, tag in ((bg.image, {**LENS_LABELS, "kind": "real"}, "real"),
                                     (lensed, lab, "lens")):
                images.append(np.asarray(img, np.float32))
                table["id"].append(f"{bg.id}:{tag}")
                table["background"].append(bg.id)
                for c in INJECT_LABELS:
                    table[c].append(labels[c])
    entry = {"path": path, "n": len(images), "skipped": [list(s) for s in skipped],
             "pixel_scales": sorted(scales)}
    if images:
        write_cube_shard(path, np.stack(images), {k: np.asarray(v) for k, v in table.items()},
                         preset.band_names, header={"PRESET": preset.name, "TASK": "lens", "SEED": seed,
                                 "INJECTED": True}, overwrite=True)
        entry["sha256"] = sha256_file(path)
        entry["counts"] = {"real": len(images) // 2, "injected": len(images) // 2}
    return entry


def simulate_injections(preset: str, backgrounds, out, seed: int = 0, *, bands=None,
                        size: int | None = None, priors: Priors | dict | None = None,
                        snr_range=SNR_RANGE, split_fractions=(0.8, 0.1, 0.1),
                        files_per_shard: int = 50, pixel_scale: float | None = None,
                        sources=None, overwrite: bool = False, progress: bool = True) -> dict:
    """Real cutouts ``backgrounds`` (files, globs, directories, URIs) with and without injected
    arcs, as a training set under ``out`` (shards + ``manifest.json``, as ``simulate``), one Ray
    task per group of files. Splits are by file (a hash of its name). Rows that cannot be used
    are listed in the manifest with the reason (``skipped``); counts add up. ``sources``: real
    galaxy stamps as the lensed sources (as ``simulate``)."""
    import pathlib

    from tqdm.auto import tqdm

    from pipeline._ray import ensure_ray
    from pipeline.io import list_inputs
    from pipeline.simulate.generate import MANIFEST, SPLITS, _versions, write_manifest
    from pipeline.simulate.instruments import get_preset
    from pipeline.simulate.priors import default_priors
    from pipeline.simulate.real_sources import read_source_stamps, sources_manifest

    p = get_preset(preset, size)
    pri = default_priors(preset) if priors is None else (
        default_priors(preset).replace(**priors) if isinstance(priors, dict) else priors)
    pri.validate(p)
    if not 0 < snr_range[0] <= snr_range[1]:
        raise ConfigError(f"arc S/N range {snr_range}: need 0 < lo <= hi")
    out = pathlib.Path(out)
    if (out / MANIFEST).exists() and not overwrite:
        raise FileExistsError(f"{out / MANIFEST}: exists (pass overwrite=True to replace it)")
    stamps, bad_stamps = read_source_stamps(sources) if sources else ((), [])
    inputs = list_inputs(backgrounds)
    if not len(inputs):
        raise ConfigError(f"no FITS files in {backgrounds}")
    by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
    for f in inputs.files:
        by_split[_split_of(f, split_fractions)].append(f)
    ray = ensure_ray()
    task = ray.remote(num_cpus=1, max_retries=2)(make_injection_shard)
    stamps_ref = ray.put(tuple(stamps))  # once in the object store, not once per task
    refs = []
    for si, split in enumerate(SPLITS):
        files = by_split[split]
        for k in range(0, len(files), files_per_shard):
            path = str(out / split / f"shard-{k // files_per_shard:05d}.fits")
            refs.append((split, task.remote(p, pri, files[k:k + files_per_shard], path, seed,
                                            (si, k // files_per_shard), snr_range, bands,
                                            pixel_scale, stamps_ref)))
    entries = []
    with tqdm(total=len(refs), unit="shard", desc=f"inject {p.name}", disable=not progress) as bar:
        for split, ref in refs:
            entries.append({**ray.get(ref), "split": split})
            bar.update(1)
    scales = sorted({s for e in entries for s in e["pixel_scales"]})
    if len(scales) > 1 and max(scales) / min(scales) > 1.01:
        raise ConfigError(f"backgrounds at several pixel scales {scales} (arcsec/px): a set "
                          "takes one; resample them or pass them as separate sets")
    splits = {}
    for split in SPLITS:
        es = [e for e in entries if e["split"] == split and e["n"]]
        splits[split] = {"n": sum(e["n"] for e in es), "shards": [
            {"path": str(pathlib.Path(e["path"]).relative_to(out)), "n": e["n"],
             "sha256": e["sha256"], "counts": e["counts"]} for e in es]}
    skipped = [s for e in entries for s in e["skipped"]]
    n = sum(s["n"] for s in splits.values())
    manifest = {
        "format": "lensray-inject/1", "preset": p.name, "task": "lens", "seed": seed, "n": n,
        "size": p.size, "bands": p.band_names, "pixel_scale": scales[0] if scales else None,
        "pixel_unit": "the backgrounds' own", "backgrounds": [str(b) for b in np.atleast_1d(backgrounds)],
        "n_background_files": len(inputs), "class_column": "kind",
        "counts": {"real": n // 2, "injected": n // 2}, "snr_range": list(snr_range),
        "split_fractions": list(split_fractions), "label_columns": list(INJECT_LABELS),
        "splits": splits, "skipped": skipped, "priors": pri.to_dict(),
        "instrument": p.to_dict(), "versions": _versions("lenstronomy")}
    if sources:
        manifest["sources"] = sources_manifest(sources, stamps, bad_stamps)
    return write_manifest(out, manifest)
