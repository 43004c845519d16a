"""`fit()` and saved training state for a KerasHub task: two KerasHub 0.32
workarounds (docs/keras_hub_upstream.md), attached to `CaiTImageClassifier`
by its `TaskMixin`."""

import keras
import numpy as np

from keras_cait.model_extensions.shuffled_batches import (
    is_array_input,
    shuffled_batches,
    split_validation,
)


class TrainingState:
    """`compile_from_config()` that restores a `.keras` file's optimizer, and
    `fit()` that reshuffles arrays each epoch. Put it before KerasHub's
    `Task`."""

    def compile_from_config(self, config):
        """Compiles with a `.keras` file's compile config, so that
        `keras.saving.load_model` restores the optimizer (class,
        hyper-parameters, then its variables: iteration, moments).

        Keras skips this for a model whose `compile()` is overridden, as
        KerasHub's `ImageClassifier.compile()` is; the saved config holds
        the resolved optimizer, loss and metrics, which it accepts.
        """
        if not config:
            return
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            # Built before Keras loads the saved optimizer variables.
            self.optimizer.build(self.trainable_variables)

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        epochs=1,
        sample_weight=None,
        shuffle=True,
        validation_split=0.0,
        validation_data=None,
        steps_per_epoch=None,
        **kwargs,
    ):
        """`keras.Model.fit()`, preprocessing as KerasHub's `Task.fit()`.

        Arrays or tensors are reshuffled each epoch when `shuffle` is true
        (as Keras does; KerasHub 0.32 batches them unshuffled), after
        `validation_split` takes the last samples. The order follows
        NumPy's global seed (`keras.utils.set_random_seed`).
        """
        if shuffle and is_array_input(x, y, sample_weight):
            arrays = keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
            if validation_split and validation_data is None:
                arrays, validation_data = split_validation(arrays, validation_split)
            x, steps_per_epoch = shuffled_batches(
                arrays,
                batch_size or 32,
                seed=int(np.random.randint(2**31 - 1)),
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
            )
            y = sample_weight = batch_size = None
            validation_split = 0.0
            shuffle = False  # done; Keras would warn that it ignores it
        return super().fit(
            x=x,
            y=y,
            batch_size=batch_size,
            epochs=epochs,
            sample_weight=sample_weight,
            shuffle=shuffle,
            validation_split=validation_split,
            validation_data=validation_data,
            steps_per_epoch=steps_per_epoch,
            **kwargs,
        )
