"""`keras_cait_base.io.safetensors_io`, the wrapper over `safetensors.safe_open`: valid
files read exactly, malformed ones give a keras-cait error naming the file (and tensor),
and what it adds (SHA-256, NaN/Inf, float64, bounded memory map) works."""

import hashlib
import json
import struct
import warnings

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save, save_file

from keras_cait_base import errors
from keras_cait_base.io import safetensors_io
from keras_cait_base.io.safetensors_io import SafetensorsFile, read_safetensors

GOOD_TENSORS = {
    "a": np.arange(12, dtype="float32").reshape(3, 4),
    "b": np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16),
    "c": np.array([0.25], dtype="float16"),
    "d": np.array([[1, 2]], dtype="int64"),
}
GOOD = save(GOOD_TENSORS)


def raw(header, data=b"", header_bytes=None):
    """The bytes of a safetensors file from a header dict and raw data bytes."""
    encoded = header_bytes if header_bytes is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.safetensors"
    save_file(GOOD_TENSORS, str(path))
    return path


def test_reads_what_safetensors_wrote_bit_exactly(good):
    result = read_safetensors(good)
    assert sorted(result) == sorted(GOOD_TENSORS)
    for name, array in GOOD_TENSORS.items():
        assert result[name].dtype == array.dtype and result[name].shape == array.shape
        np.testing.assert_array_equal(result[name], array)
    with SafetensorsFile(good) as file:
        assert file.shape("a") == (3, 4) and file.dtype("b") == "bfloat16"
        assert "d" in file and "e" not in file
        with pytest.raises(KeyError):
            file.read("e")


def test_sha256_accepts_the_right_digest_and_catches_flip_and_truncation(good):
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    assert safetensors_io.sha256_file(good) == digest
    read_safetensors(good, expected_sha256=digest.upper())  # case-insensitive
    data = bytearray(good.read_bytes())
    data[-1] ^= 0x01  # one bit in the last tensor byte: still a valid file
    good.write_bytes(bytes(data))
    with pytest.raises(errors.CaiTIntegrityError, match="SHA-256 mismatch") as info:
        read_safetensors(good, expected_sha256=digest)
    assert str(good) in str(info.value)
    good.write_bytes(bytes(data[:-4]))
    with pytest.raises(errors.CaiTIntegrityError, match=f"{good}.*preset 'x' expects"):
        safetensors_io.verify_sha256(good, digest, expected_by="preset 'x'")


@pytest.mark.parametrize("digest", ["abc", 123, "g" * 64])
def test_a_malformed_expected_digest_is_a_config_error(good, digest):
    with pytest.raises(errors.CaiTConfigError, match="SHA-256"):
        read_safetensors(good, expected_sha256=digest)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(errors.CaiTFileNotFoundError, match="absent.safetensors"):
        read_safetensors(tmp_path / "absent.safetensors")
    with pytest.raises(errors.CaiTWeightsError, match="not a regular file"):
        read_safetensors(tmp_path)


@pytest.mark.parametrize("data, message", [
    (b"", r"bad\.safetensors: the file is empty"),
    *[(GOOD[:keep], "truncated") for keep in (3, 8, 20, -1)],
    (np.random.default_rng(0).bytes(4096), r"bad\.safetensors: not a valid"),
    # The header lies about sizes: 3x4 float32 is 48 bytes, not 8.
    (raw({"a": entry("F32", [3, 4], 0, 8)}, b"\0" * 8), "lies about sizes"),
    (raw({"a": entry("F32", [4], 0, 16)}, b"\0" * 8), "truncated"),
    (raw({"a": entry("F32", [1], 4, 0)}, b"\0" * 4), "tensor 'a'"),
    (raw({"a": entry("F32", [2], 0, 8), "b": entry("F32", [1], 4, 8)}, b"\0" * 8), "tensor 'b'"),
    (raw({"a": entry("F32", [1], 4, 8)}, b"\0" * 8), "tensor 'a'.* gap"),
    (raw({"a": entry("F32", [1], 0, 4)}, b"\0" * 12), "extra bytes"),
    (raw({"a": entry("Q7", [1], 0, 4)}, b"\0" * 4), "Q7"),
    (raw({"a": entry("F32", [-1], 0, 4)}, b"\0" * 4), "-1"),
    (raw({"__metadata__": {"k": 1}}), "not a valid safetensors file"),
    (raw({"a": entry("F32", [2**40, 2**40], 0, 4)}, b"\0" * 4), "overflow"),
    (raw(None, header_bytes=b'{"a": '), "not a safetensors file"),
    (raw({"w": entry("F8_E4M3", [4], 0, 4)}, b"\0" * 4), "tensor 'w' has dtype F8_E4M3"),
])
def test_malformed_files_are_refused_naming_the_file(tmp_path, data, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(errors.CaiTWeightsError, match=message) as info:
        read_safetensors(path)
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["float32", "float16", ml_dtypes.bfloat16])
def test_non_finite_values_are_refused_unless_allowed(tmp_path, bad, dtype):
    path = tmp_path / "nan.safetensors"
    save_file({"w": np.array([1.0, bad, 2.0], dtype=dtype)}, str(path))
    with pytest.raises(errors.CaiTWeightsError, match="'w' holds 1 NaN or Inf"):
        read_safetensors(path)
    allowed = read_safetensors(path, allow_non_finite=True)["w"]
    assert not np.isfinite(allowed.astype("float32")[1])


def test_float64_is_converted_to_float32_with_a_warning_unless_beyond_range(tmp_path):
    path = tmp_path / "f64.safetensors"
    values = np.array([0.1, -3.0, 1e30])
    save_file({"w": values}, str(path))
    with pytest.warns(UserWarning, match="'w' is float64; converted to float32"):
        result = read_safetensors(path)["w"]
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, values.astype("float32"))
    save_file({"w": np.array([1e300])}, str(path))
    with pytest.raises(errors.CaiTWeightsError, match="beyond the float32 range"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_safetensors(path)


def _resident_file_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) / 1024
    pytest.skip("no RssFile in /proc/self/status")


def test_reading_a_whole_file_keeps_a_bounded_part_of_it_mapped(tmp_path, monkeypatch):
    """Reopening every `REOPEN_EVERY_BYTES` keeps ~4 of a 48 MB file's pages mapped."""
    path = tmp_path / "big.safetensors"
    tensors = {f"t{i:02d}": np.full((1 << 18,), i, np.float32) for i in range(48)}
    save_file(tensors, str(path))
    monkeypatch.setattr(safetensors_io, "REOPEN_EVERY_BYTES", 4 << 20)
    before = _resident_file_mb()
    peak = 0.0
    with SafetensorsFile(path) as file:
        for key in file.keys():
            np.testing.assert_array_equal(file.read(key), tensors[key])
            peak = max(peak, _resident_file_mb() - before)
    assert peak < 16, f"{peak:.0f} MB of the 48 MB file stayed mapped"
