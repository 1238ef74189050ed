"""Inference: the Python predictor (``PPCRPredictor``) and what ``ppcr predict`` needs around it.

Import the pieces from their modules (``ppcr.inference.predictor`` …); this package itself
imports nothing so that the command line can use its torch-free helpers cheaply.
"""
