"""Datasets as in-memory tensors in the data's scale, by source name; the embedded default is scikit-learn's digits.

One module per source (digits, idx for MNIST / Fashion-MNIST, mnist_sample, cifar, npz), the shared `Dataset`
in base, and the registry that maps source strings to loaders. Nothing here downloads anything. Imports only the
vocabulary (`errors`): every other layer may read data.

    data = load_data("mnist:/data/mnist")   # or "digits", "mnist-sample", "cifar10:PATH", "npz:FILE"
"""

from .base import Dataset, channel_stats, make_dataset, stratified_split
from .cifar import load_cifar10
from .digits import load_digits
from .idx import load_fashion_mnist, load_mnist, read_idx
from .mnist_sample import MNIST_SAMPLE_INSTALL, load_mnist_sample, mnist_sample_path
from .npz import load_npz
from .registry import DATA_SOURCES, FILE_SOURCES, canonical_source, load_data, register_data_source

__all__ = [
    "DATA_SOURCES",
    "FILE_SOURCES",
    "MNIST_SAMPLE_INSTALL",
    "Dataset",
    "canonical_source",
    "channel_stats",
    "load_cifar10",
    "load_data",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "load_mnist_sample",
    "load_npz",
    "make_dataset",
    "mnist_sample_path",
    "read_idx",
    "register_data_source",
    "stratified_split",
]
