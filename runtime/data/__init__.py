"""Images in: data sets, the preprocessing pipeline, and the batch loader."""
from .dataset import ArrayDataSet, DataSet, ImageFolder, Subset
from .labels import read_labels, write_labels
from .loader import Batch, batches, epoch_order, indexed_batches
from .transforms import (DEFAULT_MAX_PIXELS, CenterCrop, ChannelOrder, Decode, ImageError, ImageTooLarge, Normalize,
                         Pipeline, RandomCrop, RandomHorizontalFlip, Resize, max_pixels)

__all__ = ["ArrayDataSet", "DataSet", "ImageFolder", "Subset", "read_labels", "write_labels", "Batch", "batches",
           "indexed_batches", "epoch_order", "CenterCrop", "ChannelOrder", "Decode", "DEFAULT_MAX_PIXELS", "ImageError",
           "ImageTooLarge", "max_pixels", "Normalize", "Pipeline", "RandomCrop", "RandomHorizontalFlip", "Resize"]
