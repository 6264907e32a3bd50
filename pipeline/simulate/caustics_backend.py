"""The caustics backend: the same scenes rendered in PyTorch, a batch at a time with torch.vmap.

Scenes are drawn on the CPU exactly as for lenstronomy (same priors, same RNG streams, same noise
code), then packed into fixed-size parameter arrays (unused profile slots get zero amplitude or
zero Einstein radius) so one ``torch.vmap`` call renders a batch. The physics are caustics'
pure functions (``caustics.lenses.func``, ``caustics.light.func``) with lenstronomy's parameter
conventions translated here:

- ellipticity (e1, e2) -> axis ratio q and position angle phi, as lenstronomy's ``param_util``;
- EPL slope t = gamma - 1, Einstein radius identical;
- Sersic: lenstronomy's radius is sqrt(q x^2 + y^2 / q), caustics' sqrt(x^2 + y^2 / q^2), so
  Re_caustics = R_sersic / sqrt(q); k from ``k_lenstronomy``;
- surface brightness x pixel area = e-/s per pixel, binned from the supersampled grid; then
  ``optics.observe`` (dust, stars, the scene's PSF at pixel resolution), as for lenstronomy.

It only renders; ``generate`` runs it on Ray actors (a GPU each when the cluster has GPUs).
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.simulate.instruments import Preset
from pipeline.simulate.optics import observe
from pipeline.simulate.render import amplitudes, lens_kwargs
from pipeline.simulate.scenes import Light, Scene

BATCH = 32  # no gain beyond ~32 scenes per vmap call on CPU (measured)
_FAR = 1e3


def _q_phi(e1: float, e2: float) -> tuple[float, float]:
    """lenstronomy (e1, e2) -> (q, phi) (``param_util.ellipticity2phi_q``)."""
    phi = math.atan2(e2, e1) / 2
    c = min(math.hypot(e1, e2), 0.9999)
    return (1 - c) / (1 + c), phi


class _Packer:
    """Turn scenes into padded NumPy parameter arrays (one row per scene)."""

    def __init__(self, preset: Preset):
        from lenstronomy.LightModel.light_model import LightModel

        self.preset = preset
        self._lm = {}
        self._LightModel = LightModel

    def _amps(self, comps: list[Light]) -> np.ndarray:
        """(K, B) lenstronomy amplitudes of components, per band."""
        if not comps:
            return np.zeros((0, len(self.preset.bands)))
        key = tuple(c.profile for c in comps)
        if key not in self._lm:
            self._lm[key] = self._LightModel(list(key))
        lm = self._lm[key]
        return np.array([[kw["amp"] for kw in amplitudes(lm, comps, band)]
                         for band in self.preset.bands]).T

    def _light(self, comps: list[Light]):
        amps = self._amps(comps)
        sersic, gauss = [], []
        for c, a in zip(comps, amps, strict=True):
            kw = c.kwargs
            if c.profile == "SERSIC_ELLIPSE":
                q, phi = _q_phi(kw["e1"], kw["e2"])
                sersic.append([kw["center_x"], kw["center_y"], q, phi, kw["n_sersic"],
                               kw["R_sersic"] / math.sqrt(q), *a])
            elif c.profile == "GAUSSIAN":
                gauss.append([kw["center_x"], kw["center_y"], kw["sigma"], *a])
            else:
                raise ValueError(f"caustics backend: light profile {c.profile!r} not supported")
        return sersic, gauss

    def pack(self, scenes: list[Scene]) -> dict[str, np.ndarray]:
        nb = len(self.preset.bands)
        rows = []
        for s in scenes:
            names, kws = lens_kwargs(s)
            epl = [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]  # x0, y0, q, phi, Rein, t: Rein 0 = no lens
            shear = [0.0, 0.0, 0.0, 0.0]
            sheet = [0.0, 0.0, 0.0]
            pm = []
            for name, kw in zip(names, kws, strict=True):
                if name in ("EPL_NUMBA", "EPL", "SIE"):
                    q, phi = _q_phi(kw["e1"], kw["e2"])
                    epl = [kw["center_x"], kw["center_y"], q, phi, kw["theta_E"],
                           kw.get("gamma", 2.0) - 1]
                elif name == "SHEAR":
                    shear = [kw.get("ra_0", 0.0), kw.get("dec_0", 0.0), kw["gamma1"], kw["gamma2"]]
                elif name == "CONVERGENCE":
                    sheet = [kw.get("ra_0", 0.0), kw.get("dec_0", 0.0), kw["kappa"]]
                elif name == "POINT_MASS":
                    pm.append([kw["center_x"], kw["center_y"], kw["theta_E"]])
                else:
                    raise ValueError(f"caustics backend: mass profile {name!r} not supported")
            rows.append((epl, shear, sheet, pm, *self._light(s.source), *self._light(s.light)))

        def pad(idx, width, fill):
            k = max(1, max(len(r[idx]) for r in rows))
            out = np.tile(np.asarray(fill, float), (len(rows), k, 1))
            for i, r in enumerate(rows):
                if r[idx]:
                    out[i, : len(r[idx])] = r[idx]
            return out

        sersic_fill = [_FAR, _FAR, 1.0, 0.0, 1.0, 1.0] + [0.0] * nb
        gauss_fill = [_FAR, _FAR, 1.0] + [0.0] * nb
        return {
            "epl": np.array([r[0] for r in rows]), "shear": np.array([r[1] for r in rows]),
            "sheet": np.array([r[2] for r in rows]), "pm": pad(3, 3, [_FAR, _FAR, 0.0]),
            "src_sersic": pad(4, 6 + nb, sersic_fill), "src_gauss": pad(5, 3 + nb, gauss_fill),
            "light_sersic": pad(6, 6 + nb, sersic_fill), "light_gauss": pad(7, 3 + nb, gauss_fill),
        }


class CausticsRenderer:
    """Render scenes of one preset with caustics on ``device`` (CUDA when available)."""

    def __init__(self, preset: Preset, device: str | None = None, dtype=None):
        import torch

        self.torch = torch
        self.preset = preset
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or torch.float32
        self._packer = _Packer(preset)
        s, n = preset.supersampling, preset.size
        pix = preset.pixel_scale
        # sub-pixel centres on lenstronomy's grid: (0, 0) at the centre of the cutout
        sub = (torch.arange(n * s, dtype=torch.float64) + 0.5) / s - 0.5 - (n - 1) / 2
        yy, xx = torch.meshgrid(sub * pix, sub * pix, indexing="ij")
        self._x = xx.to(self.device, self.dtype)
        self._y = yy.to(self.device, self.dtype)
        self._pixel_area = pix**2
        self._render = torch.vmap(self._render_one)

    # -- physics of one scene (vmapped) ------------------------------------------------------
    def _sersic(self, p, x, y):
        from caustics.light.func import brightness_sersic, k_lenstronomy

        x0, y0, q, phi, n, re = (p[:, i, None, None] for i in range(6))
        sb = brightness_sersic(x0, y0, q, phi, n, re, 1.0, x, y, k_lenstronomy(n))  # (K, H, W)
        return self.torch.einsum("khw,kb->bhw", sb, p[:, 6:])

    def _gauss(self, p, x, y):
        x0, y0, sig = (p[:, i, None, None] for i in range(3))
        sb = self.torch.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sig**2)) / (2 * math.pi * sig**2)
        return self.torch.einsum("khw,kb->bhw", sb, p[:, 3:])

    def _render_one(self, epl, shear, sheet, pm, src_s, src_g, light_s, light_g):
        from caustics.lenses.func import (
            reduced_deflection_angle_epl,
            reduced_deflection_angle_external_shear,
            reduced_deflection_angle_mass_sheet,
            reduced_deflection_angle_point,
        )

        x, y = self._x, self._y
        ax, ay = reduced_deflection_angle_epl(*epl[:6], x, y, 18)
        sx, sy = reduced_deflection_angle_external_shear(*shear, x, y)
        kx, ky = reduced_deflection_angle_mass_sheet(*sheet, x, y)
        px, py = reduced_deflection_angle_point(pm[:, 0, None, None], pm[:, 1, None, None],
                                                pm[:, 2, None, None], x, y)
        bx = x - ax - sx - kx - px.sum(0)
        by = y - ay - sy - ky - py.sum(0)
        arcs = self._sersic(src_s, bx, by) + self._gauss(src_g, bx, by)
        light = self._sersic(light_s, x, y) + self._gauss(light_g, x, y)
        return self.torch.stack([arcs, light])  # (2, B, Hs, Ws) surface brightness

    def _bin(self, sb):
        """(N, 2, B, Hs, Ws) surface brightness -> e-/s per pixel (N, 2, B, H, W), no PSF."""
        n, two, nb, hs, ws = sb.shape
        s = self.preset.supersampling
        binned = self.torch.nn.functional.avg_pool2d(sb.reshape(n * two, nb, hs, ws), s)
        return (binned * self._pixel_area).reshape(n, two, nb, hs // s, ws // s)

    def render_batch(self, scenes: list[Scene]) -> tuple[np.ndarray, np.ndarray]:
        """Noiseless images and lensed-source parts, each (N, B, H, W) float64 e-/s."""
        torch = self.torch
        packed = self._packer.pack(scenes)
        order = ("epl", "shear", "sheet", "pm", "src_sersic", "src_gauss", "light_sersic",
                 "light_gauss")
        args = [torch.as_tensor(packed[k], dtype=self.dtype, device=self.device) for k in order]
        with torch.no_grad():
            sb = self._render(*args)
            out = self._bin(torch.nan_to_num(sb)).double().cpu().numpy()
        seen = [observe(s, light, arcs, self.preset)
                for s, arcs, light in zip(scenes, out[:, 0], out[:, 1], strict=True)]
        return np.stack([r.clean for r in seen]), np.stack([r.arcs for r in seen])

    def render_many(self, scenes: list[Scene], batch: int = BATCH):
        """Render in batches of similar scenes (few padded profile slots), in the input order."""
        def size(s: Scene):
            n_pm = 0 if s.point_masses is None else len(s.point_masses["x"])
            return (len(s.light), n_pm, len(s.source))

        order = sorted(range(len(scenes)), key=lambda i: size(scenes[i]))
        shape = (len(scenes), len(self.preset.bands), self.preset.size, self.preset.size)
        clean, arcs = np.empty(shape), np.empty(shape)
        for i in range(0, len(order), batch):
            idx = order[i: i + batch]
            clean[idx], arcs[idx] = self.render_batch([scenes[j] for j in idx])
        return clean, arcs
