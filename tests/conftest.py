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
