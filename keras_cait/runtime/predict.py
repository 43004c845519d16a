"""`predict()` for keras-cait models, behind the speed switch: XLA on TensorFlow,
no data pipeline per call, no variable round trip per call on JAX; float32 on
OpenVINO. Gains: docs/performance.md, "What the models do for you"."""

import keras
import numpy as np

from keras_cait.layers._fast_paths import use_fast_paths
from keras_cait.runtime.export import OPENVINO_F32
from keras_cait_base.errors import CaiTConfigError
from keras_cait_base.schema import DEFAULT_BATCH_SIZE, check_batch_size


def _is_array(x):
    if isinstance(x, np.ndarray):
        return x.ndim >= 1 and np.issubdtype(x.dtype, np.number)
    return keras.ops.is_tensor(x) and len(x.shape) >= 1


def _tf_strategy(model):  # private (Keras 3.15): TensorFlowTrainer's, or None
    return getattr(model, "_distribute_strategy", None)


class FastPredict:
    """`predict()` overrides; see `keras_cait.runtime.RuntimeMixin`."""

    def _resolve_auto_jit_compile(self):
        # Reason: Keras resolves jit_compile="auto" to no XLA on a CPU-only
        # TensorFlow. Private: keras.src `Trainer._resolve_auto_jit_compile`
        # (Keras 3.15), the one hook for compile() and an uncompiled model.
        if keras.backend.backend() == "tensorflow" and use_fast_paths():
            return _tf_strategy(self) is None and all(
                getattr(layer, "supports_jit", True) for layer in self._flatten_layers()
            )
        return super()._resolve_auto_jit_compile()

    def _get_compiled_model(self, data):
        # Reason: OpenVINO compiles in bf16 where the CPU has it (1e-2 off timm);
        # compile it again in float32. Private (Keras 3.15): `_get_compiled_model`,
        # `struct_params`, `struct_outputs`, `_output_mask_indices`, `ov_device`.
        compiled = super()._get_compiled_model(data)
        if self.__dict__.get("_f32_compiled", (None,))[0] is not compiled:
            import openvino  # optional dependency: only on the OpenVINO backend

            outputs = keras.tree.flatten(self.struct_outputs)
            masks = [
                keras.backend.get_keras_mask(outputs[index])
                for index in self._output_mask_indices
            ]
            graph = openvino.Model(
                results=[openvino.opset16.result(t.output) for t in outputs + masks],
                parameters=[
                    p.output.get_node() for p in keras.tree.flatten(self.struct_params)
                ],
            )
            self.__dict__["_f32_compiled"] = (  # not tracked by Keras
                compiled,
                openvino.compile_model(graph, self.ov_device, OPENVINO_F32),
            )
        return self.__dict__["_f32_compiled"][1]

    def make_predict_function(self, force=False):
        # The speed switch is read when Keras makes the predict function
        # (first predict, and again after compile() or quantize()).
        if self.predict_function is None or force:
            self.__dict__["_fast_predict"] = use_fast_paths()
        return super().make_predict_function(force)

    def predict(
        self, x=None, batch_size=None, verbose="auto", steps=None, callbacks=None,
        **kwargs,
    ):
        """Generates outputs for `x`, as `keras.Model.predict`.

        With the speed switch on (the default), a NumPy array or backend
        tensor is cut into batches here, each run through Keras's compiled
        predict step (a task's `preprocessor` per batch): no data pipeline,
        and on JAX no variable round trip, per call. Other inputs, `steps`,
        callbacks, distributed models and OpenVINO use Keras's `predict()`.

        Args:
            x: images `(batch, height, width, channels)`, or anything
                `keras.Model.predict` accepts.
            batch_size: int or `None` (32).
            verbose, steps, callbacks: as in Keras.

        Returns:
            NumPy array(s) of predictions, concatenated over batches.

        Raises:
            CaiTConfigError: (a `ValueError`) `batch_size` is not a positive
                int, or `x` has no samples.
        """
        if keras.backend.backend() != "openvino":
            self.make_predict_function()
        if not (
            self.__dict__.get("_fast_predict")
            and keras.backend.backend() != "openvino"
            and not kwargs
            and steps is None
            and not callbacks
            and _is_array(x)
            and _tf_strategy(self) is None
            and keras.distribution.distribution() is None
        ):
            return super().predict(
                x, batch_size=batch_size, verbose=verbose, steps=steps,
                callbacks=callbacks, **kwargs,
            )
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        check_batch_size(batch_size)
        num_samples = int(x.shape[0])
        if num_samples == 0:
            raise CaiTConfigError(
                "`predict()` got an empty input: `x` has 0 samples on its first axis."
            )
        starts = range(0, num_samples, batch_size)
        progbar = None
        if verbose != 0 and len(starts) > 1:
            progbar = keras.utils.Progbar(len(starts), verbose=verbose == "auto" or verbose)
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
        # Reason: Keras's JAX `predict_on_batch` writes back every variable per
        # call. Private (Keras 3.15): `JAXTrainer.predict_step(state, data)`.
        if keras.backend.backend() != "jax" or self.run_eagerly or not self.jit_compile:
            return self.predict_on_batch(x)
        import jax  # start-up: JAX is imported only on the JAX backend

        if hasattr(self, "preprocess_samples"):  # a KerasHub task preprocesses first
            x = keras.utils.unpack_x_y_sample_weight(self.preprocess_samples(x))[0]
        step = self.__dict__.get("_jax_predict_step")  # not tracked by Keras
        if step is None or step[0] is not self.predict_function:
            step = (self.predict_function, jax.jit(self._changed_state_predict_step))
            self.__dict__["_jax_predict_step"] = step
        non_trainable = self.non_trainable_variables
        state = ([v.value for v in self.trainable_variables], [v.value for v in non_trainable])
        outputs, changed = step[1](state, x)
        for index, value in changed.items():
            non_trainable[index].assign(value)
        return keras.tree.map_structure(np.asarray, outputs)

    def _changed_state_predict_step(self, state, x):
        outputs, non_trainable = self.predict_step(state, (x,))
        # A variable the step left alone comes back as the same tracer.
        pairs = enumerate(zip(state[1], non_trainable))
        return outputs, {index: new for index, (old, new) in pairs if new is not old}
