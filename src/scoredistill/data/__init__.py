"""Real images: EDM-style dataset zips (and image folders), the resumable batch stream, EDM's augmentation and PNG
writing.

``scoredistill.data`` re-exports the dataset API of [`scoredistill.data.zips`][scoredistill.data.zips];
[`augment`][scoredistill.data.augment] holds EDM's ``AugmentPipe`` and [`imageio`][scoredistill.data.imageio]
the PNG writer.
"""

from .folders import ImageFolderDataset as ImageFolderDataset
from .zips import IMAGE_EXTENSIONS as IMAGE_EXTENSIONS
from .zips import MAX_COMPRESSION_RATIO as MAX_COMPRESSION_RATIO
from .zips import MAX_IMAGE_PIXELS as MAX_IMAGE_PIXELS
from .zips import MAX_LABEL_DIM as MAX_LABEL_DIM
from .zips import MAX_MEMBER_BYTES as MAX_MEMBER_BYTES
from .zips import DatasetError as DatasetError
from .zips import ImageZipDataset as ImageZipDataset
from .zips import RealBatches as RealBatches
from .zips import check_compatible as check_compatible
from .zips import real_batches as real_batches

__all__ = ["DatasetError", "ImageFolderDataset", "ImageZipDataset", "RealBatches", "check_compatible", "real_batches"]
