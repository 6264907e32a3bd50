"""Training road: the Ray Train loop shared by all stages, Ray Tune search, augmentation,
metrics and evaluation. Import submodules directly (``pipeline.train.loop`` etc.); this
package imports nothing heavy."""
