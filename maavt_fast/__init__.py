"""maavt_fast: a fast, tested MA-AVT (audio-visual parameter-efficient transformer) with fused Triton ops.

The model is `maavt_fast.model.MAAVT`, the configuration `maavt_fast.config`, the drop-in ops
`maavt_fast.ops`, the data pipeline `maavt_fast.data`, the trainer `maavt_fast.train`, the CLI `maavt`.
Only `maavt_fast.ops` works with the core dependencies (torch, triton, numpy); the other parts name the pip
extra they need when it is missing (`maavt_fast._extras`).
"""
__version__ = "0.1.0"
