"""A picture of a simulated set: a few examples per class (noisy, and noiseless when stored)."""

from __future__ import annotations

import os
import pathlib

import numpy as np

from pipeline.simulate.generate import read_manifest, shard_paths


def _display(img: np.ndarray) -> np.ndarray:
    """(B, H, W) -> (H, W) or (H, W, 3) scaled with an asinh stretch for viewing."""
    img = np.asarray(img, dtype=np.float64)
    if img.shape[0] >= 3:  # g, r, i -> b, g, r channels
        img = img[[2, 1, 0]]
    sky = np.median(img, axis=(1, 2), keepdims=True)
    mad = np.median(np.abs(img - sky), axis=(1, 2), keepdims=True) * 1.4826 + 1e-12
    x = np.arcsinh((img - sky) / (3 * mad)) / np.arcsinh(300)
    x = np.clip(x, 0, 1)
    return x[0] if x.shape[0] == 1 else np.moveaxis(x, 0, -1)


def save_gallery(out_dir: str | os.PathLike, png: str | os.PathLike, per_class: int = 4,
                 split: str = "train") -> pathlib.Path:
    """Save a grid (rows = classes, columns = examples) of a simulated set to ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.io import read_fits_file

    m = read_manifest(out_dir)
    col = m["class_column"]
    examples: dict[str, list] = {}
    for path in shard_paths(out_dir, split):
        rows = read_fits_file(path)
        for i, cls in enumerate(rows[col]):
            ex = examples.setdefault(str(cls), [])
            if len(ex) < per_class:
                ex.append((rows["image"][i], {n: v[i] for n, v in rows.items()}))
    classes = sorted(examples)
    fig, axes = plt.subplots(len(classes), per_class, figsize=(2 * per_class, 2 * len(classes)),
                             squeeze=False)
    for r, cls in enumerate(classes):
        for c in range(per_class):
            ax = axes[r, c]
            ax.set_axis_off()
            if c < len(examples[cls]):
                img, lab = examples[cls][c]
                ax.imshow(_display(img), origin="lower", cmap="gray", interpolation="nearest")
                txt = cls
                if float(lab.get("theta_e", 0) or 0) > 0:
                    txt += f"\nθE={lab['theta_e']:.2f}\" S/N={lab['snr_arcs']:.0f}"
                ax.set_title(txt, fontsize=7)
    fig.suptitle(f"{m['preset']} / {m['task']} (seed {m['seed']}, {m['size']} px)", fontsize=9)
    return _save(fig, png)


def save_residual_gallery(png: str | os.PathLike, preset_name: str = "euclid-vis", per_class: int = 3,
                          seed: int = 0) -> pathlib.Path:
    """Substructure as residuals: for cdm and vortex lenses, the noisy image, the same lens
    without substructure, and (with - without) / noise sigma."""
    import dataclasses

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.simulate import default_priors, get_preset
    from pipeline.simulate.noise import add_noise, noise_sigma
    from pipeline.simulate.render import LenstronomyRenderer
    from pipeline.simulate.scenes import sample_scene

    preset, priors = get_preset(preset_name), default_priors(preset_name)
    r = LenstronomyRenderer(preset)
    rows = [(c, i) for c in ("cdm", "vortex") for i in range(per_class)]
    fig, axes = plt.subplots(len(rows), 3, figsize=(6.3, 2.1 * len(rows)), squeeze=False)
    for k, (cls, _) in enumerate(rows):
        rng = np.random.default_rng([seed, k])
        scene = sample_scene(rng, preset, priors, "substructure", cls)
        smooth = dataclasses.replace(scene, point_masses=None, lens=scene.lens[:2])
        a, b = r.render(scene).clean, r.render(smooth).clean
        noisy = add_noise(rng, a, preset.bands)
        resid = ((a - b) / noise_sigma(b, preset.bands))[0]
        lab = scene.labels
        info = (f"Σsub={lab['sigma_sub']:.2f} N={lab['n_subhalos']}" if cls == "cdm" else
                f"log m_a={lab['log10_m_axion']:.1f} L={lab['vortex_length']:.2f}\"")
        for ax, img, title in zip(axes[k], (_display(noisy), _display(b), resid),
                                  (f"{cls}: image", "same lens, no substructure",
                                   f"residual/σ  {info}"), strict=True):
            ax.set_axis_off()
            if img is resid:
                lim = max(5.0, float(np.percentile(np.abs(resid), 99.5)))
                ax.imshow(img, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
            else:
                ax.imshow(img, origin="lower", cmap="gray", interpolation="nearest")
            ax.set_title(title, fontsize=7)
    return _save(fig, png)


def save_field_gallery(png: str | os.PathLike, preset_name: str = "euclid-vis", per_row: int = 4,
                       seed: int = 0) -> pathlib.Path:
    """The lens task's priors at a glance: rows of main-galaxy types, surroundings, hard
    negatives and matched pairs (a lens beside the same cutout without its source), each as
    observed (its own PSF, correlated noise and artefacts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.simulate import default_priors, get_preset
    from pipeline.simulate.artefacts import add_artefacts
    from pipeline.simulate.noise import add_noise
    from pipeline.simulate.priors import HARD_NEGATIVES
    from pipeline.simulate.render import LenstronomyRenderer
    from pipeline.simulate.scenes import sample_scene, unlensed

    preset, priors = get_preset(preset_name), default_priors(preset_name)
    r = LenstronomyRenderer(preset)
    rng = np.random.default_rng(seed)
    rows = {"one Sérsic (n 0.5-6)": lambda s: s.labels["galaxy_type"] == "sersic",
            "bulge + disk": lambda s: s.labels["galaxy_type"] == "disk",
            "+ bar": lambda s: "bar" in s.labels["galaxy_type"],
            "+ spiral arms": lambda s: "arms" in s.labels["galaxy_type"],
            "+ dust lane": lambda s: "dust" in s.labels["galaxy_type"],
            "neighbours": lambda s: s.labels["n_neighbours"] >= 2,
            "stars": lambda s: s.labels["n_stars"] > 0}
    picked: dict[str, list] = {k: [] for k in rows}
    for _ in range(2000):
        s = sample_scene(rng, preset, priors, "lens", "galaxy")
        for name, want in rows.items():
            if len(picked[name]) < per_row and want(s):
                picked[name].append((s, ""))
                break
        if all(len(v) == per_row for v in picked.values()):
            break
    picked["hard negatives"] = [(sample_scene(rng, preset, priors, "lens", k), k)
                                for k in HARD_NEGATIVES[:per_row]]
    for i in range(2):
        pairs = []
        for _ in range(per_row // 2):
            s = sample_scene(rng, preset, priors, "lens", "lens")
            pairs += [(s, f"lens θE={s.labels['theta_e']:.1f}\""), (unlensed(s), "its twin")]
        picked[f"matched pairs {i + 1}"] = pairs
    fig, axes = plt.subplots(len(picked), per_row, figsize=(1.8 * per_row, 1.9 * len(picked)),
                             squeeze=False)
    for k, (name, scenes) in enumerate(picked.items()):
        for c, ax in enumerate(axes[k]):
            ax.set_axis_off()
            if c >= len(scenes):
                continue
            scene, title = scenes[c]
            img = add_noise(rng, r.render(scene).clean, preset.bands, scene.noise_corr)
            add_artefacts(rng, img, preset)
            ax.imshow(_display(img), origin="lower", cmap="gray", interpolation="nearest")
            ax.set_title(title or (name if c == 0 else scene.labels["galaxy_type"]), fontsize=7)
    fig.suptitle(f"{preset.name}: the lens task's galaxy field (pipeline/simulate/priors.py)",
                 fontsize=9)
    return _save(fig, png)


def _save(fig, png: str | os.PathLike) -> pathlib.Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    png = pathlib.Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
