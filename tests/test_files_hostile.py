"""Hostile and damaged files handed to the commands (issue 10, "Files and commands"): every one
gets exit 2 and one stderr line that names the file, never a traceback. The files are made
here, in tmp_path; none is a binary fixture."""
from __future__ import annotations

import gzip
import json
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from cnngraph.cli import main


def one_line_error(capsys, *argv) -> str:
    """Run the CLI, expect exit 2 and exactly one `cnngraph CMD: error:` line on stderr."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("running on the CPU")]
    assert len(lines) == 1 and lines[0].startswith(f"cnngraph {argv[0]}: error: "), err
    return lines[0]


# --- one ONNX reader for infer, verify and bench -------------------------------------------
@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b""],
                         ids=["random", "empty"])
def test_bench_infer_verify_refuse_a_file_that_is_not_onnx_alike(tmp_path, capsys, content):
    model = tmp_path / "bad.onnx"
    model.write_bytes(content)
    (tmp_path / "x.npy").write_bytes(b"")
    messages = [one_line_error(capsys, "bench", model, "--device", "cpu"),
                one_line_error(capsys, "infer", model, tmp_path / "x.npy", "--device", "cpu"),
                one_line_error(capsys, "verify", model, "--against", "lenet5")]
    for message in messages:
        assert f"{model}: not an ONNX model file" in message


# --- one weights reader for export, verify, bench and run folders --------------------------
def test_random_bytes_are_unreadable_weights_not_pickled_objects(tmp_path, capsys):
    weights = tmp_path / "w.pt"
    weights.write_bytes(bytes(range(7, 256)) * 8)  # no zip, no pickle, no safetensors header
    message = one_line_error(capsys, "export", "lenet5", "-o", tmp_path / "m.onnx",
                             "--weights", weights)
    assert f"{weights}: unreadable as weights" in message and "pickled Python" not in message
    assert ".safetensors" in message and "state_dict" in message  # what it does read


def test_a_pickled_object_is_still_called_one(tmp_path, capsys):
    weights = tmp_path / "w.pt"
    torch.save({"conv.weight": torch.zeros(1), "f": torch.nn.ReLU()}, weights)
    assert "holds pickled Python objects" in one_line_error(
        capsys, "export", "lenet5", "-o", tmp_path / "m.onnx", "--weights", weights)


def test_truncated_safetensors_is_unreadable(tmp_path, capsys):
    whole = tmp_path / "whole.safetensors"
    save_file({"a": torch.ones(64)}, str(whole))
    for cut in (4, 20, len(whole.read_bytes()) - 8):
        weights = tmp_path / f"cut{cut}.safetensors"
        weights.write_bytes(whole.read_bytes()[:cut])
        assert f"{weights}: unreadable as weights" in one_line_error(
            capsys, "export", "lenet5", "-o", tmp_path / "m.onnx", "--weights", weights)
    assert not (tmp_path / "m.onnx").exists()


def test_non_finite_weights_are_refused_with_the_tensor_name(tmp_path, capsys):
    from cnngraph import build, load

    state = build(load("lenet5")).state_dict()
    state["c1.weight"] = torch.full_like(state["c1.weight"], float("nan"))
    state["f6.bias"] = state["f6.bias"].clone()
    state["f6.bias"][3] = float("inf")
    weights = tmp_path / "nan.safetensors"
    save_file(state, str(weights))
    for command in (["export", "lenet5", "-o", tmp_path / "m.onnx"],
                    ["verify", tmp_path / "m.onnx", "--against", "lenet5"]):
        if command[0] == "verify":
            assert main(["export", "lenet5", "-o", str(tmp_path / "m.onnx")]) == 0
            capsys.readouterr()
        message = one_line_error(capsys, *command, "--weights", weights)
        assert f"{weights}: NaN or inf values in" in message
        assert "c1.weight" in message and "f6.bias" in message


def test_a_checkpoint_dict_points_at_its_state_dict(tmp_path, capsys):
    weights = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "model": {"a": torch.zeros(1)}}, weights)
    assert "under 'model'" in one_line_error(capsys, "export", "lenet5", "-o",
                                             tmp_path / "m.onnx", "--weights", weights)


# --- infer: damaged arrays and images ------------------------------------------------------
@pytest.fixture
def tiny(tmp_path):
    """The 3-channel 8x8 test model of test_runtime, with a training mean for MNIST-like data."""
    from test_runtime import write_model
    return write_model(tmp_path / "tiny.onnx", meta={
        "cnngraph.input_shape": "[3, 8, 8]",
        "cnngraph.normalize": json.dumps({"mean": [0.13] * 3, "std": [0.3] * 3})})


def _good_npz(tmp_path) -> bytes:
    np.savez(tmp_path / "good.npz", x=np.zeros((1, 3, 8, 8), np.float32))
    return (tmp_path / "good.npz").read_bytes()


@pytest.mark.parametrize("make, reason", [
    (lambda d: (d / "bad.npz").write_bytes(_good_npz(d)[:-30]), "zip"),   # directory cut
    (lambda d: (d / "bad.npz").write_bytes(                                # data damaged: CRC
        _good_npz(d)[:120] + b"\xff" * 40 + _good_npz(d)[160:]), "CRC"),
], ids=["cut-zip", "bad-crc"])
def test_infer_damaged_npz_is_one_line(tiny, tmp_path, capsys, make, reason):
    make(tmp_path)
    message = one_line_error(capsys, "infer", tiny, tmp_path / "bad.npz", "--device", "cpu")
    assert f"{tmp_path / 'bad.npz'}: cannot read it as a NumPy file" in message
    assert reason in message


@pytest.mark.parametrize("name", ["obj.npy", "obj.npz"])
def test_infer_object_array_is_named_never_loaded(tiny, tmp_path, capsys, name):
    objects = np.array([1, "a", None], dtype=object)
    path = tmp_path / name
    np.save(path, objects) if name.endswith(".npy") else np.savez(path, x=objects)
    message = one_line_error(capsys, "infer", tiny, path, "--device", "cpu")
    assert f"{path}: holds an object array, which is never loaded" in message
    assert "allow_pickle" not in message


def test_infer_random_bytes_are_not_a_numpy_file(tiny, tmp_path, capsys):
    path = tmp_path / "rand.npy"
    path.write_bytes(bytes(range(7, 256)) * 4)  # numpy would say "contains pickled data"
    message = one_line_error(capsys, "infer", tiny, path, "--device", "cpu")
    assert f"{path}: not a NumPy file" in message
    assert "pickle" not in message.replace(str(path), "")


def test_infer_refuses_a_decompression_bomb(tiny, tmp_path, capsys):
    from cnngraph.files import MAX_PIXELS
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(bomb)   # 400 Mpx, a few kB on disk
    assert bomb.stat().st_size < 100_000
    message = one_line_error(capsys, "infer", tiny, bomb, "--device", "cpu")
    assert f"{bomb}: image" in message and f"{MAX_PIXELS:,} pixels" in message
    side = int(MAX_PIXELS ** 0.5) + 1                # over our bound, under Pillow's own
    Image.new("1", (side, side)).save(bomb)
    assert f"image of {side}x{side} pixels" in one_line_error(capsys, "infer", tiny, bomb,
                                                              "--device", "cpu")


def test_infer_truncated_images_are_one_line(tiny, tmp_path, capsys):
    pixels = np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    for fmt in ("png", "jpeg", "gif", "bmp"):
        whole = tmp_path / f"whole.{fmt}"
        Image.fromarray(pixels).save(whole)
        cut = tmp_path / f"cut.{fmt}"
        cut.write_bytes(whole.read_bytes()[:len(whole.read_bytes()) * 2 // 3])
        assert f"{cut}: cannot read it as an image" in one_line_error(
            capsys, "infer", tiny, cut, "--device", "cpu")


def test_infer_says_what_it_converted(tiny, tmp_path, capsys, caplog):
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (100, 80), (200, 100, 50, 128)).save(rgba)
    gray = tmp_path / "gray.png"
    Image.new("L", (8, 8), 40).save(gray)
    deep = tmp_path / "deep.png"                     # 16-bit: Pillow's convert clips at 255
    Image.fromarray(np.full((8, 8), 40 * 257, np.uint16)).save(deep)
    floats = tmp_path / "floats.tif"                 # floats in [0, 1]: 40/255 is 40
    Image.fromarray(np.full((8, 8), 40 / 255, np.float32)).save(floats)
    frames = tmp_path / "frames.gif"
    Image.new("RGB", (8, 8), (9, 9, 9)).save(frames, save_all=True,
                                             append_images=[Image.new("RGB", (8, 8), (200, 0, 0))])
    assert main(["infer", str(tiny), str(rgba), str(gray), str(deep), str(floats), str(frames), "--device",
                 "cpu", "--json"]) == 0
    notes = [line for line in caplog.messages if line.startswith("note:")]
    assert notes == [f"note: {rgba}: RGBA -> RGB (alpha dropped)",
                     f"note: {rgba}: resized 100x80 -> 8x8 (aspect ratio changed)",
                     f"note: {gray}: L -> RGB (1 channel repeated to 3)",
                     f"note: {deep}: 16-bit -> 8-bit",
                     f"note: {deep}: I;16 -> RGB (1 channel repeated to 3)",
                     f"note: {floats}: float -> 8-bit",
                     f"note: {floats}: F -> RGB (1 channel repeated to 3)",
                     f"note: {frames}: first of its 2 frames"]
    result = json.loads(capsys.readouterr().out)
    assert result[1]["top_k"] == result[2]["top_k"] == result[3]["top_k"]  # all 40 in 8 bits


def test_infer_warns_about_an_inverted_digit(tiny, tmp_path, caplog):
    digit = np.full((8, 8), 255, np.uint8)           # a dark stroke on a light background
    digit[2:6, 4] = 0
    Image.fromarray(digit).save(tmp_path / "dark.png")
    Image.fromarray(255 - digit).save(tmp_path / "light.png")
    assert main(["infer", str(tiny), str(tmp_path / "dark.png"), str(tmp_path / "light.png"),
                 "--device", "cpu"]) == 0
    warnings = [line for line in caplog.messages if "inverted" in line]
    assert len(warnings) == 1 and str(tmp_path / "dark.png") in warnings[0]
    assert "mean brightness 0.94" in warnings[0] and "average 0.13" in warnings[0]


def test_infer_warns_about_non_finite_and_normalised_arrays(tiny, tmp_path, capsys, caplog):
    x = np.random.default_rng(0).random((3, 3, 8, 8)).astype(np.float32)
    x[1, 0, 3, 3] = np.nan
    np.save(tmp_path / "nan.npy", x)
    np.save(tmp_path / "normalised.npy", (x[[0, 2]] - 0.13) / 0.3)
    assert main(["infer", str(tiny), str(tmp_path / "nan.npy"), str(tmp_path / "normalised.npy"),
                 "--device", "cpu"]) == 0
    warnings = [line for line in caplog.messages if line.startswith("warning:")]
    assert warnings == [
        f"warning: {tmp_path / 'nan.npy'}: 1 NaN or inf value(s), in sample(s) [1]",
        f"warning: {tmp_path / 'normalised.npy'}: float values span "
        f"[{(x[[0, 2]].min() - 0.13) / 0.3:.3g}, {(x[[0, 2]].max() - 0.13) / 0.3:.3g}]; float "
        "arrays are read as pixels in [0, 1] and normalised with the model's mean/std, so pass "
        "raw pixels (uint8, or floats / 255), not normalised ones",
        "warning: output 'logits' is NaN or inf for 1 input(s): nan.npy[1]; their results mean "
        "nothing"]
    out = capsys.readouterr().out
    assert "nan.npy[0]: " in out and "nan.npy[1]: 0 nan, 1 nan" in out
    result = infer_json_strict(capsys, tiny, tmp_path / "nan.npy")  # JSON has no NaN: null
    assert [c["probability"] for c in result[1]["top_k"]] == [None] * 5
    assert all(c["probability"] > 0 for c in result[0]["top_k"])


def infer_json_strict(capsys, *args) -> list[dict]:
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    assert main(["infer", *map(str, args), "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out, parse_constant=refuse)


# --- train --data: damaged IDX, CIFAR and .npz datasets -------------------------------------
def idx(code: int, dims: list[int], payload: bytes) -> bytes:
    """IDX by hand: 0, 0, type code, ndim, big-endian int32 dims, then the data."""
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}i", *dims) + payload


def test_train_idx_dims_that_overflow_or_are_negative(tmp_path, capsys):
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(idx(0x08, [2], b"\0\1"))
    images = tmp_path / "train-images-idx3-ubyte"
    for dims, says in (([65536] * 4, "18,446,744,073,709,551,616 bytes of data"),  # 2**64
                       ([2, -4, 4], "include a negative size")):
        images.write_bytes(idx(0x08, dims, bytes(32)))
        message = one_line_error(capsys, "train", "lenet5", "--data", tmp_path,
                                 "--out", tmp_path / "run", "--epochs", "1")
        assert f"{images}: " in message and says in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, says", [
    (idx(0x08, [2, 4, 4], bytes(20)), "promises dimensions [2, 4, 4] (32 bytes of data), the "
                                      "file has 20 (truncated?)"),
    (idx(0x08, [2, 4, 4], bytes(40)), "the file has 40 (trailing bytes)"),
    (b"\1\0\x08\3" + bytes(40), "bad magic number"),
    (idx(0x07, [2, 4, 4], bytes(32)), "IDX data type code 0x07 is unknown"),
    (bytes([0, 0, 8, 3, 0, 0]), "IDX header cut short: 3 dimensions need 16 bytes, the file has 6"),
    (idx(0x0D, [2, 4, 4], struct.pack(">32f", *[float("nan")] * 32)), "NaN or inf"),
    (gzip.compress(idx(0x08, [2, 4, 4], bytes(32)))[:-6], "cannot read"),
], ids=["truncated", "trailing", "magic", "type-code", "cut-header", "nan", "cut-gzip"])
def test_damaged_idx_images_are_one_data_error_line(tmp_path, content, says):
    from cnngraph.data import load_data
    from cnngraph.errors import DataError
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx(0x08, [2], b"\0\1"))
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(content)
    with pytest.raises(DataError) as caught:
        load_data(tmp_path, (1, 4, 4))
    assert str(caught.value).startswith(f"{images}: ") and says in str(caught.value)
    assert "\n" not in str(caught.value)


def test_idx_labels_must_be_integers_within_bounds(tmp_path):
    from cnngraph.data import load_data
    from cnngraph.errors import DataError
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx(0x08, [2, 4, 4], bytes(32)))
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(idx(0x0D, [2], struct.pack(">2f", 0.5, 1.0)))
    with pytest.raises(DataError, match="float32 values; labels must be integer"):
        load_data(tmp_path, (1, 4, 4))
    labels.write_bytes(idx(0x0C, [2], struct.pack(">2i", 0, 2**31 - 1)))  # 2 billion classes?
    with pytest.raises(DataError, match="label 2147483647 is past the 1,048,576 classes"):
        load_data(tmp_path, (1, 4, 4))
    labels.write_bytes(idx(0x08, [0], b""))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx(0x08, [0, 4, 4], b""))
    with pytest.raises(DataError, match="holds no samples"):
        load_data(tmp_path, (1, 4, 4))


def test_a_gzip_bomb_stops_at_the_size_bound(tmp_path, monkeypatch):
    from cnngraph.data import load_data, readers
    from cnngraph.errors import DataError
    monkeypatch.setattr(readers, "MAX_DATA_BYTES", 1 << 20)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx(0x08, [2], b"\0\1"))
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(idx(0x08, [2, 1024, 1024], bytes(2 << 20))))
    assert bomb.stat().st_size < 10_000
    with pytest.raises(DataError, match=r"holds more than 1,048,576 bytes once decompressed"):
        load_data(tmp_path, (1, 4, 4))


def test_damaged_npz_and_cifar_datasets_are_one_data_error_line(tmp_path):
    from cnngraph.data import load_data
    from cnngraph.errors import DataError
    np.savez(tmp_path / "good.npz", x=np.zeros((4, 4, 4), np.uint8), y=np.arange(4))
    good = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "crc.npz").write_bytes(good[:120] + b"\xff" * 40 + good[160:])
    np.savez(tmp_path / "text.npz", x=np.array([["a"] * 4] * 4), y=np.arange(4))
    for name, says in (("crc.npz", "CRC"), ("text.npz", "images of dtype <U1")):
        with pytest.raises(DataError, match=says) as caught:
            load_data(tmp_path / name, (1, 4, 4))
        assert str(caught.value).startswith(str(tmp_path / name))
    cifar = tmp_path / "cifar"
    cifar.mkdir()
    for batch, says in (({"data": np.zeros((2, 3072), np.uint8), "labels": 7}, "integer labels"),
                        ({"data": "pixels", "labels": [0, 1]}, "must be uint8"),
                        (b"\x80\x02]q\x00(K\x01", "not a readable CIFAR batch")):
        raw = batch if isinstance(batch, bytes) else pickle.dumps(batch, protocol=2)
        (cifar / "data_batch_1").write_bytes(raw)
        with pytest.raises(DataError, match=says) as caught:
            load_data(cifar, (3, 32, 32))
        assert str(caught.value).startswith(str(cifar / "data_batch_1"))


def test_a_compressed_npz_bomb_stops_at_the_size_bound(tiny, tmp_path, capsys, monkeypatch):
    from cnngraph.data import load_data, readers
    from cnngraph.errors import DataError
    from cnngraph.runtime import inputs
    for module in (readers, inputs):
        monkeypatch.setattr(module, "MAX_DATA_BYTES", 1 << 20)
    bomb = tmp_path / "bomb.npz"   # 4 MiB of zeros in a few kB
    np.savez_compressed(bomb, x=np.zeros((1024, 1, 32, 32), np.float32), y=np.zeros(1024, int))
    assert bomb.stat().st_size < 50_000
    with pytest.raises(DataError, match=r"bomb.npz: holds 4,\d{3},\d{3} bytes once unpacked"):
        load_data(bomb, (1, 32, 32))
    message = one_line_error(capsys, "infer", tiny, bomb, "--device", "cpu")
    assert f"{bomb}: array 'x' holds 4,194,432 bytes unpacked" in message  # 4 MiB + header


def test_float16_copy_of_junk_is_the_same_one_line(tmp_path):
    from cnngraph.errors import InputError
    from cnngraph.runtime.predictor import float16_model
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(bytes(range(256)))
    with pytest.raises(InputError, match="junk.onnx: not an ONNX model file"):
        float16_model(junk)
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(np.ones(4, np.float32), "w")])
    split = tmp_path / "split.onnx"
    onnx.save(helper.make_model(graph), str(split), save_as_external_data=True,
              location="split.onnx.data", size_threshold=0)
    (tmp_path / "split.onnx.data").unlink()   # the weights file left behind
    with pytest.raises(InputError, match="split.onnx: its external weights cannot be read"):
        float16_model(split)


def test_image_folder_bombs_and_damage_are_data_errors(tmp_path):
    from cnngraph.data import load_data
    from cnngraph.errors import DataError
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        Image.new("L", (8, 8), 9).save(tmp_path / label / "ok.png")
    bomb = tmp_path / "a" / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(bomb)
    with pytest.raises(DataError, match=r"bomb.png: image larger than the 67,108,864 pixels"):
        load_data(tmp_path, (1, 8, 8))
    bomb.write_bytes((tmp_path / "a" / "ok.png").read_bytes()[:40])
    with pytest.raises(DataError, match=r"bomb.png: cannot read it as an image"):
        load_data(tmp_path, (1, 8, 8))


# --- a seeded fuzzer over every reader ------------------------------------------------------
def _seed_files() -> dict:
    """format -> (valid bytes, suffix, reader): one small good file per format each reader
    takes; the fuzzer damages them."""
    import io

    from onnx import TensorProto, helper
    from safetensors.torch import save

    from cnngraph.data.readers import read_cifar_batch, read_idx, read_npz
    from cnngraph.files import read_image, read_onnx, read_weights
    from cnngraph.runtime.inputs import _read_array, _read_named

    def saved(write) -> bytes:
        buffer = io.BytesIO()
        write(buffer)
        return buffer.getvalue()

    idx_file = idx(0x08, [2, 4, 4], bytes(range(32)))
    pair = dict(x=np.arange(32, dtype=np.uint8).reshape(2, 4, 4), y=np.arange(2))
    relu = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    return {
        "idx": (idx_file, ".idx", read_idx),
        "idx.gz": (gzip.compress(idx_file), ".gz", read_idx),
        "npz": (saved(lambda b: np.savez(b, **pair)), ".npz", lambda p: read_npz(p, 0.5)),
        "npz-deflated": (saved(lambda b: np.savez_compressed(b, **pair)), ".npz",
                         lambda p: _read_array(p, "x")),
        "npz-per-input": (saved(lambda b: np.savez(b, **pair)), ".npz",
                          lambda p: _read_named(p, ["x", "y"], "x, y")),
        "npy": (saved(lambda b: np.save(b, pair["x"])), ".npy", lambda p: _read_array(p, "x")),
        "cifar": (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]},
                               protocol=2), ".pkl", read_cifar_batch),
        "png": (saved(lambda b: Image.new("RGBA", (9, 7), 5).save(b, "PNG")), ".png",
                lambda p: read_image(p, "L", (4, 4))),
        "jpeg": (saved(lambda b: Image.new("RGB", (9, 7), 5).save(b, "JPEG")), ".jpg",
                 lambda p: read_image(p, "RGB", (4, 4))),
        "safetensors": (save({"a": torch.ones(3)}), ".safetensors", read_weights),
        "torch": (saved(lambda b: torch.save({"a": torch.ones(3)}, b)), ".pt", read_weights),
        "onnx": (relu.SerializeToString(), ".onnx", read_onnx),
    }


def fuzz_files(folder, seed: int, per_format: int) -> tuple[int, list[str]]:
    """Damage each seed file `per_format` times (cuts, flipped bytes, hostile int32s such as
    -1, 2**31 - 1 and 65536, inserted bytes) and read it: (cases, escapes), an escape being
    anything but one line of the project's own errors."""
    import random
    import warnings

    from cnngraph.errors import CnnGraphError

    rng, cases, escapes = random.Random(seed), 0, []
    for name, (good, suffix, read) in _seed_files().items():
        for _ in range(per_format):
            data = bytearray(good)
            for _ in range(rng.randint(1, 4)):
                at, op = rng.randrange(len(data) + 1), rng.random()
                if op < 0.3:
                    del data[at:]
                elif op < 0.7 and at < len(data):
                    data[at] = rng.randrange(256)
                elif op < 0.85:
                    data[at:at + 4] = struct.pack(">i", rng.choice([-1, 2**31 - 1, 65536, 0, -2**31]))
                else:
                    data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            path = folder / f"fuzz{suffix}"
            path.write_bytes(bytes(data))
            cases += 1
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    read(path)
            except CnnGraphError as exc:
                if "\n" in str(exc):
                    escapes.append(f"{name}: multi-line {exc!r}")
            except Exception as exc:  # noqa: BLE001 - what the test is looking for
                escapes.append(f"{name} (seed {seed}): {type(exc).__name__}: {exc}")
    return cases, escapes


