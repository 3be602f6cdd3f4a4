"""Reading text corpora (calibration and evaluation) from files or hub datasets."""

from replaceme.data.texts import TextSource, load_texts

__all__ = ["TextSource", "load_texts"]
