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


@pytest.fixture(scope="session")
def tiny_preset(tmp_path_factory):
    """`tiny_token_head` (timm's weights, 10 classes, 32x32 inputs) saved as
    a local preset directory, with its image converter."""
    import keras_cait
    from tests.support import reference_classifier

    directory = tmp_path_factory.mktemp("tiny_preset")
    classifier = reference_classifier("tiny_token_head")
    classifier.preprocessor = keras_cait.CaiTImageClassifierPreprocessor(
        keras_cait.CaiTImageConverter(image_size=32)
    )
    classifier.save_to_preset(str(directory))
    return str(directory)


@pytest.fixture(scope="session")
def tiny_classifier(tiny_preset):
    """The `tiny_preset` loaded (with its preprocessor), once."""
    import keras_cait

    return keras_cait.CaiTImageClassifier.from_preset(tiny_preset)
