"""Registry, shapes, symmetry, normalisation and checkpoint round trips of every network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.models import (
    DEFAULT_NORMALIZATION,
    create_model,
    denormalize,
    fit_cutouts,
    list_models,
    load_checkpoint,
    load_pretrained,
    normalize,
    predict,
    save_checkpoint,
)
from pipeline.models.registry import model_kwargs
from pipeline.models.tasks import get_task

CLASSIFIERS = ["deeplens_resnet", "lastro_cnn", "d4_resnet"]
TARGETS = {"log10_m_axion": {"class": 2, "mean": -23.0, "std": 0.6},
           "sigma_sub": {"class": 1, "mean": 0.05, "std": 0.02}}


def _config(task: str, model: str, bands=("VIS",), size=32) -> dict:
    cfg = {"task": task, "model": model, "bands": list(bands), "size": size, "pixel_scale": 0.1,
           "normalization": dict(DEFAULT_NORMALIZATION)}
    if task == "substructure":
        cfg.update(classes=["no_sub", "cdm", "vortex"], targets=TARGETS)
    cfg["model_kwargs"] = model_kwargs(model, cfg)
    return cfg


def _images(n=4, bands=1, size=32, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (100 + 5 * rng.standard_normal((n, bands, size, size))).astype(np.float32)


def test_registry_lists_models_per_task():
    assert set(CLASSIFIERS) <= set(list_models("lens-detect"))
    assert "d4_resnet" in list_models("substructure")
    assert list_models("denoise") == ["unet_denoiser"]
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope")


def test_model_facts_live_at_registration():
    from pipeline.models import STAGES, default_model, model_info, register_model

    for stage in STAGES:  # one default network per stage, and it serves the stage
        assert stage in model_info(default_model(stage)).tasks
    assert model_info("two_tower").init_from is not None
    assert model_info("d4_resnet").init_from is None
    assert "model.widths" in model_info("d4_resnet").search_space
    with pytest.raises(ValueError, match="register_model: tasks"):
        register_model("lens-find")


def test_stages_write_what_their_tasks_decode_from_the_shipped_configs():
    from pipeline.models import STAGES, pretrained_dir
    from pipeline.stages import STAGE_CLASSES

    renamed = {"image": "denoised"}  # the denoise stage keeps the raw image: its own column
    for stage in STAGES:
        cfg = json.loads((pretrained_dir(stage) / "config.json").read_text())
        decoded = {renamed.get(c, c) for c in get_task(stage).columns(cfg)}
        assert decoded <= set(STAGE_CLASSES[stage].writes)
        assert STAGE_CLASSES[stage].task == stage == cfg["task"]


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("bands", [1, 3])
def test_classifier_shapes_multiband(name, bands):
    m = create_model(name, in_channels=bands, num_outputs=7).eval()
    with torch.no_grad():
        out = m(torch.randn(2, bands, 64, 64))
    assert out.shape == (2, 7)
    # small enough to ship (<= 20 MB of float32)
    assert sum(p.numel() for p in m.parameters()) * 4 < 20e6


@pytest.mark.parametrize("bands", [1, 3])
def test_unet_shapes_odd_sizes(bands):
    m = create_model("unet_denoiser", in_channels=bands).eval()
    with torch.no_grad():
        assert m(torch.randn(2, bands, 50, 50)).shape == (2, bands, 50, 50)


def test_d4_resnet_is_exactly_invariant_in_eval():
    m = create_model("d4_resnet", in_channels=1, num_outputs=3).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref = m(x)
        for k in (1, 2, 3):
            assert torch.allclose(m(torch.rot90(x, k, dims=(-2, -1))), ref, atol=1e-5)
        assert torch.allclose(m(torch.flip(x, dims=(-1,))), ref, atol=1e-5)


def test_normalization_is_unit_free_and_invertible():
    x = _images(3, 2)
    z, sky, noise = normalize(x)
    # same cutout in other units/zero point -> same network input
    z2, _, _ = normalize(7.5 * x - 40.0)
    assert np.allclose(z, z2, atol=1e-4)
    np.testing.assert_allclose(sky, 100, atol=1.0)
    np.testing.assert_allclose(noise, 5, rtol=0.15)
    np.testing.assert_allclose(denormalize(z, sky, noise), x, rtol=1e-5)
    # noiseless and NaN input never divide by zero
    flat = np.zeros((1, 1, 16, 16), np.float32)
    flat[0, 0, 0, 0] = np.nan
    assert np.isfinite(normalize(flat)[0]).all()


@pytest.mark.parametrize("task,model", [("lens-detect", "d4_resnet"),
                                        ("lens-detect", "lastro_cnn"),
                                        ("substructure", "deeplens_resnet"),
                                        ("denoise", "unet_denoiser")])
def test_checkpoint_round_trip_and_predict_columns(tmp_path, task, model):
    cfg = _config(task, model, bands=("g", "r"))
    m = create_model(model, **cfg["model_kwargs"]).eval()
    x = _images(5, 2)
    p = predict(m, cfg, x)
    save_checkpoint(m, cfg, tmp_path / "ck")
    assert sorted(f.name for f in (tmp_path / "ck").iterdir()) == ["config.json",
                                                                   "model.safetensors"]
    m2, cfg2 = load_checkpoint(tmp_path / "ck" / "model.safetensors")
    assert cfg2 == json.loads(json.dumps(cfg))
    p2 = predict(m2, cfg2, x)
    assert p.keys() == p2.keys()
    assert tuple(p) == get_task(task).columns(cfg)  # the columns the task declares
    for k in p:
        np.testing.assert_array_equal(p[k], p2[k])
        assert p[k].dtype == np.float32 and len(p[k]) == 5
    if task == "lens-detect":
        assert set(p) == {"p_lens"} and ((p["p_lens"] >= 0) & (p["p_lens"] <= 1)).all()
    elif task == "substructure":
        assert set(p) == {"p_no_sub", "p_cdm", "p_vortex", "log10_m_axion",
                          "log10_m_axion_sigma", "sigma_sub", "sigma_sub_sigma"}
        np.testing.assert_allclose(p["p_no_sub"] + p["p_cdm"] + p["p_vortex"], 1, atol=1e-5)
        assert (p["log10_m_axion_sigma"] > 0).all()
    else:
        assert p["image"].shape == x.shape
        # denoised output is in the input's units (sky ~100), not in noise units
        assert abs(float(np.median(p["image"])) - 100) < 10


def test_predict_pads_batches_to_few_shapes_without_changing_rows():
    """Any number of rows reaches the network as one of a few power-of-two batch shapes (each
    new shape grows a CPU process for good), and padding never changes a row's result."""
    cfg = _config("substructure", "lastro_cnn")
    net = create_model("lastro_cnn", **cfg["model_kwargs"]).eval()
    shapes = set()
    net.register_forward_pre_hook(lambda _m, args: shapes.add(args[0].shape[0]))
    x = _images(40, 1, seed=3)
    full = predict(net, cfg, x, batch_size=32)
    assert shapes == {32, 8}  # 40 rows = 32 + 8
    for n in (1, 3, 5, 11, 17, 29):
        part = predict(net, cfg, x[:n], batch_size=32)
        for k in full:
            np.testing.assert_allclose(part[k], full[k][:n], rtol=1e-5, atol=1e-6)
    assert shapes == {1, 4, 8, 16, 32}


