"""`from_preset` on a timm checkpoint streams, one tensor at a time.

- The conversion cache file written tensor by tensor is byte for byte what
  the old whole-dict conversion wrote (`safetensors.numpy.save_file` of the
  model's variables after `load_timm_state_dict`), for float32, float16 and
  bfloat16 sources.
- A conversion failing midway (a NaN tensor, a source ending early) leaves
  no cache entry, no temporary file and an untouched model; a cache entry
  whose shapes do not fit the model assigns nothing.
- The header is checked completely before any tensor is read.

Peak memory is tested in test_conversion_memory.py.
"""

import json
import shutil

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save, save_file

import keras_cait
from keras_cait.convert.timm_weights import (
    _timm_shape,
    model_weight_map,
    timm_weight_layout,
)
from keras_cait.errors import CaiTWeightsError
from keras_cait.io.files import sha256_file
from keras_cait.io.safetensors_io import Float32SafetensorsWriter, SafetensorsReader
from keras_cait.loading import conversion_cache, loader
from keras_cait.loading.conversion_cache import (
    ConversionCache,
    SourceIdentity,
    TensorStream,
)
from tests.support import TIMM, TINY_BACKBONE, to_numpy

TINY = TIMM / "tiny_token_head"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("KERAS_CAIT_CACHE", str(tmp_path / "converted"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def _copy_tiny(tmp_path, state_dict=None):
    folder = tmp_path / "tiny_timm"
    folder.mkdir()
    shutil.copyfile(TINY / "config.json", folder / "config.json")
    if state_dict is None:
        shutil.copyfile(TINY / "model.safetensors", folder / "model.safetensors")
    else:
        save_file(state_dict, str(folder / "model.safetensors"))
    return folder


def _cache_files(tmp_path):
    root = tmp_path / "converted"
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()
    ) if root.exists() else []


def _entry_files(tmp_path):
    """Cache files other than the lock files."""
    return [f for f in _cache_files(tmp_path) if not f.endswith(".lock")]


def _weights(model):
    return [np.array(to_numpy(v)) for v in model.weights]


def _tiny_model():
    return keras_cait.CaiTImageClassifier.from_preset(
        str(TINY), load_weights=False
    )


# --- the layout computed without a model -----------------------------------


@pytest.mark.parametrize(
    "kwargs, num_classes",
    [
        (TINY_BACKBONE, 10),
        (dict(TINY_BACKBONE, use_qkv_bias=False, mlp_ratio=2.0), 7),
        (
            dict(
                TINY_BACKBONE,
                image_shape=(32, 48, 1),
                class_attention_mlp_ratio=3.0,
                num_class_attention_layers=1,
            ),
            0,
        ),
    ],
)
def test_timm_weight_layout_matches_the_model(kwargs, num_classes):
    backbone = keras_cait.CaiTBackbone(**kwargs)
    model = (
        keras_cait.CaiTImageClassifier(backbone, num_classes=num_classes)
        if num_classes
        else backbone
    )
    expected = [
        (key, _timm_shape(kind, variable.shape), kind)
        for key, variable, kind in model_weight_map(model)
    ]
    assert timm_weight_layout(kwargs, num_classes) == expected


# --- the streamed file equals the old conversion ---------------------------


def _old_conversion(folder):
    """What the whole-dict conversion stored: the model's variables after
    `load_timm_state_dict`, by timm key."""
    model = keras_cait.CaiTImageClassifier.from_preset(
        str(folder), load_weights=False
    )
    keras_cait.load_timm_state_dict(
        model, keras_cait.read_safetensors(folder / "model.safetensors")
    )
    return {
        key: np.asarray(to_numpy(variable), dtype=np.float32)
        for key, variable, _ in model_weight_map(model)
    }


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_the_streamed_cache_file_is_the_old_conversion(tmp_path, dtype):
    state_dict = load_file(TINY / "model.safetensors")
    cast = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    folder = _copy_tiny(
        tmp_path, {k: v.astype(cast) for k, v in state_dict.items()}
    )
    model = keras_cait.CaiTImageClassifier.from_preset(str(folder))
    (weights,) = (tmp_path / "converted").rglob(conversion_cache.WEIGHTS_FILE)
    old = _old_conversion(folder)
    # Byte for byte what safetensors' save_file wrote for the old arrays.
    assert weights.read_bytes() == save(old)
    loaded = load_file(str(weights))
    assert sorted(loaded) == sorted(old)
    for key, variable, _ in model_weight_map(model):
        np.testing.assert_array_equal(loaded[key], old[key])
        np.testing.assert_array_equal(to_numpy(variable), old[key])
    meta = json.loads(weights.with_name(conversion_cache.META_FILE).read_text())
    assert meta["weights_size"] == weights.stat().st_size
    assert meta["weights_sha256"] == sha256_file(weights)
    assert not [f for f in _cache_files(tmp_path) if ".tmp" in f]


def test_the_writer_matches_safetensors_and_refuses_mistakes(tmp_path):
    arrays = {
        "b": np.arange(6, dtype=np.float32).reshape(2, 3).T,  # not contiguous
        "a": np.float32(3.0) * np.ones((), np.float32),
        "c": np.zeros((0, 4), np.float32),
    }
    path = tmp_path / "x.safetensors"
    with open(path, "wb") as f:
        writer = Float32SafetensorsWriter(f, {k: v.shape for k, v in arrays.items()})
        assert writer.order == ["a", "b", "c"]
        with pytest.raises(CaiTWeightsError, match="'b' written out of order"):
            writer.write("b", arrays["b"])
        writer.write("a", arrays["a"])
        with pytest.raises(CaiTWeightsError, match=r"'b' has shape \(2, 3\)"):
            writer.write("b", arrays["b"].T)
        writer.write("b", arrays["b"])
        with pytest.raises(CaiTWeightsError, match="only 2 of 3"):
            writer.finish()
        writer.write("c", arrays["c"])
        size, digest = writer.finish()
    assert path.read_bytes() == save({k: np.asarray(v, order="C") for k, v in arrays.items()})
    assert size == path.stat().st_size
    assert digest == sha256_file(path)


def test_the_reader_reads_one_tensor_at_a_time(tmp_path):
    arrays = {"x": np.ones((2, 2), np.float32), "y": np.full(3, np.nan, np.float32)}
    path = tmp_path / "x.safetensors"
    save_file(arrays, str(path))
    with SafetensorsReader(path) as reader:
        assert reader.shape("y") == (3,) and "x" in reader and len(reader) == 2
        np.testing.assert_array_equal(reader.read("x"), arrays["x"])
        with pytest.raises(CaiTWeightsError, match=r"x.safetensors: tensor 'y' holds 3 NaN"):
            reader.read("y")
    with SafetensorsReader(path, allow_non_finite=True) as reader:
        import hashlib

        digest = hashlib.sha256()
        assert [name for name, _ in reader.items(digest=digest)] == ["x", "y"]
        assert digest.hexdigest() == sha256_file(path)


# --- failures leave nothing behind and assign nothing ----------------------


def test_a_nan_midway_leaves_no_entry_and_an_untouched_model(tmp_path):
    state_dict = load_file(TINY / "model.safetensors")
    # In the middle of the cache file's (sorted) order: tensors before it
    # have been written when it is reached.
    names = sorted(state_dict)
    bad = names[len(names) // 2]
    state_dict[bad] = state_dict[bad].copy()
    state_dict[bad].flat[1] = np.nan
    folder = _copy_tiny(tmp_path, state_dict)

    with pytest.raises(CaiTWeightsError, match=f"model.safetensors: tensor '{bad}'"):
        keras_cait.CaiTImageClassifier.from_preset(str(folder))
    assert _entry_files(tmp_path) == []

    model = _tiny_model()
    before = _weights(model)
    preset_loader = loader.get_loader(str(folder))
    with pytest.raises(CaiTWeightsError, match="NaN or Inf"):
        preset_loader._load_weights(model, load_head=True)
    for a, b in zip(_weights(model), before):
        np.testing.assert_array_equal(a, b)
    assert _entry_files(tmp_path) == []


def test_a_source_ending_midway_leaves_no_entry(tmp_path):
    source = tmp_path / "model.safetensors"
    source.write_bytes(b"source")
    identity = SourceIdentity.of_file(source, "timm/x")
    cache = ConversionCache(str(tmp_path / "converted"))
    closed = []

    def produce(key):
        if key == "c":
            raise CaiTWeightsError("model.safetensors: tensor 'c': the file ended early.")
        return np.ones(3, np.float32)

    stream = TensorStream(
        {k: (3,) for k in "abcd"}, produce, close=lambda: closed.append(1)
    )
    with pytest.raises(CaiTWeightsError, match="ended early"):
        cache.store(identity, stream)
    assert closed == [1]
    assert _entry_files(tmp_path) == []
    assert cache.open(identity) is None

    # A failed rebuild of an existing entry leaves no entry either.
    cache.store(identity, TensorStream({"a": (2,)}, lambda key: np.ones(2, np.float32)))
    reader = cache.open(identity)
    assert reader is not None
    reader.close()
    with pytest.raises(CaiTWeightsError):
        cache.store(identity, TensorStream({k: (3,) for k in "abcd"}, produce))
    assert _entry_files(tmp_path) == []


def test_the_source_header_is_checked_before_any_tensor_is_read(tmp_path):
    state_dict = load_file(TINY / "model.safetensors")
    cases = {
        "unexpected tensors \\['extra'\\]": dict(state_dict, extra=np.zeros(1, "float32")),
        "missing tensors \\['norm.bias'\\]": {
            k: v for k, v in state_dict.items() if k != "norm.bias"
        },
        r"tensor 'head.bias' has shape \(11,\); the model expects \(10,\)": dict(
            state_dict, **{"head.bias": np.zeros(11, "float32")}
        ),
        "tensor 'head.bias' has dtype int32; expected a floating-point": dict(
            state_dict, **{"head.bias": np.zeros(10, "int32")}
        ),
    }
    for i, (message, tensors) in enumerate(cases.items()):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        shutil.copyfile(TINY / "config.json", folder / "config.json")
        save_file(tensors, str(folder / "model.safetensors"))
        with pytest.raises(CaiTWeightsError, match=message) as info:
            keras_cait.CaiTImageClassifier.from_preset(str(folder))
        assert str(folder / "model.safetensors") in str(info.value)
        assert _entry_files(tmp_path) == []


def test_a_cache_entry_that_does_not_fit_assigns_nothing(tmp_path):
    model = _tiny_model()
    before = _weights(model)
    arrays = {
        key: np.zeros(variable.shape, np.float32)
        for key, variable, _ in model_weight_map(model)
    }
    arrays["norm.bias"] = np.zeros(5, np.float32)  # last in the file order
    path = tmp_path / "entry.safetensors"
    save_file(arrays, str(path))
    with SafetensorsReader(path) as reader:
        with pytest.raises(CaiTWeightsError, match=r"tensor 'norm.bias' has shape \(5,\)"):
            loader.assign_weights(model, reader, "entry", (32, 32, 3), load_head=True)
    for a, b in zip(_weights(model), before):
        np.testing.assert_array_equal(a, b)


def test_the_cache_serves_a_resized_model_one_tensor_at_a_time(tmp_path):
    """A second load at another resolution comes from the cache (no
    conversion) and resamples the position embedding."""
    keras_cait.CaiTImageClassifier.from_preset(str(TINY))
    calls = []
    real = loader._convert_state_dict
    loader._convert_state_dict = lambda *args: calls.append(1) or real(*args)
    try:
        wider = keras_cait.CaiTImageClassifier.from_preset(
            str(TINY), image_shape=(48, 48, 3)
        )
    finally:
        loader._convert_state_dict = real
    assert calls == []
    assert tuple(wider.backbone.get_layer("patch_embedding").position_embedding.shape) == (
        1, 36, 48,
    )
