"""Fast `predict()` for keras-cait models: XLA on TensorFlow by default, no
per-call data pipeline for in-memory arrays, and on JAX no per-call round
trip of every variable (docs/performance.md, items 1 and 2). Anything else
goes to Keras's own `predict()` unchanged, and so does everything on the
OpenVINO backend, whose `predict()` compiles the model once per input shape;
there the compiled model runs in float32.
"""

import keras
import numpy as np

_DEFAULT_BATCH_SIZE = 32


def _is_array(x):
    if isinstance(x, np.ndarray):
        return x.ndim >= 1 and np.issubdtype(x.dtype, np.number)
    return keras.ops.is_tensor(x) and len(x.shape) >= 1


def _under_distribution(model):
    if getattr(model, "_distribute_strategy", None) is not None:
        return True
    distribution = getattr(keras, "distribution", None)
    return distribution is not None and distribution.distribution() is not None


class FastInferenceMixin:
    """Mixin for keras-cait models: XLA on TensorFlow by default and a
    low-overhead `predict()` for in-memory arrays.

    Put it before the Keras/KerasHub base class:
    `class CaiTBackbone(FastInferenceMixin, Backbone)`.
    """

    def _resolve_auto_jit_compile(self):
        # Private: keras.src `Trainer._resolve_auto_jit_compile` (Keras 3.15)
        # turns XLA off on TensorFlow without a GPU; "auto" means XLA here.
        if keras.backend.backend() == "tensorflow":
            if getattr(self, "_distribute_strategy", None) is not None:
                return False
            return all(
                getattr(layer, "supports_jit", True)
                for layer in self._flatten_layers()
            )
        return super()._resolve_auto_jit_compile()

    def _get_compiled_model(self, data):
        # Private: keras.src `OpenVINOTrainer._get_compiled_model` (Keras
        # 3.15) compiles with OpenVINO's default precision, bf16 on CPUs
        # that have it (1e-2 off timm for CaiT). Its graph is compiled again
        # here in float32, once per compiled model Keras builds.
        compiled = super()._get_compiled_model(data)
        if getattr(self, "_f32_compiled", (None, None))[0] is not compiled:
            import openvino  # optional dependency: only on the OpenVINO backend

            outputs = keras.tree.flatten(self.struct_outputs)
            masks = [
                keras.backend.get_keras_mask(outputs[index])
                for index in self._output_mask_indices
            ]
            graph = openvino.Model(
                results=[
                    openvino.opset16.result(tensor.output)
                    for tensor in outputs + masks
                ],
                parameters=[
                    param.output.get_node()
                    for param in keras.tree.flatten(self.struct_params)
                ],
            )
            self._f32_compiled = (
                compiled,
                openvino.compile_model(
                    graph, self.ov_device, {"INFERENCE_PRECISION_HINT": "f32"}
                ),
            )
        return self._f32_compiled[1]

    def _fast_predict_applies(self, x, steps, callbacks, kwargs):
        return (
            keras.backend.backend() != "openvino"
            and not kwargs
            and steps is None
            and not callbacks
            and _is_array(x)
            and not _under_distribution(self)
        )

    def predict(
        self, x=None, batch_size=None, verbose="auto", steps=None, callbacks=None,
        **kwargs,
    ):
        """Generates outputs for `x`, like `keras.Model.predict`.

        For a NumPy array or backend tensor, the batches are sliced here and
        each goes through `predict_on_batch` (the compiled predict function,
        with the preprocessor of a task applied per batch), which skips
        building a data pipeline per call. Other inputs, `steps`, callbacks
        and distributed models use Keras's `predict()`.

        Args:
            x: images, an array `(batch, height, width, channels)`, or
                anything `keras.Model.predict` accepts.
            batch_size: int or `None` (32).
            verbose: `"auto"`, 0, 1 or 2: progress bar as in Keras (shown
                only when there is more than one batch).
            steps: int or `None`, as in Keras (uses Keras's loop).
            callbacks: list of callbacks or `None`, as in Keras (uses Keras's
                loop).

        Returns:
            NumPy array(s) of predictions, concatenated over batches.
        """
        if not self._fast_predict_applies(x, steps, callbacks, kwargs):
            return super().predict(
                x,
                batch_size=batch_size,
                verbose=verbose,
                steps=steps,
                callbacks=callbacks,
                **kwargs,
            )
        if batch_size is None:
            batch_size = _DEFAULT_BATCH_SIZE
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or (
            batch_size < 1
        ):
            raise ValueError(
                f"`batch_size` must be a positive integer, got {batch_size!r}."
            )
        num_samples = int(x.shape[0])
        if num_samples == 0:
            raise ValueError(
                "`predict()` got an empty input: `x` has 0 samples on its "
                "first axis."
            )
        starts = range(0, num_samples, batch_size)
        progbar = None
        if verbose != 0 and len(starts) > 1:
            progbar = keras.utils.Progbar(
                len(starts), verbose=1 if verbose == "auto" else verbose
            )
        outputs = []
        for step, start in enumerate(starts):
            outputs.append(self._predict_batch(x[start : start + batch_size]))
            if progbar is not None:
                progbar.update(step + 1)
        if len(outputs) == 1:
            return outputs[0]
        return keras.tree.map_structure(
            lambda *batches: np.concatenate(batches, axis=0), *outputs
        )

    def _predict_batch(self, x):
        """`predict_on_batch(x)`; on JAX without its per-call state round trip."""
        if (
            keras.backend.backend() != "jax"
            or self.run_eagerly
            or not self.jit_compile
            or not self.built
        ):
            return self.predict_on_batch(x)
        if hasattr(self, "preprocess_samples"):
            # A KerasHub task: what its `predict_on_batch` does first.
            x, _, _ = keras.utils.unpack_x_y_sample_weight(self.preprocess_samples(x))
            x = keras.tree.map_structure(keras.ops.convert_to_tensor, x)
        return self._jax_predict_on_batch(x)

    def _jax_predict_on_batch(self, x):
        """Keras's JAX `predict_on_batch` computes with the same jitted
        `predict_step`, but also donates every variable and writes every one
        back on each call; here only those the step changed are written back.
        The compiled step lives as long as Keras's `predict_function` (reset
        by `compile()` and `quantize()`)."""
        import jax  # start-up: JAX is imported only on the JAX backend

        self.make_predict_function()
        cached = getattr(self, "_jax_predict_cache", None)
        if cached is None or cached[0] is not self.predict_function:
            cached = (self.predict_function, jax.jit(self._jax_predict_step))
            self.__dict__["_jax_predict_cache"] = cached  # not tracked by Keras
        trainable = self.trainable_variables
        non_trainable = self.non_trainable_variables
        state = ([v.value for v in trainable], [v.value for v in non_trainable])
        outputs, changed = cached[1](state, x)
        for index, value in changed.items():
            non_trainable[index].assign(value)
        return keras.tree.map_structure(np.asarray, outputs)

    def _jax_predict_step(self, state, x):
        outputs, non_trainable = self.predict_step(state, (x,))
        # A variable the step left alone comes back as the same tracer.
        changed = {
            index: new
            for index, (old, new) in enumerate(zip(state[1], non_trainable))
            if new is not old
        }
        return outputs, changed
