"""Ray-parallel generation of labelled cube shards, and the manifest that describes them.

Layout of an output directory::

    OUT/manifest.json
    OUT/train/shard-00000.fits ...   (split by shard: no shard holds rows of two splits)
    OUT/val/shard-00000.fits ...
    OUT/test/shard-00000.fits ...

Every shard is one Ray task (or one call on a caustics actor) seeded from
``SeedSequence(seed, spawn_key=(split, shard))``, so the train, val and test sets come from
disjoint random streams, and the same seed gives byte-identical files on any cluster.
Inside a shard, image ``i`` draws its scene and noise from ``spawn_key=(split, shard, i)``.

**Matched** substructure sets (``matched=True``) draw one lens (deflector, source, redshifts)
per group of three consecutive rows and render it once per class (no_sub, cdm, vortex), each with
its own noise (``spawn_key=(split, shard, group, class)``). Every class then has the same
distribution of lenses, as in an unmatched set, but within the set a lens's appearance carries no
information about its class, so a network cannot reduce its loss by memorising lenses: it has to
find the substructure. This is what makes the substructure task learnable from ~10^4 images.

**Matched** lens sets render every lens twice in a group of two consecutive rows, with and
without its lensed source (``scenes.unlensed``: same galaxy, neighbours, stars, PSF and noise
model; each row its own noise and artefacts), so only the arc separates the classes. A fraction
``priors.hard_negative_fraction`` of the rows are extra hard negatives (spirals, rings, close
companions, blends; single rows in the proportions of ``priors.nonlens_kinds``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections import Counter
from dataclasses import dataclass

import numpy as np

from pipeline.io.files import sha256_file
from pipeline.simulate.instruments import ConfigError, Preset, get_preset
from pipeline.simulate.priors import HARD_NEGATIVES, LENS_KIND, Priors, default_priors
from pipeline.simulate.real_sources import read_source_stamps, sources_manifest
from pipeline.simulate.scenes import TASK_LABELS, allocate, sample_scene, unlensed

TASKS = ("lens", "substructure")
BACKENDS = ("lenstronomy", "caustics")
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class SimConfig:
    """A validated simulation request (everything that determines the output bytes)."""

    preset: Preset
    task: str
    n: int
    seed: int
    priors: Priors
    shard_size: int = 1000
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    clean: bool = False
    backend: str = "lenstronomy"
    matched: bool = False
    sources: tuple = dataclasses.field(default=(), repr=False)  # real source stamps

    def class_column(self) -> str:
        return "kind" if self.task == "lens" else "substructure_class"


@dataclass(frozen=True)
class ShardSpec:
    """One shard to make: which rows, where, from which random stream."""

    split: str
    number: int
    n: int
    path: str

    @property
    def spawn_key(self) -> tuple[int, int]:
        return (SPLITS.index(self.split), self.number)


def make_config(preset: str, task: str, n: int, seed: int, *, size: int | None = None,
                priors: Priors | dict | None = None, shard_size: int = 1000,
                split_fractions=(0.8, 0.1, 0.1), clean: bool = False,
                backend: str = "lenstronomy", matched: bool = False, sources=()) -> SimConfig:
    """Check a request and return it as a SimConfig; raise ConfigError before any work.
    ``sources``: real source stamps (``real_sources.read_source_stamps``) for the lens task."""
    p = get_preset(preset, size)
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r} (available: {', '.join(TASKS)})")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r} (available: {', '.join(BACKENDS)})")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ConfigError(f"n must be a positive integer number of images, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(shard_size, (int, np.integer)) or shard_size <= 0:
        raise ConfigError(f"shard_size must be a positive integer, got {shard_size!r}")
    fr = tuple(float(x) for x in split_fractions)
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1) > 1e-6:
        raise ConfigError(f"split fractions (train, val, test) must be >= 0 and sum to 1, got {fr}")
    if priors is None:
        priors = default_priors(preset)
    elif isinstance(priors, dict):
        priors = default_priors(preset).replace(**priors)
    priors.validate(p)
    if matched and task == "substructure":
        fractions = set(priors.class_fractions(task).values())
        if len(fractions) != 1:
            raise ConfigError("matched substructure sets need equal class fractions (got "
                              f"{priors.class_fractions(task)})")
    if matched and task == "lens" and not sum(priors.nonlens_kinds.get(k, 0)
                                              for k in HARD_NEGATIVES) \
            and priors.hard_negative_fraction > 0:
        raise ConfigError("matched lens sets with hard_negative_fraction > 0 need some weight "
                          f"on the hard-negative kinds {HARD_NEGATIVES} in nonlens_kinds")
    if sources and task != "lens":
        raise ConfigError("real source stamps are for the lens task (the substructure task "
                          "keeps its smooth sources, where subhalos are what perturbs the arcs)")
    if sources and backend != "lenstronomy":
        raise ConfigError("real source stamps need the lenstronomy backend (INTERPOL light)")
    return SimConfig(p, task, int(n), int(seed), priors, int(shard_size), fr, bool(clean), backend,
                     bool(matched), tuple(sources))


def plan_shards(cfg: SimConfig, out: str | os.PathLike) -> list[ShardSpec]:
    """Rows per split (at least one per split with a non-zero fraction when n allows), chunked
    into shards of at most ``shard_size`` rows."""
    fr = np.array(cfg.split_fractions)
    counts = np.floor(fr * cfg.n).astype(int)
    wanted = fr > 0
    if cfg.n >= wanted.sum():  # give every requested split at least one row
        counts[wanted & (counts == 0)] = 1
    # the rest (rounding) goes to the largest split
    counts[int(np.argmax(fr))] += cfg.n - counts.sum()
    while counts.min() < 0:  # tiny n: take back from the largest
        counts[int(np.argmin(counts))] += 1
        counts[int(np.argmax(counts))] -= 1
    specs = []
    for split, m in zip(SPLITS, counts, strict=True):
        for k in range(math.ceil(m / cfg.shard_size)):
            rows = min(cfg.shard_size, m - k * cfg.shard_size)
            path = pathlib.Path(out) / split / f"shard-{k:05d}.fits"
            specs.append(ShardSpec(split, k, int(rows), str(path)))
    return specs


def _label_table(cfg: SimConfig, ids: list[str], labels: list[dict]) -> dict[str, np.ndarray]:
    """Columns id, ra, dec (NaN: simulated) and every label of the task, in fixed dtypes."""
    table = {"id": np.array(ids), "ra": np.full(len(ids), np.nan), "dec": np.full(len(ids), np.nan)}
    for name, default in TASK_LABELS[cfg.task].items():
        values = [row[name] for row in labels]
        if isinstance(default, str):
            table[name] = np.array(values, dtype=str)
        elif isinstance(default, int):
            table[name] = np.array(values, dtype=np.int64)
        else:
            table[name] = np.array(values, dtype=np.float64)
    return table


def shard_scenes(cfg: SimConfig, spec: ShardSpec):
    """The scenes of one shard and the per-image RNGs (continued for the noise)."""
    if cfg.matched:
        return _matched_scenes(cfg, spec)
    root = np.random.SeedSequence(cfg.seed, spawn_key=spec.spawn_key)
    kinds = allocate(spec.n, cfg.priors.class_fractions(cfg.task), np.random.default_rng(root))
    rngs = [np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(*spec.spawn_key, i)))
            for i in range(spec.n)]
    scenes = [sample_scene(rng, cfg.preset, cfg.priors, cfg.task, k, cfg.sources)
              for rng, k in zip(rngs, kinds, strict=True)]
    return scenes, rngs


def _matched_lens_scenes(cfg: SimConfig, spec: ShardSpec):
    """Pairs of consecutive rows (a lens and the same cutout without its source, in random
    order) and single hard-negative rows, groups in random order (module doc)."""
    p = cfg.priors
    order = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=spec.spawn_key))
    n_hard = int(round(p.hard_negative_fraction * spec.n))
    n_hard += (spec.n - n_hard) % 2  # pairs fill the rest
    hard = {k: p.nonlens_kinds.get(k, 0.0) for k in HARD_NEGATIVES}
    total = sum(hard.values()) or 1.0
    kinds = allocate(n_hard, {k: v / total for k, v in hard.items()}, order) if n_hard else []
    groups = [("pair", None)] * ((spec.n - n_hard) // 2) + [("hard", k) for k in kinds]
    scenes, rngs = [], []
    for g in order.permutation(len(groups)):
        key = (*spec.spawn_key, int(g))
        what, kind = groups[g]
        scene = sample_scene(np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=key)),
                             cfg.preset, p, cfg.task, LENS_KIND if what == "pair" else kind,
                             cfg.sources)
        pair = [scene, unlensed(scene)] if what == "pair" else [scene]
        for j in order.permutation(len(pair)):
            scenes.append(pair[j])
            rngs.append(np.random.default_rng(
                np.random.SeedSequence(cfg.seed, spawn_key=(*key, 1 + int(j)))))
    return scenes, rngs


def _matched_scenes(cfg: SimConfig, spec: ShardSpec):
    """Groups of consecutive rows holding one lens in every class (in random order; a shard's
    last group may be partial). A scene draws its lens first, so rows of a group that start from
    the same stream share the lens; each row's noise comes from a stream of its own."""
    if cfg.task == "lens":
        return _matched_lens_scenes(cfg, spec)
    classes = list(cfg.priors.class_fractions(cfg.task))
    order = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=spec.spawn_key))
    scenes, rngs = [], []
    for g in range(math.ceil(spec.n / len(classes))):
        key = (*spec.spawn_key, g)
        for c in order.permutation(len(classes))[: spec.n - len(scenes)]:
            lens_rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=key))
            scenes.append(sample_scene(lens_rng, cfg.preset, cfg.priors, cfg.task, classes[c]))
            rngs.append(np.random.default_rng(
                np.random.SeedSequence(cfg.seed, spawn_key=(*key, 1 + int(c)))))
    return scenes, rngs


