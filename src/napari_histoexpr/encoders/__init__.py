"""Pretrained encoders at work: frozen features computed once per section and cached on disk
(:mod:`.feature_cache`), heads fitted on them in seconds (:mod:`.heads`: the HEST-Benchmark protocol of
standardisation, PCA and ridge, or a small MLP), and the training that turns both into a normal model
folder (:mod:`.head_training`). The encoders themselves (architectures, files) are
:mod:`napari_histoexpr.models.encoder_files`.
"""
