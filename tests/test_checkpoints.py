"""Checkpoints checked on the driver before any work (one line naming the checkpoint), band
names against ``--bands``, and ensembles of checkpoints in one stage.

Built on the shipped weights (``pipeline/weights``) and copies of them altered in tmp_path."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.models.checkpoint import load_checkpoint, pretrained_dir

SHIPPED = pretrained_dir("lens-detect")  # d4_resnet, VIS at 0.101"/px, 64 px
HST = pretrained_dir("lens-detect", "hst")  # F160W at 0.08"/px


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("MODEL_CARD.md"))
    return dst


def _config(ckpt: Path, **changes) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, **changes}))


def _weights(ckpt: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(ckpt / "model.safetensors"))
    change(state)
    save_file(state, str(ckpt / "model.safetensors"))


def _truncate(c):
    data = (c / "model.safetensors").read_bytes()
    (c / "model.safetensors").write_bytes(data[: len(data) // 2])


def _drop_tensor(state):
    del state[sorted(state)[0]]


def _perturb(state):
    """Another member: the same network with its output layer's weights changed."""
    head = [k for k in state if k.endswith("weight")][-1]
    state[head] = state[head] * 1.5 + 0.05


# (name, how to break a copy of the shipped lens finder, what the one line must say)
CORRUPT = [
    ("truncated", _truncate, "model.safetensors is not a readable safetensors file"),
    ("garbage", lambda c: (c / "model.safetensors").write_bytes(b"\x93NUMPY" * 999),
     "model.safetensors is not a readable safetensors file"),
    ("missing-tensor", lambda c: _weights(c, _drop_tensor), r"1 tensor\(s\) missing"),
    ("missing-config-key", lambda c: _strip(c, "bands"), "config.json lacks bands"),
    ("bad-json", lambda c: (c / "config.json").write_text("{oops"), "not valid JSON"),
    ("unknown-model", lambda c: _config(c, model="resnet9000"), "unknown model 'resnet9000'"),
    ("wrong-model-kwargs", lambda c: _config(c, model_kwargs={"in_channels": 1, "width": 3}),
     "model_kwargs .* do not build 'd4_resnet'"),
    ("unknown-normalization", lambda c: _config(c, normalization={"method": "zscale"}),
     "unknown normalization method 'zscale'"),
    ("other-bands", lambda c: _config(c, bands=["g", "r", "i"]),
     "the network does not take the config's input \\(bands g,r,i, 64x64 px\\)"),
    # the shipped networks take any size from 8 px or so; the denoiser's U-Net not 4 px
    ("size-denoiser", lambda c: _config(c, size=4),
     "the network does not take the config's input \\(bands VIS, 4x4 px\\)"),
    ("other-task", lambda c: _config(c, task="denoise"), "does not serve task 'denoise'"),
    ("no-pixel-scale", lambda c: _strip(c, "pixel_scale"), "no pixel_scale"),
]


