"""The building blocks of CaiT, in `keras.ops`; their speed paths (PyTorch
tensor ops among them) in the private `_fast_paths`."""

from keras_cait.layers.class_attention import ClassAttention
from keras_cait.layers.class_attention_block import ClassAttentionBlock
from keras_cait.layers.drop_path import DropPath
from keras_cait.layers.embedding import ClassToken, PatchEmbedding
from keras_cait.layers.layer_scale import LayerScale
from keras_cait.layers.mlp import CaiTMLP
from keras_cait.layers.self_attention_block import SelfAttentionBlock
from keras_cait.layers.talking_heads_attention import TalkingHeadsAttention

__all__ = [
    "CaiTMLP",
    "ClassAttention",
    "ClassAttentionBlock",
    "ClassToken",
    "DropPath",
    "LayerScale",
    "PatchEmbedding",
    "SelfAttentionBlock",
    "TalkingHeadsAttention",
]
