"""Reports that explain a strategy's behaviour on a model and benchmark.

``python -m svlm.diagnostics.<name>``; see each module.
"""
