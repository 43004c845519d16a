import os
import tempfile

import keras
import pytest

# Tests never write into the user's conversion cache: unless a test (or the
# caller) chose one, converted weights go to a directory of this session.
if "KERAS_CAIT_CACHE" not in os.environ:
    os.environ["KERAS_CAIT_CACHE"] = tempfile.mkdtemp(prefix="keras-cait-cache-")


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Each test starts from the default dtype policy and a fresh session."""
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def backend():
    return keras.config.backend()
