"""The SHIPPED weights: present, loadable, documented, and good on fresh held-out simulations
(different seeds from every training set)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.models import STAGES, WEIGHTS_DIR, load_pretrained, predict
from pipeline.train.metrics import denoise_metrics, multiclass_auc, roc_auc


@pytest.mark.parametrize("stage", STAGES)
def test_shipped_weights_load_and_are_documented(stage):
    d = WEIGHTS_DIR / stage
    model, cfg = load_pretrained(stage)
    assert cfg["task"] == stage
    assert (d / "model.safetensors").stat().st_size <= 20e6
    card = (d / "MODEL_CARD.md").read_text()
    for needed in ("Held-out TEST metrics", "recipe", "seed", "sha256", cfg["trained"]["preset"]):
        assert needed in card, needed
    assert cfg["metrics"]["split"] == "test"
    assert json.loads((d / "config.json").read_text()) == cfg


def _fresh(ray_local, tmp_path_factory, task, n, seed, clean=False):
    from pipeline.simulate import simulate

    out = tmp_path_factory.mktemp(f"fresh-{task}")
    simulate("euclid-vis", task, n=n, seed=seed, out=out, shard_size=n, clean=clean,
             split_fractions=(0.0, 0.0, 1.0), progress=False)
    return out


@pytest.mark.timeout(300)
def test_shipped_lens_finder_beats_chance_on_fresh_sims(ray_local, tmp_path_factory):
    from pipeline.train.evaluate import collect

    model, cfg = load_pretrained("lens-detect")
    data = collect(_fresh(ray_local, tmp_path_factory, "lens", 200, 424242), "test", cfg)
    p = predict(model, cfg, data["image"])["p_lens"]
    assert roc_auc(data["is_lens"], p) > 0.9


@pytest.mark.timeout(300)
def test_shipped_substructure_and_denoiser_on_fresh_sims(ray_local, tmp_path_factory):
    from pipeline.train.evaluate import collect

    model, cfg = load_pretrained("substructure")
    data = collect(_fresh(ray_local, tmp_path_factory, "substructure", 90, 515151), "test", cfg)
    p = predict(model, cfg, data["image"])
    probs = np.stack([p[f"p_{c}"] for c in cfg["classes"]], 1)
    assert multiclass_auc(data["substructure"], probs, cfg["classes"])["auc_macro"] > 0.6

    dn, dn_cfg = load_pretrained("denoise")
    lens = collect(_fresh(ray_local, tmp_path_factory, "lens", 40, 616161, clean=True), "test",
                   dn_cfg)
    out = predict(dn, dn_cfg, lens["image"])["image"]
    m = denoise_metrics(lens["clean"], out, lens["image"])
    assert m["psnr"] > m["psnr_input"] + 1.0  # the denoiser removes noise
