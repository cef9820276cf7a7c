"""cxrlab.explain: where a model looks (Grad-CAM family heatmaps) and whether that is the lungs.

* :mod:`~cxrlab.explain.cam` — heatmaps for a run's model (pytorch-grad-cam), overlays.
* :mod:`~cxrlab.explain.unet` / :mod:`~cxrlab.explain.lungs` — a tiny lung-segmentation U-Net, trained by
  ``cxr lungs train`` on covid-ieee's image/mask pairs and shipped in ``assets/``.
* :mod:`~cxrlab.explain.score` — the lung-attention score: the share of a heatmap's mass inside the lungs.
* :mod:`~cxrlab.explain.explain` — ``cxr explain``: all of the above for a list of images.
"""
