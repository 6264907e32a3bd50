"""Real-sky benchmark: lens finders side by side on real galaxies, real lenses and simulations.

For every lens finder given (``NAME=CHECKPOINT``; ``shipped`` is the package's weights) one run
prints, side by side:

- **SDSS flag rate**: the fraction of real SDSS galaxies (Galaxy Zoo 2; none is a lens at the
  ~1:1000 rate of the sky) scored p_lens > 0.5 and > 0.9. Single-band models see the mean of r
  and i (a VIS-like grey view), g,r,i models the three bands, at the model's pixel scale
  (``benchmarks/make_sdss_views.py`` says how the view is made). These images never enter
  training. ``--sdss`` takes the committed 500-galaxy view or the folder of the 2,000 JPEGs;
- **real fixtures**: p_lens of every observed cutout bundled in ``tests/data/real`` (3 lenses,
  5 non-lenses), each resampled to the model's pixel scale (``fit_cutouts``), and the AUC of the
  real lenses against the real non-lenses (fixtures + SDSS galaxies); also p_lens of three
  lenses of another simulator (DeepLense, ``tests/data/sim/deeplense``), never in a real AUC;
- **simulated AUC** (and TPR0) on the held-out TEST split of each ``--sim NAME=DIR``, the SDSS
  flag rate at the threshold that keeps 75% of that split's lenses (a fixed completeness, so a
  model that merely scores everything lower does not look better), and the
  classical moment baseline's AUC on it (``pipeline.train.shortcut``), which says how much of
  the set a shortcut can separate. ``--sim-limit N`` scores the same N rows of each split (the
  first by id) for every model: the TEST splits dominate the run's time.

    python benchmarks/real_sky.py --model shipped --model new=runs/lens-vis \\
        --sim today=data/euclid-lens-20k --sim matched=data/vis-lens-matched \\
        --sdss /path/to/sdss_gz2 --json benchmarks/results/real_sky.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO / "tests/data"
SDSS_VIEW = REPO / "tests/data/real_backgrounds/sdss_gz2_gri64.fits.gz"

# Every observed fixture: (label, name, {band view: [(file, band, hdu, plane) per model band]}),
# files under tests/data; ``band`` picks a named band (Euclid's *_FLUX extensions), ``hdu`` an
# HDU of a multi-HDU file, ``plane`` a band of a cube. g,r,i views use the bands each file has
# nearest to g, r, i (Euclid Q1 has HSC g, MegaCam r and HSC z: z stands in for i, a redder band
# than the model was trained on).
_Q1 = "real/euclid/EUCLJ{}.fits"
FIXTURES = [
    *[("lens", f"EUCLJ{q}", {"VIS": [(_Q1.format(q), "VIS", None, None)],
                              "gri": [(_Q1.format(q), b, None, None)
                                      for b in ("HSC_G", "MEGACAM_R", "HSC_Z")]})
      for q in ("174517.55+655612.5", "174752.17+660743.0")],
    ("lens", "ERO_ID_37174", {"VIS": [("real/euclid/ERO_ID_37174.fits", None, None, None)]}),
    ("non-lens", "Cut_HSC", {"VIS": [("real/hsc/Cut_HSC.fits", None, None, 2)],
                             "gri": [("real/hsc/Cut_HSC.fits", None, None, p) for p in range(3)]}),
    ("non-lens", "KiDS-test", {"gri": [(f"real_backgrounds/kids/KiDS-test_{b}.fits", None, None,
                                        None) for b in "gri"]}),
    ("non-lens", "Cut_HST_COSMOS", {"VIS": [("real/hst/Cut_HST_COSMOS.fits", None, None, None)]}),
    *[("non-lens", f"AEGIS_F814w[{h}]",
       {"VIS": [("real/hst/AEGIS_F814w_images_01.fits", None, h, None)]}) for h in range(3)],
]
# the AEGIS stamps carry no WCS: 0.03"/px from their catalogue
PIXEL_SCALE = {"real/hst/AEGIS_F814w_images_01.fits": 0.03}
# Another simulator's lenses (tests/data/README.md): noiseless rings, no lens light, no pixel
# scale stored. Scored in single-band views at lenstronomy's Euclid 0.101"/px with white noise
# at a peak S/N of 25 (DeepLense's own level), seeded; listed, never in a real-sky AUC.
DEEPLENSE = ("nosub", "cdm", "axion")
DEEPLENSE_SCALE, DEEPLENSE_PEAK_SNR = 0.101, 25.0
SIM_TPR = 0.75  # the completeness on simulated lenses at which SDSS flags are also counted


def view_of(config: dict) -> str:
    """Which band view a checkpoint takes: ``VIS`` for single-band models, ``gri`` for 3 bands."""
    bands = [b.lower() for b in config["bands"]]
    if len(bands) == 1:
        return "VIS"
    if bands == ["g", "r", "i"]:
        return "gri"
    raise SystemExit(f"real_sky: no real view for bands {config['bands']}")


def sdss_images(source: pathlib.Path) -> dict:
    """SDSS galaxies in each band view ({"VIS": (N, 1, 64, 64), "gri": (N, 3, 64, 64)}) and
    their Galaxy Zoo 2 class ("classes": spirals / non_spirals; "unknown" in a view file
    without them)."""
    if source.is_dir():
        sys.path.insert(0, str(pathlib.Path(__file__).parent))
        from make_sdss_views import views

        gri, table = views(source)
    else:
        from astropy.io import fits

        with fits.open(source) as hdul:
            gri = np.asarray(hdul["CUTOUTS"].data, np.float32)
            cat = hdul["CATALOG"].data if "CATALOG" in hdul else None
            table = {"gz2_class": (np.char.strip(cat["gz2_class"].astype(str))
                                   if cat is not None and "gz2_class" in cat.names
                                   else np.full(len(gri), "unknown"))}
    return {"gri": gri, "VIS": gri[:, 1:].mean(1, keepdims=True),
            "classes": np.asarray(table["gz2_class"])}


def fixture_images(config: dict) -> list[tuple[str, str, np.ndarray]]:
    """(label, name, image fitted to the model) for each fixture the model's view covers."""
    from pipeline.models import fit_cutouts
    from pipeline.train.evaluate import load_sky_cutout

    view = view_of(config)
    out = []
    for label, name, views in FIXTURES:
        if view not in views:
            continue
        planes = [load_sky_cutout(DATA / f, hdu, plane, PIXEL_SCALE.get(f),
                                  bands=[band] if band else None)
                  for f, band, hdu, plane in views[view]]
        x = fit_cutouts(np.stack([p for p, _ in planes])[None], planes[0][1], config)
        out.append((label, name, x))
    if view == "VIS":
        for i, name in enumerate(DEEPLENSE):
            ring = np.load(DATA / f"sim/deeplense/{name}.npy").astype(np.float32)
            noisy = ring + np.random.default_rng(i).normal(0, ring.max() / DEEPLENSE_PEAK_SNR,
                                                           ring.shape).astype(np.float32)
            out.append(("sim lens", f"DeepLense {name}",
                        fit_cutouts(noisy[None, None], DEEPLENSE_SCALE, config)))
    return out


