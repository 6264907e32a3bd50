"""The shared Ray Train loop and Ray Tune, end to end on a tiny freshly simulated set.

Real lenstronomy data, real Ray Data reading of FITS shards, real TorchTrainer/Tuner runs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.models import load_checkpoint, predict

TINY_D4 = {"widths": [8, 16, 32], "blocks": 1}


@pytest.fixture(scope="module")
def tiny_lens_data(ray_local, tmp_path_factory):
    from pipeline.simulate import simulate

    out = tmp_path_factory.mktemp("sim") / "lens"
    simulate("euclid-vis", "lens", n=200, seed=7, out=out, size=48, shard_size=50,
             split_fractions=(0.6, 0.2, 0.2), progress=False)
    return out


@pytest.mark.timeout(300)
def test_train_loop_learns_and_checkpoint_round_trips(tiny_lens_data, tmp_path, capsys):
    from pipeline.train.evaluate import collect
    from pipeline.train.loop import train

    out = train("lens-detect", tiny_lens_data, tmp_path / "ck", "d4_resnet", epochs=4,
                batch_size=16, lr=3e-3, patience=10, seed=3, model_overrides=TINY_D4,
                name="test-train")
    cfg = json.loads((out / "config.json").read_text())
    hist = cfg["trained"]["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
    # every epoch is reported on the driver, once, with the metric that picks the best
    printed = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[lensray] epoch")]
    assert [ln.split(":")[0] for ln in printed] == [f"[lensray] epoch {e}/4" for e in (1, 2, 3, 4)]
    assert f"val_loss {hist[3]['val_loss']:.4f} val_auc" in printed[3]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]  # it learns
    # exported = the stage-loadable thing: safetensors + config, scored on the TEST split
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json"}
    assert cfg["metrics"]["split"] == "test" and 0 <= cfg["metrics"]["auc"] <= 1
    assert cfg["model_kwargs"]["widths"] == TINY_D4["widths"] and cfg["bands"] == ["VIS"]
    assert cfg["size"] == 48 and cfg["pixel_scale"] == pytest.approx(0.101)
    # round trip: the exported weights give the same scores as the epoch checkpoint Ray stored
    ray_ckpts = sorted(d for d in (tmp_path / "ck" / "ray_runs" / "test-train").glob("checkpoint_*")
                       if d.is_dir())
    assert ray_ckpts
    data = collect(tiny_lens_data, "test", cfg)
    m1, c1 = load_checkpoint(out)
    best_epoch = cfg["epoch"]
    match = [d for d in ray_ckpts
             if json.loads((d / "config.json").read_text())["epoch"] == best_epoch]
    m2, c2 = load_checkpoint(match[0])
    p1 = predict(m1, c1, data["image"])["p_lens"]
    p2 = predict(m2, c2, data["image"])["p_lens"]
    np.testing.assert_array_equal(p1, p2)
    assert len(p1) == len(data["is_lens"]) > 0
    # shipped with its card: one history row per epoch, no adaptation columns for a plain run
    from pipeline.train.card import ship

    card = (ship(out, "lens-detect", dest=tmp_path / "shipped") / "MODEL_CARD.md").read_text()
    assert "| epoch | train loss | val loss |\n" in card and "domain" not in card
    assert f"| 3 | {hist[3]['train_loss']:.4f} | {hist[3]['val_loss']:.4f} |" in card

    # fine-tuning starts from the trained weights: with lr 0 the learned weights come back
    # unchanged (only batch-norm running statistics move), not a fresh initialisation
    from safetensors.torch import load_file

    ft = train("lens-detect", tiny_lens_data, tmp_path / "ft", "d4_resnet", epochs=1,
               batch_size=16, lr=0.0, seed=4, model_overrides=TINY_D4, init=str(out),
               name="test-finetune")
    w0, w1 = load_file(out / "model.safetensors"), load_file(ft / "model.safetensors")
    learned = [k for k in w0 if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert learned and all(np.array_equal(w0[k].numpy(), w1[k].numpy()) for k in learned)
    with pytest.raises(ValueError, match="cannot start"):  # another network shape: refused
        train("lens-detect", tiny_lens_data, tmp_path / "bad", "d4_resnet", epochs=1,
              model_overrides={"widths": [4, 8, 16], "blocks": 1}, init=str(out))
    # a network built from this one (the lens-light residual added) trains from it and learns
    # to use its new input channel, which starts at zero
    res = train("lens-detect", tiny_lens_data, tmp_path / "res", "residual_d4_resnet", epochs=1,
                batch_size=16, lr=3e-3, seed=4, model_overrides=TINY_D4, init=str(out),
                name="test-residual")
    stem = load_file(res / "model.safetensors")["stem.0.weight"]
    assert stem.shape[1] == 2 and stem[:, 1].abs().sum() > 0
    m3, c3 = load_checkpoint(res)
    assert np.isfinite(predict(m3, c3, data["image"])["p_lens"]).all()


def test_bad_configs_fail_before_any_work(tiny_lens_data, tmp_path):
    from pipeline.train.loop import make_config

    with pytest.raises(ValueError, match="does not serve stage"):
        make_config("denoise", tiny_lens_data, "lastro_cnn")
    with pytest.raises(ValueError, match="unknown training options"):
        make_config("lens-detect", tiny_lens_data, epochz=3)
    with pytest.raises(FileNotFoundError, match="no FITS shards for split 'train'"):
        make_config("lens-detect", tmp_path)
    with pytest.raises(ValueError, match="precision must be one of"):
        make_config("lens-detect", tiny_lens_data, precision="fp16")
    with pytest.raises(ValueError, match="train_classes \\['vortex'\\]: stage 'lens-detect'"):
        make_config("lens-detect", tiny_lens_data, train_classes=["vortex"])
    with pytest.raises(ValueError, match="adapts classifiers; stage 'denoise'"):
        make_config("denoise", tiny_lens_data, adapt=["survey/*.fits"])
    with pytest.raises(ValueError, match="adapt_weight must be > 0"):
        make_config("lens-detect", tiny_lens_data, adapt=["survey/*.fits"], adapt_weight=0)
    with pytest.raises(ValueError, match="adapt_align must be 'all' or 'negatives'"):
        make_config("lens-detect", tiny_lens_data, adapt=["survey/*.fits"], adapt_align="lens")


@pytest.mark.timeout(400)
def test_tune_two_trials_exports_best(tiny_lens_data, tmp_path):
    from ray import tune

    from pipeline.train.tune import search_space, tune_stage

    assert {"lr", "weight_decay", "model.widths"} <= set(search_space("d4_resnet"))
    out, trials = tune_stage(
        "lens-detect", tiny_lens_data, tmp_path / "tuned", "d4_resnet", num_samples=1,
        max_concurrent=2, epochs=1, batch_size=16, model_overrides=TINY_D4,
        space={"lr": tune.grid_search([1e-3, 3e-3])}, name="test-tune")  # 2 trials
    assert len(trials) == 2 and all("val_loss" in t for t in trials), trials
    cfg = json.loads((out / "config.json").read_text())
    best = min(t["val_loss"] for t in trials)
    assert cfg["trained"]["tune"]["best"] == pytest.approx(best)
    assert cfg["lr"] in (1e-3, 3e-3) and cfg["metrics"]["split"] == "test"
    load_checkpoint(out)


@pytest.mark.timeout(400)
def test_two_tower_regressor_trains_on_its_classes_and_keeps_the_classifier(ray_local, tmp_path):
    """The shipped substructure recipe in small: a classifier, then a two_tower whose
    regressor tower is fine-tuned (bf16, vortex rows only) while the classifier is frozen."""
    from safetensors.torch import load_file

    from pipeline.simulate import simulate
    from pipeline.train.evaluate import collect
    from pipeline.train.loop import train

    data = simulate("euclid-vis", "substructure", n=150, seed=11, out=tmp_path / "sub", size=48,
                    shard_size=50, split_fractions=(0.6, 0.2, 0.2), matched=True, progress=False)
    cls = train("substructure", tmp_path / "sub", tmp_path / "cls", "d4_resnet", epochs=1,
                batch_size=16, seed=1, model_overrides=TINY_D4, name="test-cls")
    tt = train("substructure", tmp_path / "sub", tmp_path / "tt", "two_tower", epochs=2,
               batch_size=16, lr=3e-3, seed=2, model_overrides=TINY_D4, init=str(cls),
               train_classes=["vortex"], precision="bf16", regression_weight=1.0,
               name="test-tt")
    cfg = json.loads((tt / "config.json").read_text())
    assert cfg["trained"]["n_train"] == data["splits"]["train"]["counts"]["vortex"]
    assert cfg["model_kwargs"]["regressor_targets"] == [0]  # log10_m_axion only
    assert cfg["targets"] == json.loads((cls / "config.json").read_text())["targets"]
    w_cls, w_tt = load_file(cls / "model.safetensors"), load_file(tt / "model.safetensors")
    assert all(np.array_equal(w_cls[k].numpy(), w_tt[f"classifier.{k}"].numpy()) for k in w_cls)
    assert any(not np.array_equal(w_cls[k].numpy(), w_tt[f"regressor.{k}"].numpy())
               for k in w_cls if k.endswith("weight"))
    # the catalogue columns: the classifier's probabilities, the regressor's parameters
    imgs = collect(tmp_path / "sub", "test", cfg)["image"]
    p_cls, p_tt = predict(*load_checkpoint(cls), imgs), predict(*load_checkpoint(tt), imgs)
    for col in ("p_vortex", "sigma_sub", "sigma_sub_sigma"):  # the frozen classifier's
        np.testing.assert_allclose(p_tt[col], p_cls[col], rtol=1e-5, atol=1e-6)
    assert not np.allclose(p_tt["log10_m_axion"], p_cls["log10_m_axion"])
    with pytest.raises(ValueError, match="starts from a trained checkpoint"):
        train("substructure", tmp_path / "sub", tmp_path / "bad", "two_tower", epochs=1)
    assert "log10_m_axion_mae_ratio" in cfg["metrics"] and "auc_macro" in cfg["metrics"]


def test_training_layout_avoids_channels_last_for_narrow_1x1_convolutions():
    """oneDNN's channels-last 1x1 weight gradient corrupts the heap for < 16 input channels on
    AVX-512 CPUs; such networks train in the default layout (a subprocess, so a crash fails
    this test instead of killing the suite)."""
    import subprocess
    import sys

    import torch

    from pipeline.models import create_model
    from pipeline.train.loop import training_layout

    assert training_layout(create_model("d4_resnet", in_channels=1, num_outputs=1)) \
        == torch.channels_last
    assert training_layout(create_model("d4_resnet", in_channels=1, num_outputs=1,
                                        **TINY_D4)) == torch.contiguous_format
    code = (
        "import torch\n"
        "from pipeline.models import create_model\n"
        "from pipeline.train.loop import training_layout\n"
        "torch.set_num_threads(1)\n"
        f"m = create_model('d4_resnet', in_channels=1, num_outputs=1, **{TINY_D4!r})\n"
        "fmt = training_layout(m); m = m.to(memory_format=fmt)\n"
        "opt = torch.optim.AdamW(m.parameters(), 1e-3)\n"
        "for _ in range(10):\n"
        "    x = torch.randn(16, 1, 48, 48).contiguous(memory_format=fmt)\n"
        "    loss = m(x).mean(); opt.zero_grad(); loss.backward(); opt.step()\n"
        "print('trained')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "trained" in res.stdout, res.stderr[-2000:]


@pytest.mark.timeout(300)
def test_training_on_a_denoisers_output_records_it_and_tests_on_it(tiny_lens_data, tmp_path):
    """--denoiser: the model trains and is tested on the denoiser's output (as the cascade
    hands it on), and its config names the denoiser's weights; a denoiser of another geometry
    is refused before any work."""
    from _cascade import make_checkpoints

    from pipeline.models.checkpoint import weights_tag
    from pipeline.train.evaluate import collect
    from pipeline.train.loop import make_config, train

    dn = make_checkpoints(tmp_path / "dn", size=48)["denoise"]
    cfg = json.loads((dn / "config.json").read_text())
    (dn / "config.json").write_text(json.dumps({**cfg, "pixel_scale": 0.101}))  # the set's
    with pytest.raises(ValueError, match="takes"):
        make_config("lens-detect", tiny_lens_data, denoiser=str(make_checkpoints(
            tmp_path / "dn32", size=32)["denoise"]))
    out = train("lens-detect", tiny_lens_data, tmp_path / "ck", "d4_resnet", epochs=1,
                batch_size=16, seed=3, model_overrides=TINY_D4, denoiser=str(dn),
                name="test-denoised")
    got = json.loads((out / "config.json").read_text())
    dn_model, dn_cfg = load_checkpoint(dn)
    assert got["denoiser_weights"] == weights_tag(dn, dn_cfg)
    assert got["metrics"]["n"] == len(collect(tiny_lens_data, "test", {**got, "denoiser": None})["image"])
    raw = collect(tiny_lens_data, "test", {**got, "denoiser": None})["image"]
    np.testing.assert_allclose(collect(tiny_lens_data, "test", got)["image"],
                               predict(dn_model, dn_cfg, raw)["image"], rtol=1e-4, atol=1e-3)


def test_gradient_reversal_flips_and_scales_the_gradient():
    import torch

    from pipeline.train.adapt import FeatureTap, ganin_lambda, grad_reverse

    x = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(5, 3)
    y = grad_reverse(x, 0.3)
    assert torch.equal(y, x)  # identity forward
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, -0.3 * w)  # reversed and scaled backward
    # Ganin et al.'s ramp: 0 at the start, rising, ~1 at the end
    ramp = [ganin_lambda(p) for p in np.linspace(0, 1, 11)]
    assert ramp[0] == 0 and all(np.diff(ramp) > 0) and ramp[-1] == pytest.approx(1, abs=1e-4)
    # the features are what enters the network's last linear layer
    from pipeline.models import create_model

    net = create_model("d4_resnet", in_channels=1, num_outputs=1, **TINY_D4).train()
    tap = FeatureTap(net)
    out = net(torch.randn(4, 1, 32, 32))
    assert tap.features.shape == (4, tap.in_features) == (4, 2 * TINY_D4["widths"][-1])
    torch.testing.assert_close(net.head(tap.features), out)


def test_class_conditional_adversary_aligns_the_survey_with_the_non_lenses_only():
    import torch
    import torch.nn.functional as F

    from pipeline.models import create_model
    from pipeline.train.adapt import Adversary

    torch.manual_seed(0)
    net = create_model("d4_resnet", in_channels=1, num_outputs=1, **TINY_D4).train()
    batch = {"is_lens": torch.tensor([1, 0, 1, 0, 0])}  # 5 source rows, then 3 target rows
    losses = {}
    for align in ("all", "negatives"):
        adv = Adversary(net, 1.0, steps_per_epoch=10, epochs=1, align=align)
        net(torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(1)))
        feats = adv.tap.features.float()
        losses[align] = adv.loss(5, 5, batch)
        rows = [0, 1, 2, 3, 4] if align == "all" else [1, 3, 4]
        domain = torch.tensor([0.0] * len(rows) + [1.0] * 3)
        want = F.binary_cross_entropy_with_logits(adv.head(feats[rows + [5, 6, 7]]), domain)
        torch.testing.assert_close(losses[align], want)
        assert adv.n == len(rows) + 3  # the tallies count the rows the head saw
    with pytest.raises(ValueError, match="adapt_align must be one of"):
        Adversary(net, 1.0, 10, 1, align="lenses")


def _target_files(directory):
    """SDSS galaxies (the committed view) as a VIS-like survey's unlabeled cutouts at 0.2"/px,
    two files the model can take, one of g,r,i cutouts it cannot and one broken file."""
    from astropy.io import fits

    from pipeline.io import write_cube_shard

    with fits.open("tests/data/real_backgrounds/sdss_gz2_gri64.fits.gz") as hdul:
        gri = np.asarray(hdul["CUTOUTS"].data[:52], np.float32)
    vis = gri[:, 1:].mean(1, keepdims=True)
    for k in range(2):
        rows = slice(24 * k, 24 * (k + 1))
        write_cube_shard(directory / f"survey-{k}.fits", vis[rows],
                         {"id": np.array([f"t{k}-{i}" for i in range(24)])}, ["VIS"],
                         pixel_scale=0.2)
    write_cube_shard(directory / "survey-gri.fits", gri[48:],
                     {"id": np.array([f"c{i}" for i in range(4)])}, ["g", "r", "i"],
                     pixel_scale=0.2)
    (directory / "survey-broken.fits").write_bytes(b"not a FITS file")
    return directory


@pytest.mark.timeout(300)
def test_adaptation_target_goes_through_the_models_denoiser(ray_local, tmp_path):
    """A model trained on a denoiser's output (--denoiser) meets the survey's cutouts through
    that denoiser too: the target is fitted, denoised, then normalised, as the cascade does."""
    from pipeline.io import ReadOptions, read_fits_file
    from pipeline.models import pretrained_dir
    from pipeline.models.checkpoint import resolve_checkpoint
    from pipeline.models.normalize import normalize
    from pipeline.train.adapt import FitTarget, load_target

    path = str(_target_files(tmp_path / "survey") / "survey-0.fits")  # 24 cutouts, 0.2"/px
    cfg = json.loads((pretrained_dir("lens-detect") / "config.json").read_text())
    den_cfg = {**cfg, "denoiser": "survey:euclid-vis"}
    x = {name: np.stack([r["x"] for r in load_target([path], c)[0].take_all()])
         for name, c in (("raw", cfg), ("denoised", den_cfg))}
    fitted = FitTarget(cfg)(read_fits_file(path, ReadOptions(geometry=True)))["image"]
    dn_model, dn_cfg = load_checkpoint(resolve_checkpoint("survey:euclid-vis", "denoise"))
    want = {"raw": normalize(fitted, cfg["normalization"])[0],
            "denoised": normalize(predict(dn_model, dn_cfg, fitted)["image"],
                                  cfg["normalization"])[0]}
    for name in x:
        np.testing.assert_allclose(x[name], want[name], rtol=1e-4, atol=1e-3, err_msg=name)
    assert np.abs(x["denoised"] - x["raw"]).mean() > 0.05  # the denoiser did change them


@pytest.mark.timeout(600)
def test_domain_adversarial_training_on_unlabeled_survey_cutouts(tiny_lens_data, tmp_path):
    from pipeline.train.card import model_card, portable
    from pipeline.train.loop import train

    target = _target_files(tmp_path / "survey")
    out = train("lens-detect", tiny_lens_data, tmp_path / "dann", "d4_resnet", epochs=3,
                batch_size=16, lr=3e-3, patience=10, seed=5, model_overrides=TINY_D4,
                adapt=[str(target / "survey-*.fits")], adapt_weight=1.0, name="test-dann",
                recipe_command=f"lensray train --adapt '{target}/survey-*.fits' --out x")
    cfg = json.loads((out / "config.json").read_text())
    # the record: method, target files by name, cutouts used and refused (g,r,i + broken)
    a = cfg["adapt"]
    assert a["method"] == "dann" and a["weight"] == 1.0 and a["align"] == "all"
    assert a["files"] == ["survey-0.fits", "survey-1.fits", "survey-broken.fits",
                          "survey-gri.fits"] and a["n_files"] == 4
    assert (a["n"], a["n_refused"]) == (48, 5)
    # every epoch reports the domain head's loss and accuracy; the reversed gradient keeps the
    # head near chance (loss above ln 2 ~ 0.69 here), where the same run with a vanishing
    # reversal lets it tell simulations from SDSS galaxies (below)
    hist = cfg["trained"]["history"]
    assert len(hist) == 3 and all(np.isfinite(h["domain_loss"]) for h in hist)
    assert hist[-1]["domain_loss"] > 0.55 and abs(hist[-1]["domain_acc"] - 0.5) < 0.25, hist
    ctrl = train("lens-detect", tiny_lens_data, tmp_path / "ctrl", "d4_resnet", epochs=3,
                 batch_size=16, lr=3e-3, patience=10, seed=5, model_overrides=TINY_D4,
                 adapt=[str(target / "survey-*.fits")], adapt_weight=1e-6, name="test-ctrl",
                 evaluate_test=False)
    free = json.loads((ctrl / "config.json").read_text())["trained"]["history"][-1]
    assert free["domain_acc"] > 0.8 and free["domain_loss"] < hist[-1]["domain_loss"] - 0.2
    # the exported network is the plain one (no domain head), loadable by a stage
    model, _ = load_checkpoint(out)
    assert not any("domain" in k or k.startswith("net.") for k in model.state_dict())
    card = model_card(portable(cfg), out / "model.safetensors")
    assert "| adaptation | dann" in card and "`survey-0.fits`" in card
    assert str(tmp_path) not in json.dumps(portable(cfg)["adapt"])
    assert str(target) not in portable(cfg)["trained"]["recipe"]
    with pytest.raises(ValueError, match="none of the target cutouts fits"):
        train("lens-detect", tiny_lens_data, tmp_path / "bad", "d4_resnet", epochs=1,
              model_overrides=TINY_D4, adapt=[str(target / "survey-gri.fits")])


def test_portable_config_names_no_machine_paths():
    from pipeline.models import pretrained_dir
    from pipeline.train.card import portable

    shipped = pretrained_dir("lens-detect")
    cfg = {"init": str(shipped), "adapt": {"files": ["a.fits"]},
           "trained": {"data": "/big/disk/data/vis-sub",
                       "recipe": f"lensray train --data /big/disk/data/vis-sub --init {shipped} "
                                 "--out /scratch/runs/ft --adapt /survey/x.fits '/survey/y*.fits'"}}
    p = portable(cfg)
    assert p["init"] == "pipeline/weights/lens-detect" and p["trained"]["data"] == "data/vis-sub"
    assert p["trained"]["recipe"] == ("lensray train --data data/vis-sub --init "
                                      "pipeline/weights/lens-detect --out runs/ft --adapt x.fits "
                                      "'y*.fits'")
    assert portable({**cfg, "init": "/scratch/runs/base"})["init"] == "runs/base"
