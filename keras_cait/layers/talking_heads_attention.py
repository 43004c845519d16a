"""Talking-heads multi-head self-attention, as in CaiT's self-attention blocks."""

import keras
from keras import ops

from keras_cait.layers.sublayers import apply_dense, apply_dropout, cast_if_needed
from keras_cait.serialization import register


def mix_heads(attention, head_mixer, kernel_scale=1.0, use_bias=True):
    """Applies a `Dense(num_heads)` layer across the heads axis.

    The mix is one matrix product per image, `kernel^T @ attention` over the
    flattened `(heads, queries * keys)` layout, so the attention tensor is
    never transposed or copied (an einsum over the heads axis made PyTorch
    permute it twice: four times slower at batch 32).

    Args:
        attention: tensor of shape `(batch, heads, queries, keys)`.
        head_mixer: a built `keras.layers.Dense` whose kernel is
            `(heads, heads)`.
        kernel_scale: float. A factor applied to the kernel (a scale of the
            input folded into the 16-entry kernel instead of the tensor).
        use_bias: bool. Whether to add the bias.

    Returns:
        A tensor of the same shape: `out[:, g] = sum_h attention[:, h] *
        kernel[h, g] * kernel_scale + bias[g]`.
    """
    dtype = ops.dtype(attention)
    kernel = ops.transpose(cast_if_needed(head_mixer.kernel, dtype))
    if kernel_scale != 1.0:
        kernel = kernel * kernel_scale
    shape = ops.shape(attention)
    # One (heads, heads) kernel per image: a batched product of same-sized
    # batches. With a 2-D kernel PyTorch folds the batch instead, through a
    # transposed copy of the attention tensor in and out (4x slower).
    kernel = ops.broadcast_to(kernel, (shape[0], shape[1], shape[1]))
    mixed = kernel @ ops.reshape(attention, (shape[0], shape[1], -1))
    if use_bias:
        bias = cast_if_needed(head_mixer.bias, dtype)
        mixed = mixed + bias[None, :, None]
    return ops.reshape(mixed, shape)


# The largest float32 (batch, heads, rows, tokens) logits tensor computed at
# once, and the most row blocks one layer is split into (a bound on the size
# of the traced graph).
ATTENTION_BLOCK_BYTES = 8 * 2**20
MAX_ATTENTION_BLOCKS = 16


