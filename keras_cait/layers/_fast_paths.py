"""One switch for keras-cait's speed paths, read once when a layer is built.

As timm's `use_fused_attn()` (timm/layers/config.py): the environment
variable `KERAS_CAIT_FAST_PATHS` (`1` on, `0` off; default on) sets the
start value, and `set_fast_paths(enable)` changes it for layers built and
models compiled afterwards. A layer stores `use_fast_paths()` in `build()`
and keeps one `if` in `call()`.
"""

import os

_ENV_VAR = "KERAS_CAIT_FAST_PATHS"


def _from_environment():
    value = os.environ.get(_ENV_VAR, "1").strip().lower()
    if value in ("1", "true", "on", "yes", ""):
        return True
    if value in ("0", "false", "off", "no"):
        return False
    raise ValueError(
        f"Environment variable {_ENV_VAR}={value!r}: expected 1 (on) or 0 (off)."
    )


_enabled = _from_environment()


def use_fast_paths():
    """Whether layers built from now on take keras-cait's speed paths.

    Returns:
        bool: `True` unless `KERAS_CAIT_FAST_PATHS=0` or `set_fast_paths(False)`.
    """
    return _enabled


def set_fast_paths(enable):
    """Turn keras-cait's speed paths on or off for layers built and models
    compiled after this call (already built layers keep their choice).

    Args:
        enable: bool.

    Raises:
        TypeError: `enable` is not a bool.
    """
    global _enabled
    if not isinstance(enable, bool):
        raise TypeError(f"`enable` must be a bool, got {enable!r}.")
    _enabled = enable
