"""Pretrained encoders at work: heads fitted in seconds on their frozen features (:mod:`.heads`: the
HEST-Benchmark protocol of standardisation, PCA and ridge, or a small MLP), and the training that turns
both into a normal model folder (:mod:`.head_training`). The features are computed once per section and
cached on disk by :mod:`napari_histoexpr.infer.feature_cache`; the encoders themselves (architectures,
files) are :mod:`napari_histoexpr.models.encoder_files`.
"""
