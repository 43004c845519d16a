"""`keras_cait.read_safetensors`: valid files read exactly, every
kind of malformed file raises a keras-cait error naming the file."""

import hashlib
import json
import struct
import warnings

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from keras_cait.errors import (
    CaiTConfigError,
    CaiTFileNotFoundError,
    CaiTIntegrityError,
    CaiTWeightsError,
)
from keras_cait.io.safetensors_io import read_safetensors, sha256_file, verify_sha256
from tests.support import TIMM


def raw_file(path, header, data=b"", header_bytes=None):
    """Writes a safetensors file from a header dict and raw data bytes."""
    encoded = header_bytes if header_bytes is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


@pytest.fixture
def good(tmp_path):
    tensors = {
        "a": np.arange(12, dtype="float32").reshape(3, 4),
        "b": np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16),
        "c": np.array([0.25], dtype="float16"),
        "d": np.array([[1, 2]], dtype="int64"),
    }
    path = tmp_path / "good.safetensors"
    save_file(tensors, str(path))
    return path, tensors


def test_reads_what_safetensors_wrote_bit_exactly(good):
    path, tensors = good
    result = read_safetensors(path)
    assert sorted(result) == sorted(tensors)
    for name, array in tensors.items():
        assert result[name].dtype == array.dtype
        assert result[name].shape == array.shape
        np.testing.assert_array_equal(result[name], array)


def test_reads_the_shipped_timm_fixture_like_safetensors(tmp_path):
    path = TIMM / "tiny_avg_headless" / "model.safetensors"
    ours, theirs = read_safetensors(path), load_file(path)
    assert ours.keys() == theirs.keys()
    for name in theirs:
        np.testing.assert_array_equal(ours[name], theirs[name])
        assert ours[name].dtype == theirs[name].dtype


def test_sha256_accepts_the_right_digest_and_catches_flip_and_truncation(good):
    path, _ = good
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_file(path) == digest
    read_safetensors(path, expected_sha256=digest.upper())  # case-insensitive
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit in the last tensor byte: still a valid file
    path.write_bytes(bytes(data))
    with pytest.raises(CaiTIntegrityError, match="SHA-256 mismatch") as info:
        read_safetensors(path, expected_sha256=digest)
    assert str(path) in str(info.value)
    path.write_bytes(bytes(data[:-4]))
    with pytest.raises(CaiTIntegrityError, match=str(path)):
        verify_sha256(path, digest)


@pytest.mark.parametrize("digest", ["abc", 123, "g" * 64])
def test_a_malformed_expected_digest_is_a_config_error(good, digest):
    with pytest.raises(CaiTConfigError, match="SHA-256"):
        read_safetensors(good[0], expected_sha256=digest)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.safetensors"
    with pytest.raises(CaiTFileNotFoundError, match="absent.safetensors"):
        read_safetensors(path)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(CaiTWeightsError, match="not a regular file"):
        read_safetensors(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    with pytest.raises(CaiTWeightsError, match="empty.safetensors.*empty"):
        read_safetensors(path)


@pytest.mark.parametrize("keep", [3, 8, 20, -1])
def test_truncated_file(good, keep):
    path, _ = good
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(CaiTWeightsError, match="truncated|end past") as info:
        read_safetensors(path)
    assert str(path) in str(info.value)


def test_random_bytes(tmp_path):
    path = tmp_path / "random.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CaiTWeightsError, match="random.safetensors"):
        read_safetensors(path)


def test_header_length_beyond_the_limit_is_refused_without_reading(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(CaiTWeightsError, match="limit"):
        read_safetensors(path)


@pytest.mark.parametrize(
    "header_bytes, message",
    [
        (b"\xff\xfe\x00{", "not UTF-8"),
        (b'{"a": ', "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"a": 1, "a": 2}', "names 'a' twice"),
        (b"[" * 100000 + b"]" * 100000, "JSON"),
    ],
)
def test_bad_header_json(tmp_path, header_bytes, message):
    path = raw_file(tmp_path / "bad.safetensors", None, header_bytes=header_bytes)
    with pytest.raises(CaiTWeightsError, match=message):
        read_safetensors(path)


@pytest.mark.parametrize(
    "header, data, message",
    [
        # The header lies about sizes: 3x4 float32 is 48 bytes, not 8.
        ({"a": entry("F32", [3, 4], 0, 8)}, b"\0" * 8, "lies about its size"),
        # Offsets past the end of the file (a truncated data section).
        ({"a": entry("F32", [4], 0, 16)}, b"\0" * 8, "end past the data"),
        ({"a": entry("F32", [1], 4, 0)}, b"\0" * 4, "begin <= end"),
        ({"a": entry("F32", [1], -4, 0)}, b"\0" * 4, "data_offsets"),
        ({"a": entry("F32", [2], 0, 8), "b": entry("F32", [1], 4, 8)},
         b"\0" * 8, "overlap"),
        ({"a": entry("F32", [1], 4, 8)}, b"\0" * 8, "unaccounted"),
        ({"a": entry("F32", [1], 0, 4)}, b"\0" * 12, "8 trailing bytes"),
        ({"a": entry("Q7", [1], 0, 4)}, b"\0" * 4, "unsupported dtype 'Q7'"),
        ({"a": entry([], [1], 0, 4)}, b"\0" * 4, r"unsupported dtype \[\]"),
        ({"a": entry("F32", [-1], 0, 4)}, b"\0" * 4, "non-negative"),
        ({"a": entry("F32", ["2"], 0, 8)}, b"\0" * 8, "shape"),
        ({"a": entry("F32", [True], 0, 4)}, b"\0" * 4, "shape"),
        ({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "exactly the keys"),
        ({"a": [1, 2]}, b"", "exactly the keys"),
        ({"": entry("F32", [1], 0, 4)}, b"\0" * 4, "empty name"),
        ({"__metadata__": {"k": 1}}, b"", "__metadata__"),
        # A shape whose product overflows any allocation: refused before.
        ({"a": entry("F32", [2**40, 2**40], 0, 4)}, b"\0" * 4, "lies about"),
    ],
)
def test_inconsistent_headers(tmp_path, header, data, message):
    path = raw_file(tmp_path / "lying.safetensors", header, data)
    with pytest.raises(CaiTWeightsError, match=message) as info:
        read_safetensors(path)
    assert "lying.safetensors" in str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["float32", "float16", ml_dtypes.bfloat16])
def test_non_finite_values_are_refused_unless_allowed(tmp_path, bad, dtype):
    path = tmp_path / "nan.safetensors"
    save_file({"w": np.array([1.0, bad, 2.0], dtype=dtype)}, str(path))
    with pytest.raises(CaiTWeightsError, match="'w' holds 1 NaN or Inf"):
        read_safetensors(path)
    allowed = read_safetensors(path, allow_non_finite=True)["w"]
    assert not np.isfinite(allowed.astype("float32")[1])


def test_float64_is_converted_to_float32_with_a_warning(tmp_path):
    path = tmp_path / "f64.safetensors"
    values = np.array([0.1, -3.0, 1e30])
    save_file({"w": values}, str(path))
    with pytest.warns(UserWarning, match="'w' is float64; converted to float32"):
        result = read_safetensors(path)["w"]
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, values.astype("float32"))


def test_float64_beyond_float32_range_is_refused(tmp_path):
    path = tmp_path / "f64.safetensors"
    save_file({"w": np.array([1e300])}, str(path))
    with pytest.raises(CaiTWeightsError, match="beyond the float32 range"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_safetensors(path)
