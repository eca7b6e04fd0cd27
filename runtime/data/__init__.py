"""Images in: data sets, the preprocessing pipeline, and the batch loader."""
from .dataset import ArrayDataSet, DataSet, ImageFolder, Subset
from .loader import batches, epoch_order
from .transforms import (CenterCrop, ChannelOrder, Decode, Normalize, Pipeline, RandomCrop, RandomHorizontalFlip,
                         Resize)

__all__ = ["ArrayDataSet", "DataSet", "ImageFolder", "Subset", "batches", "epoch_order", "CenterCrop", "ChannelOrder",
           "Decode", "Normalize", "Pipeline", "RandomCrop", "RandomHorizontalFlip", "Resize"]