def test_seeded_file_fuzz_gives_only_one_line_errors(tmp_path):
    cases, escapes = fuzz_files(tmp_path, seed=10, per_format=40)
    assert cases == 480 and escapes == []


if __name__ == "__main__":  # the longer run: python tests/test_files_hostile.py SEEDS PER_FORMAT
    import sys
    import tempfile
    from pathlib import Path

    total, found = 0, []
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(int(sys.argv[1])):
            cases, escapes = fuzz_files(Path(folder), seed, int(sys.argv[2]))
            total, found = total + cases, found + escapes
    print(f"{total} damaged files, {len(found)} escapes", *found, sep="\n")


def test_pillow_logging_an_error_adds_no_line(tiny, tmp_path, capsys, caplog):
    tiff = tmp_path / "spp.tif"
    Image.new("RGB", (8, 8)).save(tiff)
    entry = b"\x15\x01\x03\x00\x01\x00\x00\x00\x03\x00"  # SamplesPerPixel, SHORT, 1: 3
    assert tiff.read_bytes().count(entry) == 1
    tiff.write_bytes(tiff.read_bytes().replace(entry, entry[:8] + b"\xfc\x00"))  # 252
    assert f"{tiff}: cannot read it as an image" in one_line_error(
        capsys, "infer", tiny, tiff, "--device", "cpu")
    assert not [r for r in caplog.records if r.name.startswith("PIL")]  # Pillow logs an error