def query_row_blocks(batch_size, num_heads, num_tokens):
    """Splits the query rows so that each block's logits stay small.

    Self-attention materialises `(batch, heads, tokens, tokens)` float32
    tensors four times over (logits, mixed logits, weights, mixed weights).
    At `cait_xxs24_224`'s batch 32 each is 20 MB. Computing the attention a
    block of query rows at a time gives the same numbers, bounds that memory
    and keeps it out of page-faulting fresh allocations: with whole tensors,
    JAX's CPU runtime allocated them anew on every call, 244,000 page faults
    (1 GB) per batch-32 forward pass and ~20% of its time.

    The split needs the batch size and token count as Python ints (always in
    JAX and PyTorch, and in TensorFlow for static shapes); otherwise the
    whole attention is one block.

    Args:
        batch_size: int, or a symbolic size.
        num_heads: int.
        num_tokens: int, or a symbolic size.

    Returns:
        A list of `(start, stop)` row ranges covering `range(num_tokens)` in
        order; `[(0, num_tokens)]` when no split is needed or possible.
    """
    if not isinstance(batch_size, int) or not isinstance(num_tokens, int):
        return [(0, num_tokens)]
    logits_bytes = 4 * batch_size * num_heads * num_tokens * num_tokens
    num_blocks = -(-logits_bytes // ATTENTION_BLOCK_BYTES)
    num_blocks = max(1, min(num_blocks, MAX_ATTENTION_BLOCKS, num_tokens))
    rows = -(-num_tokens // num_blocks)
    return [
        (start, min(start + rows, num_tokens))
        for start in range(0, num_tokens, rows)
    ]


@register
class TalkingHeadsAttention(keras.layers.Layer):
    """Self-attention whose heads exchange information before and after the
    softmax (Shazeer et al., 2020), as used by CaiT.

    `proj_l` mixes the attention logits across heads before the softmax and
    `proj_w` mixes the probabilities after it. The softmax and both mixes run
    in float32 whatever the compute dtype.

    Args:
        hidden_dim: int. The token dimension; must be divisible by `num_heads`.
        num_heads: int. The number of attention heads.
        use_qkv_bias: bool. Whether the fused query/key/value projection has
            a bias.
        attention_dropout: float. Dropout rate on the mixed attention weights.
        projection_dropout: float. Dropout rate after the output projection.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.

    Call arguments:
        inputs: tensor of shape `(batch, tokens, hidden_dim)`.
        return_attention: bool. If `True`, also return the attention weights
            after the post-softmax mix, `(batch, heads, tokens, tokens)`.
        training: bool. Whether dropout is active.
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        use_qkv_bias=True,
        attention_dropout=0.0,
        projection_dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if hidden_dim % num_heads != 0:
            raise ValueError(
                f"`hidden_dim` ({hidden_dim}) must be divisible by "
                f"`num_heads` ({num_heads})."
            )
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.use_qkv_bias = use_qkv_bias
        self.attention_dropout = attention_dropout
        self.projection_dropout = projection_dropout
        self.head_dim = hidden_dim // num_heads
        self.scale = self.head_dim**-0.5

    def build(self, input_shape):
        token_shape = (None, None, self.hidden_dim)
        self.qkv = keras.layers.Dense(
            3 * self.hidden_dim,
            use_bias=self.use_qkv_bias,
            dtype=self.dtype_policy,
            name="qkv",
        )
        self.qkv.build(token_shape)
        self.proj_l = keras.layers.Dense(
            self.num_heads, dtype=self.dtype_policy, name="proj_l"
        )
        self.proj_l.build((None, self.num_heads))
        self.proj_w = keras.layers.Dense(
            self.num_heads, dtype=self.dtype_policy, name="proj_w"
        )
        self.proj_w.build((None, self.num_heads))
        self.attention_dropout_layer = keras.layers.Dropout(
            self.attention_dropout, dtype=self.dtype_policy,
            name="attention_dropout",
        )
        self.proj = keras.layers.Dense(
            self.hidden_dim, dtype=self.dtype_policy, name="proj"
        )
        self.proj.build(token_shape)
        self.projection_dropout_layer = keras.layers.Dropout(
            self.projection_dropout, dtype=self.dtype_policy,
            name="projection_dropout",
        )

    def call(self, inputs, return_attention=False, training=None):
        batch_size, num_tokens = ops.shape(inputs)[0], ops.shape(inputs)[1]
        qkv = apply_dense(self.qkv, inputs)
        qkv = ops.reshape(
            qkv, (-1, num_tokens, 3, self.num_heads, self.head_dim)
        )
        # (3, batch, heads, tokens, head_dim), as timm lays it out: the
        # products below then write contiguous (batch, heads, q, k) tensors,
        # which the head mixes read without a copy.
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))
        query, key, value = qkv[0], qkv[1], qkv[2]
        key_transposed = ops.swapaxes(key, -1, -2)
        # `proj_w`'s bias b adds b[g] * sum_k value[k] to head g's output.
        # Where nothing else reads the attention weights (no dropout, not
        # returned) that sum is added to the output instead of adding b to
        # every one of the (q, k) weights; in float32 only, so that reduced
        # precision keeps the exact order of operations.
        fold_bias = (
            not return_attention
            and not (training and self.attention_dropout > 0)
            and self.compute_dtype == "float32"
        )
        # Every query row attends independently, so a large batch is
        # computed a block of rows at a time (see `query_row_blocks`).
        blocks = query_row_blocks(batch_size, self.num_heads, num_tokens)
        outputs, attention = [], []
        for start, stop in blocks:
            rows = query if len(blocks) == 1 else query[:, :, start:stop]
            block_outputs, block_attention = self._attend(
                rows, key_transposed, value, fold_bias, training
            )
            outputs.append(block_outputs)
            attention.append(block_attention)
        if len(blocks) == 1:
            outputs, attention = outputs[0], attention[0]
        else:
            outputs = ops.concatenate(outputs, axis=2)
            if return_attention:
                attention = ops.concatenate(attention, axis=2)
        if fold_bias:
            bias = self.proj_w.bias[None, :, None, None]
            outputs = outputs + bias * ops.sum(value, axis=2, keepdims=True)
        outputs = ops.transpose(outputs, (0, 2, 1, 3))
        outputs = ops.reshape(outputs, (-1, num_tokens, self.hidden_dim))
        outputs = apply_dense(self.proj, outputs)
        outputs = apply_dropout(self.projection_dropout_layer, outputs, training)
        if return_attention:
            return outputs, attention
        return outputs

    def _attend(self, query, key_transposed, value, fold_bias, training):
        """Attention of some query rows to all tokens.

        Args:
            query: tensor `(batch, heads, rows, head_dim)`.
            key_transposed: tensor `(batch, heads, head_dim, tokens)`.
            value: tensor `(batch, heads, tokens, head_dim)`.
            fold_bias: bool. Whether `proj_w`'s bias is left to the caller.
            training: bool or `None`.

        Returns:
            `(outputs, attention)`: the rows' outputs
            `(batch, heads, rows, head_dim)` and their mixed attention
            weights `(batch, heads, rows, tokens)`.
        """
        # Products of tensors of one dtype, written with `@`: the same on
        # every backend, without `keras.ops`' per-call dispatch.
        logits = query @ key_transposed
        # `proj_l` with the query scale folded into its kernel. Its bias adds
        # one constant per head to every logit of that head, which the
        # softmax over keys cancels exactly; it is skipped in inference and
        # kept in training only so that the variable still gets a gradient.
        logits = mix_heads(
            cast_if_needed(logits, "float32"),
            self.proj_l,
            kernel_scale=self.scale,
            use_bias=bool(training),
        )
        attention = ops.softmax(logits, axis=-1)
        attention = mix_heads(attention, self.proj_w, use_bias=not fold_bias)
        attention = cast_if_needed(attention, self.compute_dtype)
        dropped = apply_dropout(self.attention_dropout_layer, attention, training)
        return dropped @ value, attention

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.hidden_dim,)

    def compute_attention_shape(self, input_shape):
        """The shape of the attention weights for an input of `input_shape`."""
        tokens = input_shape[1]
        return (input_shape[0], self.num_heads, tokens, tokens)

    def compute_output_spec(self, inputs, return_attention=False, training=None):
        outputs = keras.KerasTensor(
            self.compute_output_shape(inputs.shape), dtype=self.compute_dtype
        )
        if not return_attention:
            return outputs
        attention = keras.KerasTensor(
            self.compute_attention_shape(inputs.shape),
            dtype=self.compute_dtype,
        )
        return outputs, attention

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "use_qkv_bias": self.use_qkv_bias,
                "attention_dropout": self.attention_dropout,
                "projection_dropout": self.projection_dropout,
            }
        )
        return config
