"""The artefact format, re-exported from [`scoredistill.io.hub`][scoredistill.io.hub] (it lives with the Hub glue).

``from scoredistill.io.artefact import CheckpointError`` (and the other names below) keeps working.
"""

from .hub import CONFIG_NAME as CONFIG_NAME
from .hub import DTYPES as DTYPES
from .hub import FORMAT_VERSION as FORMAT_VERSION
from .hub import MAX_CONFIG_BYTES as MAX_CONFIG_BYTES
from .hub import META_KEYS as META_KEYS
from .hub import MODEL_CARD_NAME as MODEL_CARD_NAME
from .hub import ROLES as ROLES
from .hub import WEIGHTS_NAME as WEIGHTS_NAME
from .hub import CheckpointError as CheckpointError
from .hub import WeightsMismatchError as WeightsMismatchError
from .hub import artefact_config as artefact_config
from .hub import load_weights as load_weights
from .hub import read_config as read_config
from .hub import save_weights as save_weights

__all__ = [
    "CONFIG_NAME",
    "DTYPES",
    "FORMAT_VERSION",
    "MAX_CONFIG_BYTES",
    "META_KEYS",
    "MODEL_CARD_NAME",
    "ROLES",
    "WEIGHTS_NAME",
    "CheckpointError",
    "WeightsMismatchError",
    "artefact_config",
    "load_weights",
    "read_config",
    "save_weights",
]
