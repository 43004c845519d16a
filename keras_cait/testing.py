"""Seeded timm-format weights for tests, benchmarks and examples.

Implements the weight recipe of timm-cait's reference data: the timm
state-dict keys in sorted order, one `numpy.random.default_rng(seed)`, and a
rule per kind of tensor. Weights made this way reproduce the reference
logits without shipping full-size checkpoints.
"""

import numpy as np


def seeded_tensor(key, z):
    """Scales a standard-normal draw `z` the way the recipe does for `key`."""
    if key.endswith("gamma_1") or key.endswith("gamma_2"):
        return 0.1 + 0.02 * z
    if key.endswith(".weight") and z.ndim == 1:
        return 1.0 + 0.1 * z
    if key.endswith(".bias"):
        return 0.02 * z
    if key in ("cls_token", "pos_embed"):
        return 0.02 * z
    fan_in = int(np.prod(z.shape[1:]))
    return z / np.float32(np.sqrt(fan_in))


def seeded_state_dict(shapes, seed):
    """Builds a timm state dict from `{key: shape}` and a seed.

    Args:
        shapes: mapping or list of pairs, timm key to shape.
        seed: int. The seed of the single random generator.

    Returns:
        dict of timm key to float32 NumPy array.
    """
    shapes = dict(shapes)
    rng = np.random.default_rng(seed)
    state_dict = {}
    for key in sorted(shapes):
        z = rng.standard_normal(size=tuple(shapes[key]), dtype=np.float32)
        state_dict[key] = np.asarray(seeded_tensor(key, z), dtype=np.float32)
    return state_dict
