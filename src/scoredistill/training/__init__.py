"""The training layer: the [`Distiller`][scoredistill.training.distill.Distiller] loop and what it uses.

[`config`][scoredistill.training.config] (hyperparameters), [`ema`][scoredistill.training.ema],
[`fast`][scoredistill.training.fast] (channels_last, compile, CUDA graphs),
[`parallel`][scoredistill.training.parallel] (several processes),
[`checkpoint`][scoredistill.training.checkpoint] (atomic, resumable), [`monitor`][scoredistill.training.monitor]
(run logs), [`recipes`][scoredistill.training.recipes] (the paper's settings) and
[`fit`][scoredistill.training.fit] (fit a network to an analytic teacher).
"""
