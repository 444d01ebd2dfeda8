"""Errors raised by the data package."""


class DatasetError(ValueError):
    """A dataset folder, split file or image that cannot be used as it is.

    The message names the offending file or folder and says how to fix it.
    """


class MaskSizeWarning(UserWarning):
    """A mask whose size differs from its image's; it was resized nearest-neighbour."""