def test_predict_rejects_wrong_geometry_and_load_errors(tmp_path):
    cfg = _config("lens-detect", "d4_resnet")
    m = create_model("d4_resnet", **cfg["model_kwargs"])
    with pytest.raises(ValueError, match=r"expects \(N, 1, 32, 32\)"):
        predict(m, cfg, _images(2, 1, 40))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="unknown stage"):
        load_pretrained("nope")


def test_fit_cutouts_resamples_to_model_pixel_scale():
    cfg = {"pixel_scale": 0.2, "size": 32}
    x = np.zeros((1, 1, 100, 100), np.float32)
    x[..., 50, 50] = 1.0
    y = fit_cutouts(x, 0.1, cfg)  # 100 px at 0.1" = 50 px at 0.2", centre-cropped to 32
    assert y.shape == (1, 1, 32, 32) and np.isfinite(y).all()
    assert np.unravel_index(np.argmax(y[0, 0]), (32, 32)) in {(16, 16), (15, 15), (15, 16), (16, 15)}
    small = fit_cutouts(np.ones((1, 1, 10, 10), np.float32), 0.2, cfg)  # padded with NaN (sky)
    assert np.isnan(small).sum() == 32 * 32 - 100


def test_substructure_loss_is_cross_entropy_plus_weighted_masked_gaussian_nll():
    import torch
    import torch.nn.functional as F

    from pipeline.models.tasks import get_task

    task = get_task("substructure")
    cfg = {"targets": {"log10_m_axion": {"class": 2, "mean": -23.0, "std": 0.5},
                       "sigma_sub": {"class": 1, "mean": 0.1, "std": 0.05}}}
    out = torch.randn(6, task.num_outputs(cfg))
    batch = {"substructure": torch.tensor([0, 1, 2, 2, 1, 0]),
             "log10_m_axion": torch.tensor([float("nan"), float("nan"), -23.5, -22.2, float("nan"), float("nan")]),
             "sigma_sub": torch.tensor([0.0, 0.12, 0.0, 0.0, 0.07, 0.0])}
    ce = F.cross_entropy(out[:, :3], batch["substructure"])
    assert torch.isclose(task.loss(out, batch, {**cfg, "regression_weight": 0.0}), ce)
    # by hand: NLL of the axion mass on the two vortex rows, of sigma_sub on the two cdm rows
    nll = 0.0
    for j, (name, rows) in enumerate((("log10_m_axion", [2, 3]), ("sigma_sub", [1, 4]))):
        t = cfg["targets"][name]
        y = (batch[name][rows] - t["mean"]) / t["std"]
        mu, ls = out[rows, 3 + j], out[rows, 5 + j].clamp(-7, 3)
        nll += (0.5 * ((y - mu) * torch.exp(-ls)) ** 2 + ls).mean()
    for w in (1.0, 0.1):
        assert torch.isclose(task.loss(out, batch, {**cfg, "regression_weight": w}), ce + w * nll)
    assert task.regression_weight == 0.1  # the training default
    # beta-NLL: each row's NLL scaled by sigma^(2 beta), the scale without gradient
    nll_b = 0.0
    for j, (name, rows) in enumerate((("log10_m_axion", [2, 3]), ("sigma_sub", [1, 4]))):
        t = cfg["targets"][name]
        y = (batch[name][rows] - t["mean"]) / t["std"]
        mu, ls = out[rows, 3 + j], out[rows, 5 + j].clamp(-7, 3)
        nll_b += (torch.exp(ls) * (0.5 * ((y - mu) * torch.exp(-ls)) ** 2 + ls)).mean()
    cfg_b = {**cfg, "regression_weight": 1.0, "nll_beta": 0.5}
    assert torch.isclose(task.loss(out, batch, cfg_b), ce + nll_b)
    out.requires_grad_(True)
    task.loss(out, batch, cfg_b).backward()
    g = out.grad[[2, 3], 3]  # d loss / d mean on the vortex rows: scaled residual only
    y = (batch["log10_m_axion"][[2, 3]] + 23.0) / 0.5
    ls = out.detach()[[2, 3], 5].clamp(-7, 3)
    expected = -(y - out.detach()[[2, 3], 3]) * torch.exp(-ls) / 2  # mean over 2 rows
    assert torch.allclose(g, expected, atol=1e-5)


