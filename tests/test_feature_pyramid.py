"""`CaiTBackbone` as a KerasHub `FeaturePyramidBackbone` (KerasHub's own pyramid
checks: test_keras_hub_harness.py): the grids against timm's `features_only=True`
model, and a small segmentation head trained on top for one step."""

import keras
import numpy as np
from keras_hub.models import FeaturePyramidBackbone

# Private test harness (keras-hub 0.32; pinned in pyproject).
from keras_hub.src.tests.test_case import TestCase as KerasHubTestCase

import keras_cait
from keras_cait.convert.timm_export import export_to_timm
from tests.support import TINY_BACKBONE, to_numpy
from tests.timm_support import import_timm

# 4 self-attention blocks, so that the pyramid (the last three) is not all.
BACKBONE = dict(TINY_BACKBONE, num_layers=4, image_shape=(32, 48, 3))
IMAGES = np.random.default_rng(0).standard_normal((2, 32, 48, 3)).astype("float32")
KEYS = ["self_attention_block_1", "self_attention_block_2", "self_attention_block_3"]


class FeaturePyramidTest(KerasHubTestCase):
    def test_grids_are_timms_features_only_outputs(self):
        backbone = keras_cait.CaiTBackbone(**BACKBONE)
        assert isinstance(backbone, FeaturePyramidBackbone)
        pyramid = keras.Model(backbone.inputs, backbone.pyramid_outputs)(IMAGES)
        assert list(pyramid) == KEYS
        intermediates = backbone.get_intermediate_outputs(IMAGES, indices=3, output_format="grid")
        directory = self.get_temp_dir() + "/timm"
        export_to_timm(backbone, directory)
        timm = import_timm()
        import torch

        features = timm.create_model(f"local-dir:{directory}", pretrained=True, features_only=True)
        assert features.feature_info.module_name() == ["blocks.1", "blocks.2", "blocks.3"]
        with torch.no_grad():
            expected = features.eval()(torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).copy()))
        for key, nchw in zip(KEYS, expected):
            grid = to_numpy(pyramid[key])
            np.testing.assert_array_equal(grid, to_numpy(intermediates[key]))
            np.testing.assert_allclose(grid, nchw.numpy().transpose(0, 2, 3, 1), atol=2e-5)
        # channels_first: the same grids, channels first (as KerasHub's feature maps).
        first = keras_cait.CaiTBackbone(**BACKBONE, data_format="channels_first")
        first.set_weights(backbone.get_weights())
        nchw = keras.Model(first.inputs, first.pyramid_outputs)(IMAGES.transpose(0, 3, 1, 2))
        expected = to_numpy(pyramid[KEYS[-1]]).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(to_numpy(nchw[KEYS[-1]]), expected, atol=1e-5)

    def test_segmentation_head_trains(self):
        backbone = keras_cait.CaiTBackbone(**BACKBONE)
        grids = list(backbone.pyramid_outputs.values())
        x = keras.layers.Concatenate()(grids)
        x = keras.layers.Conv2D(5, 1, name="classes")(x)
        masks = keras.layers.UpSampling2D(BACKBONE["patch_size"], interpolation="bilinear")(x)
        model = keras.Model(backbone.inputs, masks)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        targets = np.random.default_rng(1).integers(0, 5, (2, 32, 48))
        before = [to_numpy(w) for w in model.trainable_weights]
        history = model.fit(IMAGES, targets, epochs=1, batch_size=2, verbose=0)
        assert model.output_shape == (None, 32, 48, 5)
        assert np.isfinite(history.history["loss"][0])
        after = [to_numpy(w) for w in model.trainable_weights]
        changed = [not np.array_equal(a, b) for a, b in zip(before, after)]
        assert all(changed[-2:]), "the head did not train"
        assert sum(changed) > len(changed) // 2, "the backbone did not train"