def finish_shard(cfg: SimConfig, spec: ShardSpec, scenes, rngs, clean_imgs, arcs) -> dict:
    """Add noise, compute arc S/N, write the FITS shard; return its manifest entry."""
    from pipeline.io import write_cube_shard
    from pipeline.simulate.artefacts import add_artefacts
    from pipeline.simulate.noise import add_noise, arc_snr

    bands = cfg.preset.bands
    images = np.empty((spec.n, len(bands), cfg.preset.size, cfg.preset.size), np.float32)
    labels = []
    for i, (scene, rng) in enumerate(zip(scenes, rngs, strict=True)):
        noisy = add_noise(rng, clean_imgs[i], bands, scene.noise_corr)
        if scene.artefacts:
            add_artefacts(rng, noisy, cfg.preset)
        images[i] = noisy
        lab = dict(scene.labels)
        if scene.lens:
            lab["snr_arcs"] = arc_snr(arcs[i], clean_imgs[i], bands)
        labels.append(lab)
    prefix = f"{cfg.preset.name}-{cfg.task}-s{cfg.seed}-{spec.split}{spec.number:05d}"
    ids = [f"{prefix}-{i:05d}" for i in range(spec.n)]
    header = {"PRESET": cfg.preset.name, "TASK": cfg.task, "SEED": cfg.seed,
              "SPLIT": spec.split, "SHARD": spec.number, "BACKEND": cfg.backend,
              "BUNIT": "electron/s"}
    path = write_cube_shard(spec.path, images, _label_table(cfg, ids, labels),
                            cfg.preset.band_names, pixel_scale=cfg.preset.pixel_scale,
                            clean=clean_imgs.astype(np.float32) if cfg.clean else None,
                            header=header, overwrite=True)
    classes = Counter(lab[cfg.class_column()] for lab in labels)
    return {"path": str(path), "split": spec.split, "n": spec.n, "sha256": sha256_file(path),
            "spawn_key": list(spec.spawn_key), "counts": dict(sorted(classes.items()))}


