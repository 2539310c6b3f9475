"""Data sources (one module each) and what they share; ``tlx.data.FolderData`` etc. are the config targets."""

from tlx.data.base import (
    ArraySamples,
    EpochSampler,
    FileSamples,
    ImageData,
    Samples,
    default_workers,
    stratified_subset,
)
from tlx.data.csvfile import CSVData
from tlx.data.fashion_mnist import FASHION_MNIST_CLASSES, FashionMNISTData
from tlx.data.folder import DEMO_ROOT, DemoData, FolderData
from tlx.sources import IMAGE_SUFFIXES, SPLITS

__all__ = [
    "ArraySamples",
    "CSVData",
    "DEMO_ROOT",
    "DemoData",
    "EpochSampler",
    "FASHION_MNIST_CLASSES",
    "FashionMNISTData",
    "FileSamples",
    "FolderData",
    "IMAGE_SUFFIXES",
    "ImageData",
    "SPLITS",
    "Samples",
    "default_workers",
    "stratified_subset",
]
