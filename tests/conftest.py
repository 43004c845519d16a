import keras
import pytest


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Each test starts from the default dtype policy and a fresh session."""
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def backend():
    return keras.config.backend()
