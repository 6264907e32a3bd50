"""Training road: the Ray Train loop shared by all stages, Ray Tune search, augmentation and
evaluation (the metrics themselves are ``pipeline.metrics``, below the models). Import submodules
directly (``pipeline.train.loop`` etc.); this package imports nothing heavy."""