def score(name: str, ckpt: str, sdss: dict, sims: dict, sim_limit: int | None = None) -> dict:
    from pipeline.metrics import lens_metrics, roc_auc
    from pipeline.models import pretrained_dir
    from pipeline.simulate.generate import read_manifest
    from pipeline.stages import LensDetect
    from pipeline.train.evaluate import collect

    # ``A+B+...``: an ensemble, scored as the cascade's stage scores it (mean p_lens)
    stage = LensDetect(checkpoint=[pretrained_dir("lens-detect") if c == "shipped" else c
                                   for c in ckpt.split("+")])
    config = stage.config

    def p_lens(images):
        return stage.predict(images)["p_lens"]

    view = view_of(config)
    p_sdss = p_lens(sdss[view])
    fixtures = [(label, fname, float(p_lens(x)[0])) for label, fname, x in fixture_images(config)]
    lens = np.array([p for lab, _, p in fixtures if lab == "lens"])
    non = np.array([p for lab, _, p in fixtures if lab == "non-lens"])
    row = {"model": name, "checkpoint": ckpt, "view": view, "n_sdss": int(len(p_sdss)),
           "sdss_flag_0.5": float((p_sdss > 0.5).mean()), "sdss_flag_0.9": float((p_sdss > 0.9).mean()),
           # which galaxies it flags: spiral arms look more like arcs than smooth ellipticals
           "sdss_flag_0.5_by_class": {c: float((p_sdss[sdss["classes"] == c] > 0.5).mean())
                                      for c in sorted(set(sdss["classes"]))},
           "fixtures": [{"label": lab, "file": f, "p_lens": p} for lab, f, p in fixtures]}
    if len(lens) and len(non):
        row["real_auc_fixtures"] = roc_auc(np.r_[np.ones(len(lens)), np.zeros(len(non))],
                                           np.r_[lens, non])
    if len(lens):
        y = np.r_[np.ones(len(lens)), np.zeros(len(non) + len(p_sdss))]
        row["real_auc_with_sdss"] = roc_auc(y, np.r_[lens, non, p_sdss])
        row["real_lenses_above_p95_nonlens"] = float(
            (lens > np.percentile(np.r_[non, p_sdss], 95)).mean())
    for sim, data_dir in sims.items():
        if read_manifest(data_dir)["preset"] != config["trained"]["preset"]:
            continue  # a model is scored on its own survey's sims
        data = collect(data_dir, "test", config, extra_columns=("id",))
        rows = np.argsort(data["id"])[:sim_limit]  # the same rows for every model
        p_sim, is_lens = p_lens(data["image"][rows]), data["is_lens"][rows]
        m = lens_metrics(is_lens, p_sim)
        row[f"sim_auc[{sim}]"], row[f"sim_tpr0[{sim}]"] = m["auc"], m["tpr0"]
        row[f"sim_n[{sim}]"] = int(len(rows))
        # at a fixed completeness: the threshold that keeps SIM_TPR of the simulated lenses,
        # and the SDSS galaxies above it (a recalibrated model cannot look better here)
        cut = float(np.quantile(p_sim[is_lens == 1], 1 - SIM_TPR))
        row[f"sdss_flag_at_sim_tpr[{sim}]"] = float((p_sdss > cut).mean())
    return row


