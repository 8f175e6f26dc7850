"""Drop-in fused ops: functional APIs, `torch.library` custom ops and `nn.Module` wrappers."""
from maavt_fast.ops.clip_loss import ClipLoss
from maavt_fast.ops.contrastive import (BlockwiseContrastiveLoss, blockwise_contrastive_loss,
                                        blockwise_contrastive_loss_reference, blockwise_projection)
from maavt_fast.ops.group_attention import GroupAttention, group_attention, group_attention_reference
from maavt_fast.ops.sigmoid import BlockwiseSigmoidLoss, blockwise_sigmoid_loss, blockwise_sigmoid_loss_reference
from maavt_fast.ops.siglip_loss import SigLipLoss

__all__ = [
    "BlockwiseContrastiveLoss", "ClipLoss", "blockwise_contrastive_loss", "blockwise_contrastive_loss_reference",
    "blockwise_projection", "GroupAttention", "group_attention", "group_attention_reference",
    "BlockwiseSigmoidLoss", "blockwise_sigmoid_loss", "blockwise_sigmoid_loss_reference", "SigLipLoss",
]
