"""CaiT presets in KerasHub's registry format.

The presets themselves are the JSON files in `keras_cait/presets/` (read by
`keras_cait_base.registry`); this lists them the way KerasHub's
`register_presets` expects, as `vit_presets.py` does for ViT.
"""

from keras_cait_base import registry


def _entry(data):
    return {
        "metadata": {
            "description": data["description"],
            "params": data["num_params"],
            "path": "cait",
            "imagenet_top1": data["imagenet_top1"],
            "license": data["license"],
        },
        # KerasHub resolves a name through this handle when loading via its
        # base classes (keras_hub.models.Backbone.from_preset).
        "kaggle_handle": data["weights"]["source"].split("@", 1)[0],
    }


backbone_presets = {
    name: _entry(registry.get_preset(name)) for name in registry.list_presets()
}
