"""Images in: data sets, the preprocessing pipeline, and the batch loader."""
from .dataset import ArrayDataSet, DataSet, ImageFolder, Subset
from .labels import read_labels, write_labels
from .loader import Batch, batches, epoch_order, indexed_batches
from .transforms import (CenterCrop, ChannelOrder, Decode, Normalize, Pipeline, RandomCrop, RandomHorizontalFlip,
                         Resize)

__all__ = ["ArrayDataSet", "DataSet", "ImageFolder", "Subset", "read_labels", "write_labels", "Batch", "batches", "indexed_batches", "epoch_order", "CenterCrop", "ChannelOrder",
           "Decode", "Normalize", "Pipeline", "RandomCrop", "RandomHorizontalFlip", "Resize"]
