"""Semantic-segmentation models (dense ``[B, K, H/8, W/8]`` logits); every module here registers models.

See :mod:`kdlab.models.segmentation.nets` for the registered DeepLabV3 / PSPNet models, their parameter counts and
the key mapping of the reference checkpoints.
"""
