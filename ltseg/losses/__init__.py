"""Long-tail classification losses; importing this package registers every method."""
from ltseg.losses.base import LOSSES, ClassificationLoss, LossContext, build_loss, register_loss
from ltseg.losses.bce import SigmoidBCE
from ltseg.losses.beql import BackgroundEQL
from ltseg.losses.ce import SoftmaxCE
from ltseg.losses.drop_fixed import FixedDropLoss
from ltseg.losses.droploss import DropLoss
from ltseg.losses.eql import EqualizationLoss
from ltseg.losses.fbs_aegl import FBSAEGL
from ltseg.losses.federated import FederatedLoss
from ltseg.losses.focal import FocalLoss
from ltseg.losses.margin import ClassMarginCE
from ltseg.losses.normed_linear import NormedLinear
from ltseg.losses.reweight import InverseFrequencyCE
from ltseg.losses.seesaw import SeesawLoss
from ltseg.losses.seql import SoftmaxEQL

__all__ = [
    "LOSSES", "ClassificationLoss", "LossContext", "build_loss", "register_loss",
    "SoftmaxCE", "SigmoidBCE", "EqualizationLoss", "SoftmaxEQL", "BackgroundEQL",
    "FixedDropLoss", "DropLoss", "SeesawLoss", "NormedLinear", "FBSAEGL",
    "InverseFrequencyCE", "FocalLoss", "ClassMarginCE", "FederatedLoss",
]