def _strip(ckpt: Path, key: str) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.pop(key)
    (ckpt / "config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def field(tmp_path_factory) -> list[Path]:
    """Two small VIS cube shards at 0.1"/px (64 px, resampled to the models' 0.101"/px)."""
    from _cascade import make_shards

    return make_shards(tmp_path_factory.mktemp("field"), [12, 9], seed=5, size=64)


@pytest.mark.parametrize("name,breaks,says", CORRUPT, ids=[c[0] for c in CORRUPT])
def test_a_bad_checkpoint_is_one_line_naming_it_before_any_work(tmp_path, field, name, breaks,
                                                                  says):
    from pipeline.run import run_cascade
    from pipeline.stages import STAGE_CLASSES

    stage = "denoise" if "denoiser" in name else "lens-detect"
    bad = _copy(pretrained_dir(stage), tmp_path / name)
    breaks(bad)
    with pytest.raises((ValueError, OSError)) as err:
        STAGE_CLASSES[stage](checkpoint=bad)
    message = str(err.value)
    assert message.startswith(f"{bad}: ") and "\n" not in message, message
    assert re.search(says, message), message
    # the whole run fails the same way before it touches the output directory
    out = tmp_path / "out"
    with pytest.raises((ValueError, OSError), match=f"^{bad}: "):
        run_cascade(field, out, stages=[stage], checkpoints={stage: bad},
                    survey="euclid-vis", progress=False, gallery=0)
    assert not out.exists()


def test_cli_bad_checkpoint_exit_1_and_one_line(tmp_path, field, ray_local):
    """`lensray evaluate --data` (a process of its own: exit 1, stderr one line) and `lensray
    run` with a truncated checkpoint: one `lensray <cmd>: <checkpoint>: <problem>` line."""
    from pipeline.cli import main

    bad = _copy(SHIPPED, tmp_path / "bad")
    _truncate(bad)
    says = f"{bad}: model.safetensors is not a readable safetensors file (truncated or corrupt?): "
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "evaluate", "--data",
                          str(tmp_path), "--stage", "lens-detect", "--checkpoint", str(bad)],
                         capture_output=True, text=True, timeout=300)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert lines[0].startswith(f"lensray evaluate: {says}"), lines
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as err:  # a str code: exit status 1, the line on stderr
        main(["run", str(field[0]), "--out", str(out), "--survey", "euclid-vis",
              "--stages", "lens-detect", "--lens-detect-checkpoint", str(bad), "--no-progress"])
    assert isinstance(err.value.code, str) and "\n" not in err.value.code
    assert err.value.code.startswith(f"lensray run: {says}")
    assert not out.exists()


def _unnamed(tmp_path: Path) -> Path:
    """One single-plane cutout with no band name (no BAND1, FILTER or EXTNAME) at 0.1"/px."""
    from _surveyfits import ring, write_cutout

    return write_cutout(tmp_path / "plain.fits", ring(1.0, 0.1, 64), scale=0.1)


