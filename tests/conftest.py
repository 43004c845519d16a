import keras
import pytest


def pytest_collection_modifyitems(config, items):
    """Keras's OpenVINO backend is inference only: under it, only the tests
    marked `openvino` run (parity, presets, predict, export)."""
    if keras.config.backend() != "openvino":
        return
    deselected = [item for item in items if item.get_closest_marker("openvino") is None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item.get_closest_marker("openvino")]


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Each test starts from the default dtype policy and a fresh session."""
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def backend():
    return keras.config.backend()