# --- damaged files and pickled objects told apart by the file, not by torch's message ------
def test_damage_and_pickled_objects_are_told_apart_for_weights(tmp_path, capsys):
    garbage, evil = tmp_path / "garbage.pt", tmp_path / "evil.pt"
    garbage.write_bytes(b"\x80garbage\n")  # a pickle protocol byte, then damage
    evil.write_bytes(pickle.dumps({"w": __import__("os").system}, protocol=4))
    export = ("export", "lenet5", "-o", tmp_path / "m.onnx", "--weights")
    message = one_line_error(capsys, *export, garbage)  # stderr: one line, no UserWarning
    assert f"{garbage}: unreadable as weights (damaged" in message and "pickled Python" not in message
    with warnings.catch_warnings(record=True) as caught:  # pytest would hide them from stderr
        warnings.simplefilter("always")
        message = one_line_error(capsys, *export, evil)  # a protocol-4 pickle: torch warns
    assert not caught, [str(w.message) for w in caught]
    assert f"{evil}: holds pickled Python objects" in message and "damaged" not in message


def test_garbage_checkpoint_is_damaged_not_pickled(tmp_path):
    from cnngraph.errors import CnnGraphError
    from cnngraph.train.rundir import read_checkpoint

    (tmp_path / "checkpoint.pt").write_text("garbage\n")
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(__import__("os").system, protocol=4))
    with pytest.raises(CnnGraphError, match=r"unreadable as a checkpoint \(damaged") as info:
        read_checkpoint(tmp_path / "checkpoint.pt")
    assert "pickled Python" not in str(info.value)
    with pytest.raises(CnnGraphError, match="holds pickled Python objects"):
        read_checkpoint(tmp_path / "evil.pt")


def test_onnxruntime_refusal_keeps_its_reason_not_its_cpp_signature(tmp_path, capsys):
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = tmp_path / "ir99.onnx"
    model.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                        ir_version=99).SerializeToString())
    np.save(tmp_path / "x.npy", np.zeros(1, np.float32))
    message = one_line_error(capsys, "infer", model, tmp_path / "x.npy", "--device", "cpu")
    assert message.startswith(f"cnngraph infer: error: {model}: onnxruntime cannot load it: "
                              "Unsupported model IR version: 99, max supported IR version: ")
    reason = message.split("cannot load it: ")[1]
    assert ".cc:" not in reason and "onnxruntime::" not in reason and len(reason) < 80, reason
