"""The image files of a collection: files, directories, glob patterns and
`@list.txt` files expanded into one ordered list, each file once."""

import glob
import os

from PIL import Image

from keras_cait_base.errors import CaiTFileNotFoundError

_GLOB_CHARACTERS = frozenset("*?[")


def image_extensions():
    """The file extensions Pillow reads (lower case, with the dot), e.g.
    `".jpg"`, `".png"`, `".webp"`: Pillow's `registered_extensions()`."""
    Image.init()
    return frozenset(extension.lower() for extension in Image.registered_extensions())


def _sort_key(relative_path):
    return relative_path.split(os.sep)


def image_files_under(directory, extensions=None):
    """The image files under `directory`, recursively, sorted by their path
    relative to it (folder by folder).

    Args:
        directory: str. The folder.
        extensions: the extensions to keep (default: `image_extensions()`).

    Returns:
        A list of str paths (`directory` joined with the relative path).
        Symbolic links to folders are followed once (as torchvision's and
        timm's ImageFolder do); a broken link with an image extension is
        listed (reading it fails later).
    """
    extensions = image_extensions() if extensions is None else extensions
    found, visited = [], set()
    for root, folders, files in os.walk(directory, followlinks=True):
        visited.add(os.path.realpath(root))
        folders[:] = [
            name for name in folders
            if os.path.realpath(os.path.join(root, name)) not in visited
        ]
        for name in files:
            if os.path.splitext(name)[1].lower() in extensions:
                found.append(os.path.relpath(os.path.join(root, name), directory))
    return [os.path.join(directory, path) for path in sorted(found, key=_sort_key)]


def _read_list(path):
    """The non-empty lines of an `@list.txt` file, stripped."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        raise CaiTFileNotFoundError(f"Input list '@{path}' not found.") from None
    except IsADirectoryError:
        raise CaiTFileNotFoundError(
            f"Input list '@{path}' is a directory, not a text file of paths."
        ) from None


def expand_image_paths(inputs):
    """Expands files, directories, glob patterns and `@list.txt` files into
    the list of image files to read, in a deterministic order.

    Each input is, in this order of precedence:

    - a directory: its image files (the extensions Pillow reads, any case),
      recursively, sorted by path relative to it;
    - an existing path (a file, or a broken symbolic link): itself, whatever
      its extension;
    - `@FILE` (when no path of that name exists): each non-empty line of
      FILE is an input, expanded by these rules (relative paths are relative
      to the current directory, not to FILE);
    - a glob pattern (with `*`, `?` or `[`; `**` spans folders): its
      matches, sorted; matching folders are expanded as above;
    - anything else, including a pattern that matches nothing: itself (it
      becomes an input that fails: "not found").

    Inputs keep the order given. A file reached twice (the same absolute
    path, without resolving symbolic links, so that hard and symbolic links
    count as files of their own) is kept once, at its first place.

    Args:
        inputs: iterable of str or path-like.

    Returns:
        A list of str paths, as found (relative inputs give relative paths).

    Raises:
        CaiTFileNotFoundError: an `@list` file is missing, or the inputs
            hold no image file at all (e.g. only empty folders).

    Example:
    ```python
    expand_image_paths(["photos/", "extra/*.png", "@more.txt", "cat.jpg"])
    ```
    """
    extensions = image_extensions()
    paths, seen = [], set()

    def add(path):
        key = os.path.normcase(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            paths.append(path)

    def expand(item, nested):
        if os.path.isdir(item):
            for path in image_files_under(item, extensions):
                add(path)
        elif os.path.lexists(item):
            add(item)
        elif item.startswith("@") and not nested:
            for entry in _read_list(item[1:]):
                expand(entry, nested=True)
        elif _GLOB_CHARACTERS & set(item) and (
            matches := sorted(glob.glob(item, recursive=True), key=_sort_key)
        ):
            for match in matches:
                expand(match, nested=True)
        else:
            add(item)

    inputs = [os.fspath(item) for item in inputs]
    for item in inputs:
        expand(item, nested=False)
    if not paths:
        raise CaiTFileNotFoundError(
            "No image files found in the inputs "
            f"{', '.join(repr(item) for item in inputs[:5])}"
            f"{' ...' if len(inputs) > 5 else ''} (in folders, only files with "
            "an image extension Pillow reads count: .jpg, .png, .webp, ...)."
        )
    return paths
