"""keras-cait's own exception types.

Each subclasses the standard exception a caller would otherwise catch, so
`except ValueError` or `except FileNotFoundError` keeps working.
"""


class CaiTError(Exception):
    """Base class of every error keras-cait raises on purpose."""


class CaiTConfigError(CaiTError, ValueError):
    """A configuration (preset JSON, timm `config.json`, keras-cait
    `config.json`, or arguments) is malformed or unsupported."""


class CaiTWeightsError(CaiTError, ValueError):
    """A weights file or state dict does not fit the model: missing,
    unexpected or mis-shaped tensors, corrupt or truncated files."""


class CaiTFileNotFoundError(CaiTError, FileNotFoundError):
    """A file keras-cait needs is missing, locally or in the download cache."""


class CaiTIntegrityError(CaiTWeightsError):
    """A file's SHA-256 digest differs from the one it was published with:
    the file was tampered with, truncated or corrupted."""


class CaiTUnsafeModelError(CaiTConfigError):
    """A model file or configuration asks for something keras-cait refuses to
    load: code (Lambda layers, functions), classes outside the allow-list,
    hostile arguments, or archive members with unsafe paths or sizes."""


class CaiTImageError(CaiTError, ValueError):
    """An image cannot be used: a file that is not an image or is truncated
    or corrupt, or an image array of an unsupported shape."""
