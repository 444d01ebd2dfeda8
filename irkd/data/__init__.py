"""Framework-free data pipeline: dataset folders, image I/O, augmentation, batching, checks.

Only numpy, OpenCV and tqdm are used here: MindSpore and PyTorch code take the numpy
arrays these functions produce.
"""

from irkd.data.check import AREA_BINS, DatasetReport, check_dataset, format_report
from irkd.data.dataset import IMAGE_EXTENSIONS, LAYOUTS, IRSTDDataset, Sample
from irkd.data.errors import DatasetError, MaskSizeWarning
from irkd.data.io import read_gray, read_mask, write_png
from irkd.data.loader import TrainBatches, iter_eval, split_train_val
from irkd.data.stats import compute_mean_std, require_targets, verify_split
from irkd.data.synth import synthesize
from irkd.data.transforms import TrainAugment, crop_back, normalize, pad_to_multiple

__all__ = [
    "AREA_BINS",
    "DatasetError",
    "DatasetReport",
    "IMAGE_EXTENSIONS",
    "IRSTDDataset",
    "LAYOUTS",
    "MaskSizeWarning",
    "Sample",
    "TrainAugment",
    "TrainBatches",
    "check_dataset",
    "compute_mean_std",
    "crop_back",
    "format_report",
    "require_targets",
    "verify_split",
    "iter_eval",
    "normalize",
    "pad_to_multiple",
    "read_gray",
    "read_mask",
    "split_train_val",
    "synthesize",
    "write_png",
]
