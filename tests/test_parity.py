"""keras-cait computes what timm computes, on every backend."""

import numpy as np
import pytest

from tests.support import expected, reference_classifier, to_numpy

TOLERANCE = 1e-4


@pytest.mark.parametrize("name", ["tiny_token_head", "cait_xxs24_224"])
def test_features_and_logits_match_timm(name):
    classifier = reference_classifier(name)
    reference = expected(name)
    features = to_numpy(classifier.backbone(reference["images"]))
    np.testing.assert_allclose(features, reference["features"], atol=TOLERANCE, rtol=0)
    logits = to_numpy(classifier(reference["images"]))
    np.testing.assert_allclose(logits, reference["logits"], atol=TOLERANCE, rtol=0)


def test_headless_avg_pooling_matches_timm():
    classifier = reference_classifier("tiny_avg_headless")
    reference = expected("tiny_avg_headless")
    assert classifier.num_classes == 0 and classifier.pooling == "avg"
    features = to_numpy(classifier.backbone(reference["images"]))
    np.testing.assert_allclose(features, reference["features"], atol=TOLERANCE, rtol=0)
    pre_logits = to_numpy(classifier(reference["images"]))
    np.testing.assert_allclose(
        pre_logits, reference["pre_logits"], atol=TOLERANCE, rtol=0
    )
