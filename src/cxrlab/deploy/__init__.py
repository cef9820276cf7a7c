"""The model in use: export a run (ONNX / TorchScript with its preprocessing contract) and serve it over HTTP.

Above ``pipeline`` and ``evaluation``: :mod:`cxrlab.deploy.export` writes a portable model file whose metadata
carries everything needed to feed it correctly; :mod:`cxrlab.deploy.serve` is a FastAPI service with a small
web page. Both load a run through :func:`cxrlab.evaluation.inference.load_run` (safetensors, no pickle).
"""
