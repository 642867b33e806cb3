"""MedSegDiff V1/V2 networks (mask diffusion UNet + image condition branch)."""

from napari_medsegdiff.model.losses import anchor_loss
from napari_medsegdiff.model.unet import Condition, MedSegDiff, ModelOutput, build_model

__all__ = ["Condition", "MedSegDiff", "ModelOutput", "anchor_loss", "build_model"]
