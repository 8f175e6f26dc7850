"""MA-AVT: the fast model, its typed output and the release-order reference."""
from maavt_fast.model.backbone import WeightsError
from maavt_fast.model.maavt import MAAVT
from maavt_fast.model.outputs import MAAVTOutput

__all__ = ["MAAVT", "MAAVTOutput", "WeightsError"]
