"""The web demo behind ``ppcr serve``: the logic here, the Gradio page in :mod:`ppcr.serving.app`.

Everything but ``app`` works without Gradio: :mod:`~ppcr.serving.segment` turns an image and
typed expressions into overlays and a table, :mod:`~ppcr.serving.session` keeps the loaded
model, :mod:`~ppcr.serving.models` lists the checkpoints to pick from and
:mod:`~ppcr.serving.examples` the Shapes-Ref images shipped with the package.
"""