def shortcut_rows(sims: dict) -> list[dict]:
    """The classical moment baseline (logistic regression on image moments) on each sim set."""
    from pipeline.train.shortcut import shortcut_auc

    return [{"sim": sim, **shortcut_auc(d)} for sim, d in sims.items()]


def markdown(rows: list[dict], shortcuts: list[dict]) -> str:
    sims = sorted({k[len("sim_auc["):-1] for r in rows for k in r if k.startswith("sim_auc[")})
    head = ["model", "view", "SDSS > 0.5", "SDSS > 0.9", "SDSS > 0.5 spirals / non-spirals",
            "real AUC (fixtures)",
            "real AUC (+SDSS)", "lenses > p95 non-lens",
            *[f"sim AUC / TPR0 {s} / SDSS flagged at sim TPR {SIM_TPR}" for s in sims]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)

    for r in rows:
        by = r["sdss_flag_0.5_by_class"]
        cells = [r["model"], r["view"], f(r["sdss_flag_0.5"], "{:.1%}"), f(r["sdss_flag_0.9"], "{:.1%}"),
                 " / ".join(f(by.get(c), "{:.1%}") for c in ("spirals", "non_spirals")),
                 f(r.get("real_auc_fixtures")), f(r.get("real_auc_with_sdss")),
                 f(r.get("real_lenses_above_p95_nonlens"), "{:.0%}")]
        cells += [f"{f(r.get(f'sim_auc[{s}]'), '{:.4f}')} / {f(r.get(f'sim_tpr0[{s}]'))} / "
                  f"{f(r.get(f'sdss_flag_at_sim_tpr[{s}]'), '{:.1%}')} (n={r.get(f'sim_n[{s}]', '-')})"
                  for s in sims]
        lines.append("| " + " | ".join(cells) + " |")
    fx = rows
    if fx:
        names = [x["file"] + f" ({x['label']})" for x in max(fx, key=lambda r: len(r["fixtures"]))["fixtures"]]
        lines += ["", "| fixture | " + " | ".join(r["model"] for r in fx) + " |",
                  "|" + "---|" * (len(fx) + 1)]
        for n in names:
            vals = []
            for r in fx:
                p = {x["file"] + f" ({x['label']})": x["p_lens"] for x in r["fixtures"]}.get(n)
                vals.append(f(p))
            lines.append(f"| {n} | " + " | ".join(vals) + " |")
    if shortcuts:
        lines += ["", "| sim set | classical moment baseline AUC (held-out) | n train / test |",
                  "|---|---|---|"]
        lines += [f"| {s['sim']} | {s['auc']:.3f} | {s['n_train']} / {s['n_test']} |"
                  for s in shortcuts]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=[], metavar="NAME=CHECKPOINT",
                    help="a lens finder (repeatable); 'shipped' alone means the package's; "
                         "CKPT_A+CKPT_B: the ensemble of both (mean p_lens)")
    ap.add_argument("--sim", action="append", default=[], metavar="NAME=DATA_DIR",
                    help="a simulated set whose TEST split is scored (repeatable)")
    ap.add_argument("--sim-limit", type=int, default=None, metavar="N",
                    help="score at most N rows of each TEST split (the same rows for every model)")
    ap.add_argument("--sdss", type=pathlib.Path, default=SDSS_VIEW,
                    help="the SDSS view file (default: the committed 500) or the GZ2 JPEG folder")
    ap.add_argument("--no-shortcut", action="store_true", help="skip the classical baseline")
    ap.add_argument("--json", type=pathlib.Path, default=None, help="also write raw results here")
    args = ap.parse_args()

    from pipeline._ray import ensure_ray

    ensure_ray(log_to_driver=False)
    models = dict(m.partition("=")[::2] if "=" in m else (m, m) for m in args.model or ["shipped"])
    sims = dict(s.split("=", 1) for s in args.sim)
    sdss = sdss_images(args.sdss)
    where = (str(args.sdss.resolve().relative_to(REPO)) if args.sdss.resolve().is_relative_to(REPO)
             else f"{args.sdss.name}/ JPEGs, benchmarks/make_sdss_views.py")
    rows = [{**score(name, ckpt, sdss, sims, args.sim_limit), "sdss": where} for name, ckpt in models.items()]
    shortcuts = [] if args.no_shortcut else shortcut_rows(sims)
    print(markdown(rows, shortcuts))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"models": rows, "shortcut": shortcuts}, indent=1) + "\n")


if __name__ == "__main__":
    main()
