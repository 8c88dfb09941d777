"""Readers of external data formats, one module per format family (see :mod:`vlmo_cli.data.sources.base`)."""

from .base import ImageRef, Record, Skip, SkipLog, Source
from .image_folder import ImageFolderSource
from .karpathy import KarpathySource
from .nlvr2 import Nlvr2Source
from .pairs import FilePairsSource, HfPairsSource, VisualGenomeSource
from .text_corpus import TextCorpusSource
from .vqav2 import Vqav2Source
from .webdataset import WebDatasetSource

__all__ = [
    "FilePairsSource", "HfPairsSource", "ImageFolderSource", "ImageRef", "KarpathySource", "Nlvr2Source", "Record",
    "Skip", "SkipLog", "Source", "TextCorpusSource", "VisualGenomeSource", "Vqav2Source", "WebDatasetSource",
]
