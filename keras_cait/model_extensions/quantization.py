"""`quantize()` with one garbage collection instead of one per replaced weight."""

import gc


def _skip_collect(generation=2):
    return 0


class OneCollectQuantize:
    """`quantize()` as Keras's, with one `gc.collect()` at the end.

    Reason: Keras 3.15's `Layer.__delattr__` (private) runs a full
    `gc.collect()` for every float weight `quantize()` replaces, 157 times for
    `cait_xxs24_224`: 44 s against 0.7 s (docs/performance.md).
    """

    def quantize(self, *args, **kwargs):
        """Quantizes the model's weights, as `keras.Model.quantize`."""
        collect = gc.collect
        gc.collect = _skip_collect
        try:
            super().quantize(*args, **kwargs)
        finally:
            gc.collect = collect
            gc.collect()
