"""Stages on NumPy batches (no Ray needed): columns, error rows, candidates, read-only input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _cascade import make_checkpoints, make_images

from pipeline.models import load_checkpoint, predict
from pipeline.stages import CANDIDATE, Denoise, LensDetect, Stage, Substructure


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))


def _batch(n=12, bad=(3, 7), seed=1, **size):
    images = make_images(n, seed=seed, **size)
    error = np.array([f"x.fits: HDU {i} corrupt" if i in bad else None for i in range(n)],
                     dtype=object)
    images[list(bad)] = 0.0  # error rows carry an unusable image
    batch = {
        "id": np.array([f"x:{i}" for i in range(n)], dtype=object),
        "ra": np.linspace(10, 11, n), "dec": np.linspace(-5, -4, n),
        "image": images, "source": np.array(["x.fits"] * n, dtype=object),
        "index": np.arange(n, dtype=np.int64), "error": error,
    }
    for v in batch.values():  # Ray's zero-copy batches are read-only
        v.setflags(write=False)
    return batch


def test_lens_detect_scores_good_rows_and_passes_error_rows(ckpts):
    batch = _batch()
    stage = LensDetect(threshold=0.6, checkpoint=ckpts["lens-detect"])
    out = stage(batch)
    good = np.ones(12, bool)
    good[[3, 7]] = False
    model, cfg = load_checkpoint(ckpts["lens-detect"])
    expected = predict(model, cfg, batch["image"][good])["p_lens"]
    np.testing.assert_allclose(out["p_lens"][good], expected, rtol=1e-5)
    assert np.isnan(out["p_lens"][~good]).all()
    np.testing.assert_array_equal(out[CANDIDATE], good & (out["p_lens"] >= 0.6))
    assert 0 < out[CANDIDATE].sum() < good.sum()  # the test means something
    # Base columns pass through unchanged, error rows included.
    for k in ("id", "ra", "dec", "source", "index", "error", "image"):
        np.testing.assert_array_equal(out[k], batch[k])
    # Provenance: model name, version and weights hash on computed rows only.
    tag = out["model_lens_detect"][0]
    assert tag.startswith("lastro_cnn@") and len(tag.split("#")[1]) == 12
    assert out["model_lens_detect"][3] is None


def test_top_fraction_marks_that_fraction_of_good_rows(ckpts):
    out = LensDetect(top_fraction=0.25, checkpoint=ckpts["lens-detect"])(_batch())
    p, cand = out["p_lens"], out[CANDIDATE]
    assert cand.sum() == 3  # ceil(0.25 * 10 good rows)
    assert p[cand].min() >= np.nanmax(np.where(cand, np.nan, p))


def test_substructure_only_on_candidates(ckpts):
    batch = LensDetect(threshold=0.6, checkpoint=ckpts["lens-detect"])(_batch())
    out = Substructure(checkpoint=ckpts["substructure"])(batch)
    cand = batch[CANDIDATE]
    for col in ("p_no_sub", "p_cdm", "p_vortex", "log10_m_axion", "log10_m_axion_sigma",
                "sigma_sub", "sigma_sub_sigma"):
        assert np.isfinite(out[col][cand]).all(), col
        assert np.isnan(out[col][~cand]).all(), col
    probs = out["p_no_sub"] + out["p_cdm"] + out["p_vortex"]
    np.testing.assert_allclose(probs[cand], 1, rtol=1e-5)
    assert (out["log10_m_axion_sigma"][cand] > 0).all()
    assert all((m is None) != c for m, c in zip(out["model_substructure"], cand, strict=True))


def test_substructure_without_detector_runs_on_all_good_rows(ckpts):
    out = Substructure(checkpoint=ckpts["substructure"])(_batch())
    assert np.isfinite(out["p_cdm"]).sum() == 10


def test_no_candidates_still_gives_every_column(ckpts):
    batch = LensDetect(threshold=1.0, checkpoint=ckpts["lens-detect"])(_batch())
    assert not batch[CANDIDATE].any()
    out = Substructure(checkpoint=ckpts["substructure"])(batch)
    assert np.isnan(out["p_vortex"]).all() and out["p_vortex"].dtype == np.float32
    assert all(m is None for m in out["model_substructure"])


def test_denoise_writes_its_own_column_for_good_rows_only(ckpts):
    batch = _batch()
    out = Denoise(checkpoint=ckpts["denoise"])(batch)
    assert out["denoised"].shape == batch["image"].shape and out["denoised"].dtype == np.float32
    assert not np.allclose(out["denoised"][0], batch["image"][0])
    assert np.isnan(out["denoised"][[3, 7]]).all()  # error rows: no denoised image
    assert out["image"] is batch["image"]  # the raw cutout stays for models trained on it
    assert not batch["image"].flags.writeable  # input untouched


def test_bad_checkpoints_fail_on_the_driver(tmp_path, ckpts):
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        LensDetect(checkpoint=tmp_path)
    with pytest.raises(ValueError, match="checkpoint is for task 'denoise'"):
        LensDetect(checkpoint=ckpts["denoise"])
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes((ckpts["lens-detect"] / "model.safetensors")
                                                 .read_bytes())
    with pytest.raises(ValueError, match="not valid JSON"):
        Substructure(checkpoint=tmp_path)
    with pytest.raises(ValueError, match="threshold"):
        LensDetect(threshold=1.5)
    with pytest.raises(ValueError, match="top_fraction"):
        LensDetect(top_fraction=0)
    with pytest.raises(ValueError, match="actors"):
        LensDetect(actors=(3, 1))


def test_options_rebuild_the_stage_inside_an_actor(ckpts):
    stage = LensDetect(top_fraction=0.1, checkpoint=ckpts["lens-detect"], batch_size=64,
                       num_cpus=0.5)
    clone = LensDetect(**stage.options)
    assert clone.options == stage.options
    assert json.dumps(stage.options)  # plain data, cheap to ship to actors
    # the spec loaded (and so checked) its model on the driver, on the CPU
    assert [next(m.parameters()).device.type for m, _ in stage.members] == ["cpu"]


class Brightness(Stage):
    """A custom stage: total flux above the border median, no model."""

    name = "brightness"
    writes = ("flux",)

    def compute(self, rows):
        img = rows["image"]
        sky = np.median(img[..., :2, :], axis=(-1, -2, -3))
        return {"flux": (img.sum(axis=(1, 2, 3)) - sky * img[0].size).astype(np.float64)}


def test_custom_stage_follows_the_same_protocol():
    batch = _batch()
    out = Brightness()(batch)
    assert np.isnan(out["flux"][[3, 7]]).all()
    assert np.isfinite(np.delete(out["flux"], [3, 7])).all()
    assert "model_brightness" not in out


def test_empty_batch_passes(ckpts):
    stage = LensDetect(checkpoint=ckpts["lens-detect"])
    empty = {k: v[:0] for k, v in _batch().items()}
    assert len(stage(empty)["id"]) == 0
    stage(_batch())  # learns its columns
    out = stage(empty)
    assert out["p_lens"].shape == (0,) and out[CANDIDATE].dtype == bool


def test_bf16_precision_with_the_shipped_weights_is_close_to_fp32_and_recorded():
    # The shipped (trained) networks: bf16 keeps their scores. (The tiny rescaled test networks
    # collapse in bf16: whether bf16 is safe is a property of each network.)
    batch = _batch(size=64)
    good = np.ones(12, bool)
    good[[3, 7]] = False
    fp32 = Substructure()(batch)
    bf16 = Substructure(precision="bf16")(batch)
    for col in ("p_vortex", "p_cdm", "log10_m_axion"):
        a, b = fp32[col][good], bf16[col][good]
        assert not np.array_equal(a, b)  # it did run in bfloat16
        assert np.median(np.abs(a - b)) < 0.02 * max(1.0, float(np.abs(a).max())), col
    assert bf16["model_substructure"][0] == fp32["model_substructure"][0] + "+bf16"
    with pytest.raises(ValueError, match="precision"):
        Denoise(precision="fp16")


def test_the_default_cascade_runs_the_shipped_denoiser_only_for_a_model_that_reads_it(ckpts):
    """Without --stages, a shipped denoiser whose output no later model was trained on is left
    out (it would cost time, and feeding a raw-trained model denoised cutouts cost AUC)."""
    from pipeline.stages import build_stages

    shipped = build_stages(survey="euclid-vis")
    readers = [s for s in shipped if "denoised" in s.reads]
    assert any(isinstance(s, Denoise) for s in shipped) == bool(readers)
    assert [type(s) for s in shipped if not isinstance(s, Denoise)] == [LensDetect, Substructure]
    # Named stages or a given denoiser checkpoint always run.
    assert isinstance(build_stages(["denoise", "lens-detect"], survey="euclid-vis")[0], Denoise)
    given = build_stages(survey="euclid-vis", checkpoints={"denoise": ckpts["denoise"]})
    assert isinstance(given[0], Denoise)
