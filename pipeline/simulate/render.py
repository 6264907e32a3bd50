"""The lenstronomy backend: renders a :class:`~pipeline.simulate.scenes.Scene` to pixels.

One ``ImageModel`` per band and per model structure (profile name lists) is built once and
cached, so rendering a scene costs only the profile evaluations (a few ms at 64 px). Light is
binned to pixels without a PSF; ``optics.observe`` adds dust, stars and the scene's own PSF.
Point-mass substructure is padded to a multiple of ``PM_BLOCK`` massless point masses so that
the cache holds few structures.
"""

from __future__ import annotations

import numpy as np

from pipeline.simulate.instruments import Band, Preset
from pipeline.simulate.optics import Rendered, observe
from pipeline.simulate.scenes import Light, Scene

PM_BLOCK = 32
_FAR = 1e3  # where padding point masses (theta_E = 0) sit, far outside the field


def amplitudes(light_model, comps: list[Light], band: Band) -> list[dict]:
    """lenstronomy kwargs with ``amp`` set so each component has its magnitude in ``band``."""
    kwargs = [dict(c.kwargs) for c in comps]
    norms = light_model.total_flux(kwargs, norm=True)
    return [dict(kw, amp=float(band.mag_to_cps(c.mags[band.name])) / n)
            for kw, c, n in zip(kwargs, comps, norms, strict=True)]


def lens_kwargs(scene: Scene) -> tuple[list[str], list[dict]]:
    """Mass model names and kwargs, point masses padded to a multiple of PM_BLOCK."""
    names = [n for n, _ in scene.lens]
    kwargs = [dict(k) for _, k in scene.lens]
    pm = scene.point_masses
    if pm is not None and len(pm["x"]):
        n = len(pm["x"])
        n_pad = -(-n // PM_BLOCK) * PM_BLOCK
        te = np.zeros(n_pad)
        te[:n] = pm["theta_e"]
        x = np.full(n_pad, _FAR)
        x[:n] = pm["x"]
        y = np.full(n_pad, _FAR)
        y[:n] = pm["y"]
        names += ["POINT_MASS"] * n_pad
        kwargs += [{"theta_E": float(t), "center_x": float(a), "center_y": float(b)}
                   for t, a, b in zip(te, x, y, strict=True)]
    return names, kwargs


class LenstronomyRenderer:
    """Render scenes of one preset with lenstronomy (supersampled, then observed)."""

    def __init__(self, preset: Preset):
        from lenstronomy.Data.imaging_data import ImageData
        from lenstronomy.Data.psf import PSF
        from lenstronomy.Util.simulation_util import data_configure_simple

        self.preset = preset
        self._data = []
        self._psf = []
        for band in preset.bands:
            kw = data_configure_simple(preset.size, band.pixel_scale, exposure_time=1.0,
                                       background_rms=1.0, center_ra=0.0, center_dec=0.0)
            self._data.append(ImageData(**kw))
            self._psf.append(PSF(psf_type="NONE"))
        self._numerics = {"supersampling_factor": preset.supersampling}
        self._cache: dict[tuple, tuple] = {}

    def _models(self, lens_names, src_names, light_names):
        key = (tuple(lens_names), tuple(src_names), tuple(light_names))
        if key not in self._cache:
            from lenstronomy.ImSim.image_model import ImageModel
            from lenstronomy.LensModel.lens_model import LensModel
            from lenstronomy.LightModel.light_model import LightModel

            lens = LensModel(list(lens_names))
            src = LightModel(list(src_names))
            light = LightModel(list(light_names))
            ims = [ImageModel(d, p, lens_model_class=lens, source_model_class=src,
                              lens_light_model_class=light, kwargs_numerics=self._numerics)
                   for d, p in zip(self._data, self._psf, strict=True)]
            self._cache[key] = (ims, src, light)
        return self._cache[key]

    def render(self, scene: Scene) -> Rendered:
        """Noiseless image of a scene and its lensed-source part, (B, H, W) float64 e-/s."""
        lens_names, kw_lens = lens_kwargs(scene)
        ims, src_model, light_model = self._models(
            lens_names, [c.profile for c in scene.source], [c.profile for c in scene.light])
        shape = (len(self.preset.bands), self.preset.size, self.preset.size)
        light = np.zeros(shape)
        arcs = np.zeros(shape)
        for b, (band, im) in enumerate(zip(self.preset.bands, ims, strict=True)):
            if scene.source:
                kw_src = amplitudes(src_model, scene.source, band)
                arcs[b] = im.source_surface_brightness(kw_src, kw_lens if scene.lens else None)
            if scene.light:
                light[b] = im.lens_surface_brightness(amplitudes(light_model, scene.light, band))
        return observe(scene, light, arcs, self.preset)
