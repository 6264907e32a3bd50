"""Simulation throughput: images/s per core per preset and task, and the Ray speed-up 1 -> 2 workers.

    python benchmarks/simulate_throughput.py [--n 200] [--ray-n 800] [--skip-ray] [--skip-caustics]

Per-core numbers render + add noise in this process on one thread (scenes drawn, rendered with
lenstronomy, noise and arc S/N; no file writing). The Ray rows run ``simulate()`` end to end
(shards written) on an embedded local Ray with 1 and then 2 CPUs, after a warm-up run.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # per-core numbers
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def per_core(preset_name: str, task: str, n: int, backend: str = "lenstronomy") -> dict:
    """Images/s on one core, overall and per class."""
    from pipeline.simulate import default_priors, get_preset
    from pipeline.simulate.noise import add_noise, arc_snr
    from pipeline.simulate.render import LenstronomyRenderer
    from pipeline.simulate.scenes import allocate, sample_scene

    preset, priors = get_preset(preset_name), default_priors(preset_name)
    fractions = priors.class_fractions(task)
    rng = np.random.default_rng(0)
    kinds = allocate(n, fractions, rng)
    if backend == "caustics":
        import torch

        from pipeline.simulate.caustics_backend import CausticsRenderer

        torch.set_num_threads(1)
        r = CausticsRenderer(preset, device="cpu")
        r.render_many([sample_scene(rng, preset, priors, task, k) for k in kinds[:32]])  # warm up
        t0 = time.perf_counter()
        scenes = [sample_scene(rng, preset, priors, task, k) for k in kinds]
        clean, arcs = r.render_many(scenes)
        for i in range(n):
            add_noise(rng, clean[i], preset.bands)
        dt = time.perf_counter() - t0
        return {"all": n / dt}
    r = LenstronomyRenderer(preset)
    for k in fractions:  # warm up caches and numba
        r.render(sample_scene(rng, preset, priors, task, k))
    per_class: dict[str, float] = {}
    for k in kinds:
        t0 = time.perf_counter()
        s = sample_scene(rng, preset, priors, task, k)
        out = r.render(s)
        add_noise(rng, out.clean, preset.bands)
        if s.lens:
            arc_snr(out.arcs, out.clean, preset.bands)
        per_class[k] = per_class.get(k, 0.0) + time.perf_counter() - t0
    counts = {k: kinds.count(k) for k in fractions}
    res = {"all": n / sum(per_class.values())}
    res.update({k: counts[k] / per_class[k] for k in per_class})
    return res


def ray_speedup(n: int, shard_size: int) -> dict[int, float]:
    """Wall-clock images/s of ``simulate`` (euclid-vis lens) on local Ray with 1 and 2 CPUs."""
    import ray

    from pipeline.simulate import simulate

    out = {}
    for cpus in (1, 2):
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        try:
            with tempfile.TemporaryDirectory() as d:
                # warm-up: start workers, import lenstronomy, compile numba
                simulate("euclid-vis", "lens", 2 * cpus, 0, f"{d}/w", shard_size=1,
                         split_fractions=(1, 0, 0), progress=False)
                t0 = time.perf_counter()
                simulate("euclid-vis", "lens", n, 1, f"{d}/run", shard_size=shard_size,
                         split_fractions=(1, 0, 0), progress=False)
                out[cpus] = n / (time.perf_counter() - t0)
        finally:
            ray.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="images per preset/task (per core)")
    ap.add_argument("--ray-n", type=int, default=800, help="images for the Ray speed-up runs")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--skip-caustics", action="store_true")
    args = ap.parse_args()

    print(f"load average at start: {os.getloadavg()[0]:.1f} (2 cores; shared machine)")
    print("\n| preset | task | backend | images/s per core | ms/image | per class (images/s) |")
    print("|---|---|---|---:|---:|---|")
    rows = [(p, t, "lenstronomy") for p in ("euclid-vis", "hst", "ground-gri")
            for t in ("lens", "substructure")]
    if not args.skip_caustics:
        rows += [("euclid-vis", "lens", "caustics"), ("euclid-vis", "substructure", "caustics")]
    base = {}
    for p, t, b in rows:
        n = args.n if t == "lens" else max(30, args.n // 3)
        res = per_core(p, t, n, b)
        base.setdefault((p, t), res["all"])
        cls = ", ".join(f"{k} {v:.0f}" for k, v in res.items() if k != "all")
        print(f"| {p} | {t} | {b} | {res['all']:.1f} | {1e3 / res['all']:.1f} | {cls} |",
              flush=True)
    lens, sub = base[("euclid-vis", "lens")], base[("euclid-vis", "substructure")]
    print(f"\nsubstructure costs {lens / sub:.1f}x a lens-task image on euclid-vis (lenstronomy)")

    if not args.skip_ray:
        sp = ray_speedup(args.ray_n, shard_size=max(1, args.ray_n // 8))
        print("\n| Ray CPUs | images/s (end to end, shards written) | speed-up |")
        print("|---:|---:|---:|")
        for cpus, rate in sp.items():
            print(f"| {cpus} | {rate:.1f} | {rate / sp[1]:.2f}x |")


if __name__ == "__main__":
    main()