def make_shard(cfg: SimConfig, spec: ShardSpec) -> dict:
    """Render one shard with lenstronomy and write it (the body of one Ray task)."""
    from pipeline.simulate.render import LenstronomyRenderer

    renderer = LenstronomyRenderer(cfg.preset)
    scenes, rngs = shard_scenes(cfg, spec)
    shape = (spec.n, len(cfg.preset.bands), cfg.preset.size, cfg.preset.size)
    clean, arcs = np.empty(shape), np.empty(shape)
    for i, scene in enumerate(scenes):
        r = renderer.render(scene)
        clean[i], arcs[i] = r.clean, r.arcs
    return finish_shard(cfg, spec, scenes, rngs, clean, arcs)


def _versions(backend: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = ["lensray", "lenstronomy", "numpy", "scipy", "astropy", "numba", "ray"]
    if backend == "caustics":
        names += ["caustics", "torch"]
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def build_manifest(cfg: SimConfig, entries: list[dict], out: pathlib.Path) -> dict:
    """The manifest: request, priors, instrument, versions, and per split its shards/counts."""
    entries = sorted(entries, key=lambda e: (SPLITS.index(e["split"]), e["path"]))
    splits = {}
    for split in SPLITS:
        es = [e for e in entries if e["split"] == split]
        counts: Counter = Counter()
        for e in es:
            counts.update(e["counts"])
        splits[split] = {
            "n": sum(e["n"] for e in es),
            "counts": dict(sorted(counts.items())),
            "shards": [{**{k: v for k, v in e.items() if k not in ("split", "path")},
                        "path": str(pathlib.Path(e["path"]).relative_to(out))} for e in es],
        }
    total: Counter = Counter()
    for s in splits.values():
        total.update(s["counts"])
    return {
        "format": "lensray-sim/1",
        "preset": cfg.preset.name, "task": cfg.task, "seed": cfg.seed, "n": cfg.n,
        "size": cfg.preset.size, "bands": cfg.preset.band_names, "pixel_unit": "e-/s",
        "backend": cfg.backend, "shard_size": cfg.shard_size,
        "split_fractions": list(cfg.split_fractions), "clean": cfg.clean,
        "matched": cfg.matched, "class_column": cfg.class_column(), "counts": dict(sorted(total.items())),
        "label_columns": list(TASK_LABELS[cfg.task]),
        "splits": splits,
        "priors": cfg.priors.to_dict(),
        "instrument": cfg.preset.to_dict(),
        "versions": _versions(cfg.backend),
    }


def simulate(preset: str, task: str, n: int, seed: int, out: str | os.PathLike, *,
             size: int | None = None, priors: Priors | dict | None = None,
             shard_size: int = 1000, split_fractions=(0.8, 0.1, 0.1), clean: bool = False,
             backend: str = "lenstronomy", matched: bool = False, sources=None,
             overwrite: bool = False, progress: bool = True) -> dict:
    """Simulate ``n`` labelled cutouts into cube shards under ``out``, one Ray task per shard.

    Args:
        preset: instrument preset (``hst``, ``euclid-vis``, ``ground-gri``).
        task: ``lens`` (lenses + hard negatives) or ``substructure`` (no_sub / cdm / vortex).
        n: number of images over all splits. seed: master seed (same seed, same bytes).
        out: output directory (``manifest.json`` + ``{train,val,test}/shard-*.fits``).
        size: cutout side in pixels (default 64; 101 for Lens-Finding-Challenge-like sets).
        priors: a Priors object or a dict of overrides of the preset's default priors.
        shard_size: rows per shard. split_fractions: (train, val, test) fractions of n.
        clean: also store the noiseless images (CLEAN HDU) for denoiser training.
        backend: ``lenstronomy`` (Ray CPU tasks) or ``caustics`` (PyTorch Ray actors; GPU when
            the cluster has one).
        matched: every lens rendered once per class (substructure) or with and without its
            source (lens task, plus extra hard negatives) (see module doc).
        sources: real galaxy stamps (files, globs, directories, URIs; e.g. HST cutouts) as the
            lens task's source galaxies instead of clumpy Sersics (``pipeline.simulate.real_sources``).
        overwrite: replace an existing output directory's manifest and shards.
        progress: tqdm bar over finished shards.

    Returns:
        The manifest (also written to ``out/manifest.json``).
    """
    stamps, skipped = read_source_stamps(sources) if sources else ((), [])
    cfg = make_config(preset, task, n, seed, size=size, priors=priors, shard_size=shard_size,
                      split_fractions=split_fractions, clean=clean, backend=backend,
                      matched=matched, sources=stamps)
    out = pathlib.Path(out)
    if (out / MANIFEST).exists() and not overwrite:
        raise FileExistsError(f"{out / MANIFEST}: exists (pass overwrite=True to replace it)")
    specs = plan_shards(cfg, out)
    if overwrite:
        for split in SPLITS:
            for old in (out / split).glob("shard-*.fits") if (out / split).exists() else []:
                old.unlink()
    entries = _run(cfg, specs, progress)
    manifest = build_manifest(cfg, entries, out)
    if sources:
        manifest["sources"] = sources_manifest(sources, stamps, skipped)
    return write_manifest(out, manifest)


def write_manifest(out: pathlib.Path, manifest: dict) -> dict:
    """Write ``out/manifest.json`` atomically (a set is complete once its manifest exists)."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, default=_jsonable) + "\n")
    os.replace(tmp, out / MANIFEST)
    return manifest


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


class CausticsShardMaker:
    """A Ray actor body: keeps one caustics renderer (and its device) alive across shards."""

    def __init__(self, preset: Preset):
        from pipeline.simulate.caustics_backend import CausticsRenderer

        self.renderer = CausticsRenderer(preset)

    def make_shard(self, cfg: SimConfig, spec: ShardSpec) -> dict:
        scenes, rngs = shard_scenes(cfg, spec)
        clean, arcs = self.renderer.render_many(scenes)
        return finish_shard(cfg, spec, scenes, rngs, clean, arcs)


def _submit_caustics(cfg: SimConfig, specs: list[ShardSpec]):
    """Start caustics actors (one GPU each when the cluster has GPUs) and submit every shard.

    Returns (object refs, actors); the caller kills the actors when the refs are done.
    """
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        n_actors, opts = min(gpus, len(specs)), {"num_gpus": 1, "num_cpus": 1}
    else:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n_actors, opts = max(1, min(cpus // 2, len(specs))), {"num_cpus": 1}
    actor_cls = ray.remote(**opts)(CausticsShardMaker)
    actors = [actor_cls.remote(cfg.preset) for _ in range(n_actors)]
    cfg_ref = ray.put(cfg)
    refs = [actors[i % n_actors].make_shard.remote(cfg_ref, s) for i, s in enumerate(specs)]
    return refs, actors


def _run(cfg: SimConfig, specs: list[ShardSpec], progress: bool) -> list[dict]:
    """Make every shard on Ray, with a progress bar over finished shards."""
    from tqdm.auto import tqdm

    from pipeline._ray import ensure_ray

    ray = ensure_ray()
    actors = []
    if cfg.backend == "caustics":
        pending, actors = _submit_caustics(cfg, specs)
    else:
        task = ray.remote(num_cpus=1, max_retries=2)(make_shard)
        cfg_ref = ray.put(cfg)
        pending = [task.remote(cfg_ref, s) for s in specs]
    entries = []
    try:
        with tqdm(total=len(specs), unit="shard", desc=f"simulate {cfg.preset.name}/{cfg.task}",
                  disable=not progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                entries += ray.get(done)
                bar.update(len(done))
    finally:
        for actor in actors:
            ray.kill(actor)
    return entries


def read_manifest(out: str | os.PathLike) -> dict:
    """The manifest of a simulated set."""
    path = pathlib.Path(out) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: no manifest (is this a `lensray simulate` output?)")
    return json.loads(path.read_text())


def shard_paths(out: str | os.PathLike, split: str) -> list[str]:
    """Paths of the shards of one split (``train``, ``val`` or ``test``), from the manifest."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (available: {', '.join(SPLITS)})")
    m = read_manifest(out)
    return [str(pathlib.Path(out) / s["path"]) for s in m["splits"][split]["shards"]]
