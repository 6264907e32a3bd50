"""`lensray mine`: a run's top-scored cutouts, graded, as the next round's training set."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from _cascade import BANDS, PIXEL_SCALE, SIZE, make_checkpoints, make_images, make_shards

from pipeline.cli import main
from pipeline.io import ReadOptions, read_fits_file, write_cube_shard
from pipeline.run import run_cascade


@pytest.fixture(scope="module")
def run(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("mine")
    ckpts = make_checkpoints(root / "ckpt")
    make_shards(root / "field", [40, 30], seed=7)
    out = root / "run"
    run_cascade([root / "field"], out, bands=BANDS, size=SIZE, checkpoints=ckpts,
                stages=["lens-detect"], batch_size=16, progress=False, gallery=0)
    base = root / "base"  # a previous round's set: a simulate-style manifest over two shards
    for split, n, seed in (("train", 12, 1), ("test", 5, 2)):
        write_cube_shard(base / split / "shard-000.fits", make_images(n, seed),
                         {"id": np.array([f"{split}{j}" for j in range(n)]),
                          "is_lens": np.arange(n) % 2, "kind": np.array(["sim"] * n)},
                         BANDS, pixel_scale=PIXEL_SCALE)
    (base / "manifest.json").write_text(json.dumps({"splits": {
        "train": {"n": 12, "shards": [{"path": "train/shard-000.fits", "n": 12}]},
        "test": {"n": 5, "shards": [{"path": "test/shard-000.fits", "n": 5}]}}}))
    return root, out, base


def _rows(path):
    return read_fits_file(str(path), ReadOptions())


def test_mine_writes_the_graded_top_cutouts_as_training_shards(run, capsys):
    root, out, base = run
    cat = pq.read_table(out / "catalog").to_pandas().sort_values("p_lens", ascending=False)
    top = cat.head(10)
    lens_id = top["id"].iloc[3]  # the grader found one lens among the top ten
    labels = root / "graded.csv"
    labels.write_text(f"source,label\n{lens_id},1\n{top['id'].iloc[0]},0\n")
    mined = root / "round1"
    assert main(["mine", str(out), "--top", "10", "--labels", str(labels), "--out", str(mined),
                 "--base", str(base), "--val-fraction", "0.3"]) == 0
    manifest = json.loads((mined / "manifest.json").read_text())
    assert manifest["n"] == 10 and manifest["adds_up"] and not manifest["skipped"]
    assert manifest["counts"] == {"lens": 1, "non-lens": 9}

    rows = {}
    for split in ("train", "val"):
        for shard in (mined / split).glob("mined-*.fits"):
            got = _rows(shard)
            rows.update({rid: (got["image"][i], got["is_lens"][i], got["p_lens_mined"][i])
                         for i, rid in enumerate(got["id"])})
    assert set(rows) == set(top["id"])  # exactly the ten highest scores
    assert [rid for rid, (_, lab, _) in rows.items() if lab == 1] == [lens_id]
    for rid, p in zip(top["id"], top["p_lens"], strict=True):
        assert rows[rid][2] == pytest.approx(p)
    # The pixels are the source file's cutout, as the lens finder saw it (same size and band).
    src = top.iloc[0]
    original = _rows(src["source"])
    i = list(original["id"]).index(src["id"])
    np.testing.assert_allclose(rows[src["id"]][0], original["image"][i], rtol=1e-6)

    # The base set is linked in: its test split stays the test split; train holds both, and
    # the training reader takes the mixed shards (their label columns differ).
    assert (mined / "test" / "base-shard-000.fits").is_file()
    assert manifest["splits"]["test"]["n"] == 5
    n_train = manifest["splits"]["train"]["n"]
    assert n_train == 12 + sum(e["n"] for e in manifest["splits"]["train"]["shards"]
                               if "mined-" in e["path"])
    from pipeline.models.normalize import DEFAULT_NORMALIZATION
    from pipeline.train.data import load_split

    ds = load_split(mined, "train", "lens-detect", {"bands": BANDS, "size": SIZE,
                                                    "normalization": DEFAULT_NORMALIZATION})
    got = ds.take_all()
    assert len(got) == n_train
    mined_train = {rid for rid in _rows(mined / "train" / "mined-00000.fits")["id"]}
    assert sum(r["is_lens"] for r in got) == 6 + int(lens_id in mined_train)  # 6 base lenses


def test_mine_refuses_what_it_cannot_use(run, tmp_path):
    root, out, _ = run
    with pytest.raises(SystemExit, match="no summary.json"):
        main(["mine", str(root / "field"), "--top", "5", "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="--top must be >= 1"):
        main(["mine", str(out), "--top", "0", "--out", str(tmp_path / "b")])
    main(["mine", str(out), "--top", "3", "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="exists"):
        main(["mine", str(out), "--top", "3", "--out", str(tmp_path / "c")])
