"""Pipeline: stage order rules, map_batches arguments, and a real run over a Ray Dataset."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import ray.cloudpickle
from _cascade import make_checkpoints, make_images

from pipeline.compose import Chain, Pipeline, check_order
from pipeline.stages import CANDIDATE, Denoise, LensDetect, Stage, Substructure


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    ckpts = make_checkpoints(tmp_path_factory.mktemp("ckpt"))
    # A copy of the lens finder declared as trained on the test denoiser's output (what
    # `lensray train --denoiser` records): it reads the denoise stage's column.
    import json
    import shutil

    from pipeline.models.checkpoint import weights_tag

    fed = ckpts["lens-detect"].parent / "lens-detect-on-denoised"
    shutil.copytree(ckpts["lens-detect"], fed)
    dn = json.loads((ckpts["denoise"] / "config.json").read_text())
    cfg = json.loads((fed / "config.json").read_text())
    cfg["denoiser_weights"] = weights_tag(ckpts["denoise"], dn)
    (fed / "config.json").write_text(json.dumps(cfg))
    return {**ckpts, "lens-detect-fed": fed}


# Ray workers cannot import this test module: ship the custom stages below by value (a stage
# defined in a user's script or notebook, i.e. in __main__, is shipped by value anyway).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Flux(Stage):
    """Custom stage (no model): summed pixels."""

    name = "flux"
    writes = ("flux",)

    def compute(self, rows):
        return {"flux": rows["image"].sum(axis=(1, 2, 3)).astype(np.float64)}


class NeedsFlux(Stage):
    name = "bright"
    reads = ("flux",)
    writes = ("bright",)

    def compute(self, rows):
        return {"bright": rows["flux"] > np.median(rows["flux"])}


def test_order_rules(ckpts):
    det = LensDetect(checkpoint=ckpts["lens-detect"])
    den = Denoise(checkpoint=ckpts["denoise"])
    sub = Substructure(checkpoint=ckpts["substructure"])
    check_order([den, det, sub])
    check_order([det, sub])
    check_order([sub])
    fed = LensDetect(checkpoint=ckpts["lens-detect-fed"])
    check_order([den, fed, sub])
    check_order([det, den])  # harmless: the raw-trained finder takes nothing from it
    check_order([Flux(), NeedsFlux()])
    with pytest.raises(ValueError, match=r"reads \['denoised'\].*put a denoise stage before it"):
        check_order([fed])
    with pytest.raises(ValueError, match="Denoise rewrites 'denoised' after LensDetect read it"):
        check_order([den, fed, den])
    with pytest.raises(ValueError, match="both write 'denoised'"):
        check_order([den, den, det])
    with pytest.raises(ValueError, match="both write 'p_lens'"):
        check_order([det, LensDetect(checkpoint=ckpts["lens-detect"])])
    with pytest.raises(ValueError, match=r"NeedsFlux reads \['flux'\]"):
        check_order([NeedsFlux(), Flux()])
    with pytest.raises(TypeError, match="Stage instances"):
        Pipeline([lambda b: b])
    with pytest.raises(ValueError, match="at least one stage"):
        Pipeline([])


def test_map_args_cpu_cluster_uses_actor_pools_and_fractional_cpus(ckpts):
    import ray.data

    from pipeline.compose import Chain

    stages = [Denoise(checkpoint=ckpts["denoise"]), LensDetect(checkpoint=ckpts["lens-detect"]),
              Substructure(checkpoint=ckpts["substructure"], batch_size=512)]
    for fuse in (False, True):
        pipe = Pipeline(stages, fuse=fuse)
        groups = pipe.groups({"CPU": 2.0})
        specs = [g[0] if len(g) == 1 else Chain(g) for g in groups]
        total = 0.0
        for spec in specs:
            args = pipe.map_args(spec, {"CPU": 2.0})
            assert isinstance(args["compute"], ray.data.ActorPoolStrategy)
            assert "concurrency" not in args and "num_gpus" not in args
            assert 0 < args["num_cpus"] < 1  # whole CPUs on 2 cores starve the reads
            assert args["fn_constructor_kwargs"] == spec.options
            assert args["batch_size"] == spec.batch_size
            if fuse:  # one single-threaded chain actor per CPU, from the start
                assert args["compute"].min_size == args["compute"].max_size == 2
            total += args["num_cpus"]
        assert total <= 1.0  # leaves at least one CPU for read tasks when every pool has one actor
    for cpus in (2.0, 4.0, 64.0):  # the fused pool never takes the CPUs the reads need
        args = Pipeline(stages).map_args(Chain(stages), {"CPU": cpus})
        assert args["compute"].min_size == args["compute"].max_size == int(cpus)
        assert args["compute"].max_size * args["num_cpus"] <= cpus / 2
    chain = Chain(stages)  # what a fused actor rebuilds: the same stages with the same options
    assert chain.batch_size == 512 and chain.uses_model
    rebuilt = Chain(**ray.cloudpickle.loads(ray.cloudpickle.dumps(chain.options)))
    assert [type(m) for m in rebuilt.members] == [Denoise, LensDetect, Substructure]
    assert [m.options for m in rebuilt.members] == [s.options for s in stages]


def test_map_args_gpu_cluster_shares_gpus(ckpts):
    pipe = Pipeline([Denoise(checkpoint=ckpts["denoise"]), LensDetect(checkpoint=ckpts["lens-detect"]),
                     Flux(), Substructure(checkpoint=ckpts["substructure"], num_gpus=1, actors=2)])
    cluster = {"CPU": 32.0, "GPU": 4.0}
    den, det, flux, sub = (pipe.map_args(s, cluster) for s in pipe.stages)
    assert den["num_gpus"] == det["num_gpus"] == pytest.approx(1 / 3, abs=1e-3)
    assert den["compute"].max_size == 4 and den["compute"].min_size == 1
    assert "num_gpus" not in flux  # stages without a model stay on CPUs
    assert sub["num_gpus"] == 1 and sub["compute"].min_size == sub["compute"].max_size == 2


def test_planned_gpus_give_model_pools_gpu_shares_before_any_gpu_node_exists(ray_local, ckpts):
    """``gpus=N`` (``lensray run --gpus N``): on a cluster that has no GPU yet (an autoscaler
    adds GPU workers on demand) the model pools still request GPU shares."""
    stages = [Denoise(checkpoint=ckpts["denoise"]), LensDetect(checkpoint=ckpts["lens-detect"])]
    assert "GPU" not in ray_local.cluster_resources()
    planned = Pipeline(stages, gpus=2)
    assert planned.resources()["GPU"] == 2 and planned.resources()["CPU"] == 4
    assert not planned.reads_in_actors(planned.resources())  # read tasks feed GPU pools
    args = [planned.map_args(s, planned.resources()) for s in stages]
    assert [a["num_gpus"] for a in args] == [0.5, 0.5] and args[0]["compute"].max_size == 2
    present = Pipeline(stages)  # default: the cluster as it is, CPUs only
    assert "num_gpus" not in present.map_args(Chain(stages), present.resources())
    with pytest.raises(ValueError, match="gpus"):
        Pipeline(stages, gpus=-1)


def test_cpu_clusters_fuse_open_stages_into_one_actor_gpu_clusters_do_not(ckpts):
    den, det = Denoise(checkpoint=ckpts["denoise"]), LensDetect(checkpoint=ckpts["lens-detect"])
    sub = Substructure(checkpoint=ckpts["substructure"], batch_size=64)
    pinned = Flux(actors=2)  # explicit resources: keeps its own pool
    pipe = Pipeline([den, det, pinned, sub])
    assert [len(g) for g in pipe.groups({"CPU": 2.0})] == [2, 1, 1]
    assert [len(g) for g in pipe.groups({"CPU": 8.0, "GPU": 2.0})] == [1, 1, 1, 1]
    assert [len(g) for g in Pipeline([den, det, sub], fuse=False).groups({"CPU": 2.0})] == [1, 1, 1]
    fused_gpu = Pipeline([den, det, sub], fuse=True)
    assert [len(g) for g in fused_gpu.groups({"GPU": 1.0})] == [3]
    from pipeline.compose import Chain

    args = fused_gpu.map_args(Chain([den, det, sub]), {"CPU": 8.0, "GPU": 2.0})
    assert args["num_gpus"] == 1 and args["compute"].max_size == 2  # a whole GPU per chain
    # run_files: the actors read their own files only in a single CPU pool.
    from pipeline.compose import ReadChain

    assert Pipeline([den, det, sub]).reads_in_actors({"CPU": 2.0})
    assert Pipeline([det]).reads_in_actors({"CPU": 2.0})
    assert not Pipeline([den, det, sub], fuse=False).reads_in_actors({"CPU": 2.0})
    assert not pipe.reads_in_actors({"CPU": 2.0})  # the pinned stage keeps its own pool
    assert not fused_gpu.reads_in_actors({"CPU": 8.0, "GPU": 2.0})  # GPUs: read tasks feed them
    args = Pipeline([den, det, sub]).map_args(ReadChain([den, det, sub], read=None), {"CPU": 4.0})
    assert args["num_cpus"] == 1.0 and args["compute"].min_size == args["compute"].max_size == 4


def _dataset(ray, n=40, bad=(5, 17)):
    images = make_images(n, seed=7)
    rows = [
        {"id": f"f:{i}", "ra": 150.0 + i, "dec": 2.0, "image": images[i], "source": "f.fits",
         "index": i, "error": "f.fits: corrupt HDU" if i in bad else ""}  # "" = no error
        for i in range(n)
    ]
    return ray.data.from_items(rows, override_num_blocks=4)


@pytest.mark.parametrize("fuse", [False, True])
def test_pipeline_runs_on_ray_data_and_keeps_every_row(ray_local, ckpts, fuse):
    ds = _dataset(ray_local)
    pipe = Pipeline(fuse=fuse, stages=[
        Denoise(checkpoint=ckpts["denoise"], batch_size=8),
        LensDetect(threshold=0.5, checkpoint=ckpts["lens-detect"], batch_size=16),
        Flux(batch_size=16),
        Substructure(checkpoint=ckpts["substructure"], batch_size=8),
    ])
    out = pipe.run(ds, drop=["image"]).to_pandas().sort_values("index")
    assert "image" not in out.columns  # dropped inside the last pool
    col = {k: out[k].to_numpy() for k in out.columns}
    assert len(out) == 40 and out["id"].is_unique
    bad = np.array([isinstance(e, str) and e != "" for e in col["error"]])
    assert bad.sum() == 2
    p = col["p_lens"].astype(float)
    assert np.isnan(p[bad]).all() and np.isfinite(p[~bad]).all()
    cand = col[CANDIDATE].astype(bool)
    np.testing.assert_array_equal(cand, ~bad & (p >= 0.5))
    assert 0 < cand.sum() < (~bad).sum()
    p_cdm = col["p_cdm"].astype(float)
    assert np.isfinite(p_cdm[cand]).all() and np.isnan(p_cdm[~cand]).all()
    assert np.isfinite(col["flux"].astype(float)[~bad]).all()
    assert all(m.startswith("unet_denoiser@") for m in col["model_denoise"][~bad])
    # The denoiser costs the detector nothing: trained on raw cutouts, it scored the raw ones.
    from pipeline.models import load_checkpoint, predict

    raw = predict(*load_checkpoint(ckpts["lens-detect"]), make_images(40, seed=7)[~bad])["p_lens"]
    np.testing.assert_allclose(p[~bad], raw, atol=1e-5)


@pytest.mark.parametrize("fuse", [False, True])
def test_a_model_trained_on_the_denoisers_output_reads_it(ray_local, ckpts, fuse):
    pipe = Pipeline(fuse=fuse, stages=[
        Denoise(checkpoint=ckpts["denoise"], batch_size=8),
        LensDetect(threshold=0.5, checkpoint=ckpts["lens-detect-fed"], batch_size=16)])
    out = pipe.run(_dataset(ray_local)).to_pandas().sort_values("index")
    p = out["p_lens"].to_numpy(dtype=float)
    good = np.isfinite(p)
    assert good.sum() == 38
    from pipeline.models import load_checkpoint, predict

    model, cfg = load_checkpoint(ckpts["lens-detect-fed"])
    denoised = np.stack(out["denoised"].to_numpy()[good]).astype(np.float32)
    raw = np.stack(out["image"].to_numpy()[good]).astype(np.float32)
    np.testing.assert_allclose(p[good], predict(model, cfg, denoised)["p_lens"], atol=1e-5)
    assert not np.allclose(predict(model, cfg, raw)["p_lens"], p[good], atol=1e-3)


def test_run_files_reads_inside_the_fused_actor_with_the_same_rows_as_read_tasks(
    ray_local, ckpts, data_dir, tmp_path
):
    """On a CPU cluster the fused actor reads its own files; the result is what read tasks +
    separate pools give: real survey cutouts (some unreadable in VIS), cube shards with their
    labels, a broken file, a custom stage."""
    import shutil

    from _cascade import make_shards

    shutil.copytree(data_dir / "real", tmp_path / "in")
    make_shards(tmp_path / "in" / "cubes", [20, 7])
    (tmp_path / "in" / "broken.fits").write_bytes(b"SIMPLE  = T  truncated")

    def run(fuse):
        pipe = Pipeline(fuse=fuse, stages=[
            Denoise(checkpoint=ckpts["denoise"], batch_size=8),
            LensDetect(threshold=0.5, checkpoint=ckpts["lens-detect"], batch_size=16),
            Flux(batch_size=16),
            Substructure(checkpoint=ckpts["substructure"], batch_size=8),
        ])
        ds = pipe.run_files(tmp_path / "in", bands=["VIS"], size=32, drop=["image"])
        return str(ds), ds.to_pandas().sort_values("id").reset_index(drop=True)

    plan, fused = run(True)
    plan_sep, separate = run(False)
    assert plan.startswith("MapBatches(ReadChain)") and "Denoise" not in plan, plan
    assert "ReadChain" not in plan_sep and "MapBatches(Denoise)" in plan_sep, plan_sep
    from pipeline.io import ReadOptions, list_inputs, read_fits_file

    files = list_inputs(tmp_path / "in").files
    plain = [read_fits_file(f, ReadOptions(bands=("VIS",), size=32)) for f in files]
    assert len(fused) == sum(len(b["id"]) for b in plain) > 27 + 1  # every row, once
    assert sorted(fused.columns) == sorted(separate.columns) and "image" not in fused.columns
    assert list(fused["id"]) == list(separate["id"]) and fused["id"].is_unique
    bad = fused["error"].notna() & (fused["error"] != "")
    assert list(bad) == list(separate["error"].notna() & (separate["error"] != ""))
    assert any("broken.fits" in e for e in fused["error"][bad])
    good = ~bad
    # Batch composition changes float rounding, which the test networks' steep outputs
    # amplify to ~2e-3; a row paired with another row's result would be off by ~0.1-1.
    for col in ("p_lens", "flux", "p_cdm"):
        np.testing.assert_allclose(fused[col].astype(float), separate[col].astype(float),
                                   rtol=1e-4, atol=5e-3, equal_nan=True)
    assert np.isfinite(fused["p_lens"].astype(float)[good]).all()
