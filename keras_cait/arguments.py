"""Checks keyword arguments by name, so that a typo is an error, not a
silently ignored option.

`check_keyword_arguments(where, kwargs, valid)` raises `CaiTConfigError`
naming the unknown argument and the nearest valid name (`difflib`), e.g.
`from_preset("cait_xxs24_224", num_class=3)` -> "... 'num_class'; did you
mean 'num_classes'?".
"""

import difflib
import inspect

from keras_cait_base.errors import CaiTConfigError

# Keyword arguments every Keras layer and model takes through `**kwargs`.
KERAS_BASE_ARGUMENTS = ("name", "dtype", "trainable", "autocast")


def parameter_names(function):
    """The names a call to `function` can pass by keyword (not `self`, not
    `*args`/`**kwargs`)."""
    names = []
    for name, parameter in inspect.signature(function).parameters.items():
        if name == "self" or parameter.kind in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
            inspect.Parameter.POSITIONAL_ONLY,
        ):
            continue
        names.append(name)
    return names


def check_keyword_arguments(where, kwargs, valid):
    """Raises if `kwargs` holds a name outside `valid`.

    Args:
        where: string, the function as the caller wrote it, e.g.
            `"CaiTImageClassifier.from_preset"`.
        kwargs: dict of the keyword arguments given.
        valid: iterable of strings, the accepted names.

    Raises:
        CaiTConfigError: for the first unknown name (sorted), with the
            nearest valid name when one is close, and the valid names.
    """
    valid = sorted(set(valid))
    unknown = sorted(name for name in kwargs if name not in valid)
    if not unknown:
        return
    name = unknown[0]
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise CaiTConfigError(
        f"{where}() got an unexpected keyword argument {name!r}.{hint} "
        f"Valid keyword arguments: {', '.join(valid)}."
    )


def check_preset_arguments(cls, kwargs, extra=()):
    """`check_keyword_arguments` for `cls.from_preset(preset, **kwargs)`:
    the arguments of `cls.__init__`, Keras's layer arguments and `extra`
    (those `from_preset` passes elsewhere, e.g. to the backbone)."""
    valid = (*parameter_names(cls.__init__), *KERAS_BASE_ARGUMENTS, *extra)
    check_keyword_arguments(f"{cls.__name__}.from_preset", kwargs, valid)