def test_two_tower_takes_classes_from_the_frozen_classifier_and_the_rest_from_the_regressor():
    from pipeline.models.registry import init_network

    cfg = _config("substructure", "two_tower")
    assert cfg["model_kwargs"]["num_classes"] == 3
    tower, kw = init_network("two_tower", {**cfg["model_kwargs"], "widths": [8, 16, 32]})
    assert tower == "d4_resnet" and "num_classes" not in kw and kw["widths"] == [8, 16, 32]
    torch.manual_seed(0)
    a = create_model("d4_resnet", **_config("substructure", "d4_resnet")["model_kwargs"])
    m = create_model("two_tower", **cfg["model_kwargs"])
    m.init_from(a.state_dict())
    with torch.no_grad():  # the regressor tower moves away from the classifier during training
        for p in m.regressor.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.from_numpy(normalize(_images(3))[0])
    m.eval(), a.eval()
    with torch.no_grad():
        out, ref, reg = m(x), a(x), m.regressor(x)
    torch.testing.assert_close(out[:, :3], ref[:, :3])  # the classes: the classifier's
    torch.testing.assert_close(out[:, 3:], reg[:, 3:])  # the parameters: the regressor's
    assert not torch.allclose(out[:, 3:], ref[:, 3:])
    # a regressor for log10_m_axion only: sigma_sub (outputs 4 and 6) stays the classifier's
    one = create_model("two_tower", **{**cfg["model_kwargs"], "regressor_targets": [0]})
    one.load_state_dict(m.state_dict())
    one.eval()
    with torch.no_grad():
        out1 = one(x)
    torch.testing.assert_close(out1[:, [4, 6]], ref[:, [4, 6]])
    torch.testing.assert_close(out1[:, [3, 5]], reg[:, [3, 5]])
    with pytest.raises(ValueError, match="regressor_targets"):
        create_model("two_tower", **{**cfg["model_kwargs"], "regressor_targets": [2]})
    # training touches only the regressor; the classifier's batch-norm statistics stay put
    m.train()
    assert not m.classifier.training and m.regressor.training
    m(x)[:, 3:].sum().backward()
    assert all(p.grad is None for p in m.classifier.parameters())
    assert all(p.grad is not None for p in m.regressor.parameters())
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in m.classifier.state_dict().items())
    m.tta = False
    assert m.classifier.tta is m.regressor.tta is False
