"""Sample-quality metrics: FID (Heusel et al. 2017) and improved precision/recall (Kynkäänniemi et al. 2019), and
the contract of metrics evaluated while training ([`GeneratorMetric`][scoredistill.metrics.base.GeneratorMetric]).

The optional extra ``metrics`` (``pip install -e ".[metrics]"``). Statistics and distances come from
`scoredistill.metrics.stats`, feature extraction from `scoredistill.metrics.extract`; the Inception network from
`scoredistill.metrics.inception`, imported only when one of its names is first used, so importing this package loads
no network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import GeneratorMetric as GeneratorMetric
from .base import is_better as is_better
from .evaluator import FIDMetric as FIDMetric
from .extract import FeatureExtractor as FeatureExtractor
from .extract import dataset_stats as dataset_stats
from .extract import generator_stats as generator_stats
from .extract import image_stats as image_stats
from .stats import MAX_FEATURE_DIM as MAX_FEATURE_DIM
from .stats import FeatureStats as FeatureStats
from .stats import frechet_distance as frechet_distance
from .stats import precision_recall as precision_recall

if TYPE_CHECKING:
    from .inception import FEATURE_DIM as FEATURE_DIM
    from .inception import InceptionV3 as InceptionV3
    from .inception import export_inception_safetensors as export_inception_safetensors
    from .inception import find_inception_torchscript as find_inception_torchscript
    from .inception import load_inception as load_inception
    from .inception import resize_bilinear_tf1 as resize_bilinear_tf1

_INCEPTION = (
    "FEATURE_DIM",
    "InceptionV3",
    "export_inception_safetensors",
    "find_inception_torchscript",
    "load_inception",
    "resize_bilinear_tf1",
)

__all__ = [
    "FEATURE_DIM",
    "MAX_FEATURE_DIM",
    "FIDMetric",
    "FeatureExtractor",
    "FeatureStats",
    "GeneratorMetric",
    "InceptionV3",
    "dataset_stats",
    "export_inception_safetensors",
    "find_inception_torchscript",
    "frechet_distance",
    "generator_stats",
    "image_stats",
    "is_better",
    "load_inception",
    "precision_recall",
    "resize_bilinear_tf1",
]


def __getattr__(name: str) -> Any:
    if name in _INCEPTION:
        from . import inception

        return getattr(inception, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