def test_bands_the_model_does_not_take_are_an_error_unless_aliased(tmp_path, ray_local):
    """`--bands G` on a VIS model used to score the G plane as VIS and exit 0."""
    from pipeline.cli import main
    from pipeline.compose import Pipeline
    from pipeline.run import run_cascade
    from pipeline.stages import LensDetect

    path = _unnamed(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as err:
        main(["run", str(path), "--bands", "G", "--out", str(out), "--stages", "lens-detect",
              "--no-progress"])
    message = str(err.value.code)
    assert message.startswith(f"lensray run: {SHIPPED}: lens-detect model wants bands VIS")
    assert "--bands G reads other bands" in message and "--band-alias G=VIS" in message
    assert "\n" not in message and not out.exists()
    with pytest.raises(ValueError, match=f"^{SHIPPED}: .*--bands G"):  # the Python API too
        Pipeline([LensDetect()]).run_files([path], bands=["G"])
    # extra bands are fine (the model picks its own); the user's word makes G the model's VIS
    assert LensDetect().bands_problem(["VIS", "NIR_H"]) is None
    summary = run_cascade([path], out, bands=["G"], band_aliases={"G": "VIS"},
                          stages=["lens-detect"], progress=False, gallery=0)
    assert summary["total"] == {**summary["total"], "rows": 1, "good": 1, "errors": 0}


def test_row_band_names_are_aliased_when_fitted():
    from pipeline.models import fit_rows

    cfg = {"task": "lens-detect", "bands": ["VIS"], "pixel_scale": 0.1, "size": 16}
    rows = {"image": np.ones((1, 1, 16, 16), np.float32), "pixel_scale": np.array([0.1]),
            "band_names": np.array(["G"], dtype=object)}
    assert "file has 1 band G" in fit_rows(rows, cfg).errors[0]
    assert fit_rows(rows, cfg, aliases={"g": "VIS"}).ok.all()


def test_ensemble_members_must_share_geometry_and_appear_once(tmp_path):
    from pipeline.stages import LensDetect

    with pytest.raises(ValueError, match=f"^{HST}: ensemble members must share their input"):
        LensDetect(checkpoint=[SHIPPED, HST])
    with pytest.raises(ValueError, match="listed twice"):
        LensDetect(checkpoint=[SHIPPED, SHIPPED / ".." / SHIPPED.name])
    bad = _copy(SHIPPED, tmp_path / "bad")
    _truncate(bad)
    with pytest.raises(ValueError, match=f"^{bad}: "):  # every member is checked
        LensDetect(checkpoint=[SHIPPED, bad])


def test_ensemble_argument_cannot_swallow_inputs(tmp_path):
    from pipeline.cli import _cascade_options, build_parser

    other = _copy(SHIPPED, tmp_path / "other")
    args = build_parser().parse_args(["run", "in.fits", "--out", "o", "--lens-detect-checkpoint",
                                      str(SHIPPED), "--lens-detect-checkpoint", str(other)])
    assert args.inputs == ["in.fits"]
    assert _cascade_options(args)["checkpoints"] == {"lens-detect": [str(SHIPPED), str(other)]}
    args = build_parser().parse_args(["run", "--lens-detect-checkpoint", str(SHIPPED), str(other),
                                      "--out", "o"])
    with pytest.raises(SystemExit, match=f"lensray run: {other}: a checkpoint among the INPUTs"):
        _cascade_options(args)


def test_substructure_ensemble_widens_sigma_by_the_members_disagreement():
    from pipeline.models.tasks import SUBSTRUCTURE

    cfg = {"targets": {"sigma_sub": {}}}
    a = {"p_cdm": np.array([0.2, 0.6], np.float32), "sigma_sub": np.array([1.0, 0.0], np.float32),
         "sigma_sub_sigma": np.array([0.3, 0.4], np.float32)}
    b = {"p_cdm": np.array([0.4, 0.6], np.float32), "sigma_sub": np.array([3.0, 0.0], np.float32),
         "sigma_sub_sigma": np.array([0.3, 0.4], np.float32)}
    out = SUBSTRUCTURE.combine([a, b], cfg)
    np.testing.assert_allclose(out["p_cdm"], [0.3, 0.6], rtol=1e-6)
    np.testing.assert_allclose(out["sigma_sub"], [2.0, 0.0])
    np.testing.assert_allclose(out["sigma_sub_sigma"], [np.sqrt(0.09 + 1.0), 0.4], rtol=1e-6)


def test_ensemble_on_ray_gives_the_members_mean_spread_and_provenance(tmp_path, field,
                                                                        ray_local):
    import pyarrow.parquet as pq

    from pipeline.io import ReadOptions, read_fits_file
    from pipeline.models import fit_rows, predict
    from pipeline.run import run_cascade

    other = _copy(SHIPPED, tmp_path / "other")
    _weights(other, _perturb)
    out = tmp_path / "out"
    summary = run_cascade(field, out, stages=["lens-detect"], progress=False, gallery=0,
                          checkpoints={"lens-detect": [SHIPPED, other]})
    cat = pq.read_table(out / "catalog").to_pandas().set_index("id")
    assert len(cat) == summary["total"]["rows"] == 21

    # the members' p_lens computed directly, without Ray or the stage
    rows = [read_fits_file(str(p), ReadOptions(geometry=True)) for p in field]
    rows = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    members = [load_checkpoint(c) for c in (SHIPPED, other)]
    fitted = fit_rows(rows, members[0][1]).images
    p = np.array([predict(m, c, fitted)["p_lens"] for m, c in members], dtype=np.float64)
    got = cat.loc[list(rows["id"])]
    np.testing.assert_allclose(got["p_lens"], p.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["p_lens_std"], p.std(0), rtol=1e-4, atol=1e-6)
    assert (got["p_lens_std"] > 0).all() and np.abs(p[0] - p[1]).max() > 1e-3

    # provenance names both members, in the catalogue and the summary
    from pipeline.io.files import sha256_file

    tags = [f"#{sha256_file(c / 'model.safetensors')[:12]}" for c in (SHIPPED, other)]
    tag = got["model_lens_detect"].iloc[0]
    assert tag.count("+") == 1 and all(t in tag for t in tags), tag
    assert summary["models"]["model_lens_detect"] == tag
    assert summary["stages"][0]["options"]["checkpoint"] == [str(SHIPPED), str(other)]
