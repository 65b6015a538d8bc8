"""jsr.torch_pickle: checkpoints read without PyTorch equal torch.load; pickles that would run code are refused."""

import os
import pickle
import struct
import subprocess
import sys
import zipfile
from collections.abc import Mapping

import numpy as np
import pytest

from jsr.torch_pickle import MAGIC_NUMBER, PROTOCOL_VERSION, RefusedPickle, TorchPickleError, load, state_dict_of

REFEREE_CHECKPOINTS = [
    "FSRCNN/fsrcnn_x2.pth",
    "FSRCNN/fsrcnn_x3.pth",
    "FSRCNN/fsrcnn_x4.pth",
    "IMDN/IMDN_x2.pth",
    "IMDN/IMDN_x3.pth",
    "IMDN/IMDN_x4.pth",
    "PAN/PANx2_DF2K.pth",
    "PAN/PANx3_DF2K.pth",
    "PAN/PANx4_DF2K.pth",
    "Real-ESRGAN/realesr-animevideov3.pth",
    "leftthomas_SRGAN/netG_epoch_2_100.pth",
    "leftthomas_SRGAN/netG_epoch_4_100.pth",
    "leftthomas_SRGAN/netG_epoch_8_100.pth",
]
VDSR = "VDSR/model_epoch_50.pth"


def _torch():
    import torch

    return torch


def _without_torch(monkeypatch):
    # `import torch` fails from here on: the reader must not need it, even where it is installed.
    monkeypatch.setitem(sys.modules, "torch", None)


# ------------------------------------------------------------------ hand-written pickles and containers

P = pickle


def s(text: str) -> bytes:
    raw = text.encode()
    return P.BINUNICODE + struct.pack("<I", len(raw)) + raw


def i(n: int) -> bytes:
    return P.BININT + struct.pack("<i", n)


def tup(*items: bytes) -> bytes:
    return P.MARK + b"".join(items) + P.TUPLE


def glob(module: str, name: str) -> bytes:
    return P.GLOBAL + f"{module}\n{name}\n".encode()


def call(func: bytes, *args: bytes) -> bytes:
    return func + tup(*args) + P.REDUCE


def dict_of(entries: dict[str, bytes]) -> bytes:
    return P.EMPTY_DICT + P.MARK + b"".join(s(k) + v for k, v in entries.items()) + P.SETITEMS


def program(body: bytes) -> bytes:
    return P.PROTO + b"\x02" + body + P.STOP


STORAGE_TYPES = {np.float32: "FloatStorage", np.float64: "DoubleStorage", np.int16: "ShortStorage"}


def tensor(key, array, offset, size, stride, legacy, view: bytes = P.NONE) -> bytes:
    """torch._utils._rebuild_tensor_v2 over storage `key`, saved from a CUDA device."""
    pid = [s("storage"), glob("torch", STORAGE_TYPES[array.dtype.type]), s(key), s("cuda:0"), i(array.size)]
    if legacy:
        pid.append(view)
    sizes, strides = tup(*map(i, size)), tup(*map(i, stride))
    hooks = call(glob("collections", "OrderedDict"))
    return call(
        glob("torch._utils", "_rebuild_tensor_v2"),
        tup(*pid) + P.BINPERSID,
        i(offset),
        sizes,
        strides,
        P.NEWFALSE,
        hooks,
    )


def write_legacy(path, data_pkl: bytes, storages: list[tuple[str, np.ndarray]]):
    sys_info = {"protocol_version": PROTOCOL_VERSION, "little_endian": True, "type_sizes": {"short": 2, "int": 4}}
    with open(path, "wb") as f:
        for header in (MAGIC_NUMBER, PROTOCOL_VERSION, sys_info):
            pickle.dump(header, f, protocol=2)
        f.write(data_pkl)
        pickle.dump([key for key, _ in storages], f, protocol=2)
        for _, array in storages:
            f.write(struct.pack("<q", array.size) + array.astype(array.dtype.newbyteorder("<")).tobytes())
    return path


def write_zip(path, data_pkl: bytes, storages: list[tuple[str, np.ndarray]], byteorder="little"):
    order = "<" if byteorder == "little" else ">"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", byteorder)
        for key, array in storages:
            archive.writestr(f"archive/data/{key}", array.astype(array.dtype.newbyteorder(order)).tobytes())
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/.data/version", "3\n")
        archive.writestr("archive/.data/serialization_id", "0123456789")
    return path


W = np.random.default_rng(0).standard_normal(24).astype(np.float32)
INTS = np.arange(-3, 9, dtype=np.int16)
DOUBLES = np.linspace(0.0, 1.0, 5)


def hand_made(tmp_path, container: str):
    """A checkpoint with views (offset, transposed, strided) of CUDA storages; returns (path, expected arrays)."""
    legacy = container == "legacy"
    entries = {
        "w": tensor("0", W, 0, (2, 3, 4), (12, 4, 1), legacy),
        "w_t": tensor("0", W, 0, (4, 6), (1, 4), legacy),
        "w_tail": tensor("0", W, 10, (7,), (2,), legacy),
        "ints": tensor("1", INTS, 2, (2, 5), (5, 1), legacy),
        "scalar": tensor("2", DOUBLES, 3, (), (), legacy),
    }
    expected = {
        "w": W.reshape(2, 3, 4),
        "w_t": W.reshape(6, 4).T,
        "w_tail": W[10::2],
        "ints": INTS[2:].reshape(2, 5),
        "scalar": DOUBLES[3],
    }
    if legacy:  # a pre-1.0 storage view: (view key, offset, size) over storage '0'
        entries["slice"] = tensor("0", W, 0, (8,), (1,), legacy, view=tup(s("0v"), i(4), i(8)))
        expected["slice"] = W[4:12]
    storages = [("0", W), ("1", INTS), ("2", DOUBLES)]
    data = program(dict_of(entries))
    path = tmp_path / f"hand_{container}.pth"
    if legacy:
        write_legacy(path, data, storages)
    else:
        write_zip(path, data, storages, byteorder="big" if container == "zip-big" else "little")
    return path, expected


# --------------------------------------------------------------------------------------- comparisons


def _same_as_torch(ours, theirs, where="checkpoint"):
    torch = _torch()
    if isinstance(theirs, torch.Tensor):
        theirs = theirs.detach()
        assert isinstance(ours, np.ndarray), where
        assert tuple(ours.shape) == tuple(theirs.shape), where
        assert ours.dtype.name == str(theirs.dtype).removeprefix("torch."), where
        if theirs.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):  # ml_dtypes: via float32, exact
            np.testing.assert_array_equal(ours.astype(np.float32), theirs.float().numpy(), err_msg=where)
        else:
            want = np.ascontiguousarray(theirs.numpy())
            assert np.ascontiguousarray(ours).tobytes() == want.tobytes(), where
    elif isinstance(theirs, Mapping):
        assert type(ours).__name__ == type(theirs).__name__, where
        assert list(ours) == list(theirs), where
        for key in theirs:
            _same_as_torch(ours[key], theirs[key], f"{where}[{key!r}]")
    elif isinstance(theirs, list | tuple):
        assert type(ours) is type(theirs) and len(ours) == len(theirs), where
        for n, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            _same_as_torch(a, b, f"{where}[{n}]")
    else:
        assert ours == theirs and type(ours) is type(theirs), where


def _torch_load(path):
    return _torch().load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------- referee


@pytest.mark.referee
def test_referee_list_is_every_checkpoint(referee):
    found = {str(p.relative_to(referee / "checkpoints")) for p in (referee / "checkpoints").rglob("*.pth")}
    assert found == {*REFEREE_CHECKPOINTS, VDSR}


@pytest.mark.torch
@pytest.mark.referee
@pytest.mark.parametrize("name", REFEREE_CHECKPOINTS)
def test_referee_checkpoint_equals_torch_load(referee, name):
    path = referee / "checkpoints" / name
    _same_as_torch(load(path), _torch_load(path))


@pytest.mark.referee
def test_vdsr_full_module_pickle(referee, monkeypatch):
    _without_torch(monkeypatch)
    checkpoint = load(referee / "checkpoints" / VDSR)
    assert checkpoint["epoch"] == 50 and type(checkpoint["model"]).standin_global == "vdsr.Net"
    state = state_dict_of(checkpoint["model"])
    expected = {f"residual_layer.{n}.conv.weight": (64, 64, 3, 3) for n in range(18)}
    expected |= {"input.weight": (64, 1, 3, 3), "output.weight": (1, 64, 3, 3)}
    assert {k: v.shape for k, v in state.items()} == expected
    for key, value in state.items():
        assert value.dtype == np.float32 and np.isfinite(value).all() and np.any(value != 0), key


# ----------------------------------------------------------------------------------- torch.save files


def _sample(torch):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    shared = torch.arange(12, dtype=torch.float32)
    return {
        "float32": base,
        "float16": base.half(),
        "bfloat16": base.bfloat16(),
        "float8_e4m3fn": base.to(torch.float8_e4m3fn),  # written with _rebuild_tensor_v3 over an UntypedStorage
        "float64": base.double(),
        "int64": torch.arange(-6, 6).reshape(3, 4),
        "int32": torch.arange(5, dtype=torch.int32),
        "int16": torch.arange(-2, 2, dtype=torch.int16),
        "int8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "uint8": torch.tensor([0, 200, 255], dtype=torch.uint8),
        "uint16": torch.tensor([0, 65535], dtype=torch.uint16),
        "bool": base > 0,
        "complex64": torch.complex(base, -base),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "transposed": base.T,
        "strided": base[1:, ::2],
        "head": shared[:8].view(2, 4),
        "tail": shared[6:],
        "param": torch.nn.Parameter(base[:2].clone()),
        "nested": [base[0], (1, 2.5, "text", None, True)],
    }


@pytest.mark.torch
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_save_round_trip(tmp_path, monkeypatch, legacy):
    torch = _torch()
    path = tmp_path / "sample.pt"
    saved = _sample(torch)
    torch.save(saved, path, _use_new_zipfile_serialization=not legacy)
    with monkeypatch.context() as m:
        _without_torch(m)
        ours = load(path)
    _same_as_torch(ours, saved)
    assert np.shares_memory(ours["head"], ours["tail"])  # one storage, two views, as in torch
    assert not ours["transposed"].flags.c_contiguous


def _layers(torch):
    nn = torch.nn
    conv = nn.Conv2d(3, 4, 3, bias=False)
    conv.register_buffer("scratch", torch.ones(2), persistent=False)
    return nn.Sequential(conv, nn.BatchNorm2d(4), nn.PReLU(4), nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


@pytest.mark.torch
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_full_module_pickle_gives_the_state_dict(tmp_path, legacy):
    torch = _torch()
    model = _layers(torch)
    model[1].running_mean.uniform_()
    path = tmp_path / "model.pt"
    torch.save(model, path, _use_new_zipfile_serialization=not legacy)
    state = state_dict_of(load(path))
    _same_as_torch(state, dict(model.state_dict()))


@pytest.mark.torch
def test_numpy_and_python_values(tmp_path):
    torch = _torch()
    saved = {
        "psnr": np.float64(31.25),
        "step": np.int64(7),
        "table": np.arange(6, dtype=">i4").reshape(2, 3),
        "set": {1, 2},
        "bytes": b"\x00\xff",
        "complex": 1 + 2j,
        "size": torch.Size([2, 3]),
        "device": torch.device("cuda", 1),
    }
    torch.save(saved, tmp_path / "values.pt")
    ours = load(tmp_path / "values.pt")
    assert ours["psnr"] == 31.25 and ours["step"] == 7 and ours["set"] == {1, 2} and ours["bytes"] == b"\x00\xff"
    np.testing.assert_array_equal(ours["table"], np.arange(6).reshape(2, 3))
    assert ours["complex"] == 1 + 2j and ours["size"] == (2, 3) and ours["device"] == "cuda:1"


# -------------------------------------------------------------------------------- hand-made formats


@pytest.mark.parametrize("container", ["legacy", "zip", "zip-big"])
def test_hand_made_views_of_cuda_storages(tmp_path, monkeypatch, container):
    _without_torch(monkeypatch)
    path, expected = hand_made(tmp_path, container)
    ours = load(path)
    assert list(ours) == list(expected)
    for key, want in expected.items():
        assert ours[key].dtype == want.dtype and ours[key].shape == np.shape(want), key
        np.testing.assert_array_equal(ours[key], want, err_msg=key)
    assert np.shares_memory(ours["w"], ours["w_t"])


@pytest.mark.torch
@pytest.mark.parametrize("container", ["legacy", "zip", "zip-big"])
def test_hand_made_files_are_what_torch_reads(tmp_path, container):
    path, _ = hand_made(tmp_path, container)
    _same_as_torch(load(path), _torch_load(path))


# ----------------------------------------------------------------------------------- refusing code


class _Evil:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _attacks(sentinel):
    return {
        "os.system": (os.system, (f"touch {sentinel}",)),
        "builtins.eval": (eval, (f"__import__('pathlib').Path({str(sentinel)!r}).touch()",)),
        "subprocess.Popen": (subprocess.Popen, (["touch", str(sentinel)],)),
    }


def _in_container(tmp_path, data_pkl: bytes, container: str):
    path = tmp_path / f"evil_{container}.pth"
    return (write_legacy if container == "legacy" else write_zip)(path, data_pkl, [])


def _assert_refused(path, name, sentinel):
    with pytest.raises(RefusedPickle, match="refused: the pickle would call") as info:
        load(path)
    assert name in str(info.value) and path.name in str(info.value)
    assert not sentinel.exists()


@pytest.mark.parametrize("container", ["legacy", "zip"])
@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_reduce_of_a_callable_is_refused(tmp_path, name, container):
    sentinel = tmp_path / "SENTINEL"
    func, args = _attacks(sentinel)[name]
    data = pickle.dumps({"state_dict": {"w": 1.0}, "payload": _Evil(func, args)}, protocol=2)
    _assert_refused(_in_container(tmp_path, data, container), name, sentinel)


@pytest.mark.parametrize("protocol", [0, 4])
def test_other_pickle_protocols_are_refused_too(tmp_path, protocol):
    sentinel = tmp_path / "SENTINEL"
    data = pickle.dumps([_Evil(os.system, (f"touch {sentinel}",))], protocol=protocol)
    _assert_refused(_in_container(tmp_path, data, "zip"), "os.system", sentinel)


def _module_standin(module="vdsr", name="Net") -> bytes:
    """What a pickled nn.Module looks like: NEWOBJ of its class, then BUILD with its __dict__."""
    state = dict_of({"_parameters": call(glob("collections", "OrderedDict")), "training": P.NEWTRUE})
    return glob(module, name) + P.EMPTY_TUPLE + P.NEWOBJ + state + P.BUILD


def _crafted(sentinel) -> dict[str, tuple[bytes, str]]:
    code = s(f"__import__('pathlib').Path({str(sentinel)!r}).touch()")
    command = s(f"touch {sentinel}")
    return {
        "build-then-eval": (
            dict_of({"model": _module_standin(), "epoch": call(glob("builtins", "eval"), code)}),
            "eval",
        ),
        "stand-in-class-called": (dict_of({"model": call(glob("vdsr", "Net"), command)}), "vdsr.Net"),
        "stand-in-instance-called": (_module_standin() + tup(command) + P.REDUCE, "an instance of vdsr.Net"),
        "inst-opcode": (P.MARK + command + b"ios\nsystem\n", "os.system"),
        "rebuild-from-type": (
            call(
                glob("torch._tensor", "_rebuild_from_type_v2"),
                glob("posix", "system"),
                glob("torch", "Tensor"),
                tup(command),
                P.EMPTY_DICT,
            ),
            "os.system",
        ),
        "never-imported": (dict_of({"m": _module_standin("this", "Net"), "x": call(glob("this", "Net"))}), "this.Net"),
    }


@pytest.mark.parametrize("case", list(_crafted("S")))
def test_crafted_full_module_pickles_are_refused(tmp_path, case):
    sentinel = tmp_path / "SENTINEL"
    body, name = _crafted(sentinel)[case]
    imported_before = "this" in sys.modules
    _assert_refused(_in_container(tmp_path, program(body), "legacy"), name, sentinel)
    assert ("this" in sys.modules) == imported_before  # a named module is never imported


@pytest.mark.parametrize(
    "body",
    [
        glob("torch._utils", "_rebuild_tensor_v2") + P.EMPTY_DICT + P.BUILD,  # BUILD on an allow-listed function
        call(glob("torch._utils", "_rebuild_tensor_v2")) + P.EMPTY_DICT + P.BUILD,
        P.EXT1 + b"\x01",
    ],
    ids=["build-function", "build-bad-call", "ext-opcode"],
)
def test_other_code_paths_fail_cleanly(tmp_path, body):
    with pytest.raises(TorchPickleError):
        load(_in_container(tmp_path, program(body), "zip"))


def test_stand_ins_cannot_be_called(tmp_path):
    model = load(_in_container(tmp_path, program(_module_standin()), "zip"))
    assert type(model).standin_global == "vdsr.Net" and model.training is True and len(model._parameters) == 0
    with pytest.raises(RefusedPickle):
        type(model)()


# ----------------------------------------------------------------------------------- bad files


def test_truncated_legacy_file(tmp_path):
    path, _ = hand_made(tmp_path, "legacy")
    data = path.read_bytes()
    for cut in (20, 200, len(data) - 50, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(TorchPickleError, match="truncated|damaged|not a PyTorch checkpoint") as info:
            load(path)
        assert path.name in str(info.value), cut


def test_truncated_zip_file(tmp_path):
    path, _ = hand_made(tmp_path, "zip")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(TorchPickleError, match="damaged or truncated zip"):
        load(path)


def _npz(path):
    np.savez(path, a=np.zeros(3))
    return path.read_bytes()


@pytest.mark.parametrize(
    "content, message",
    [
        (lambda p: b"", "the file is empty"),
        (lambda p: b"hello, I am a text file\n", "not a PyTorch checkpoint"),
        (lambda p: b"\x89PNG\r\n\x1a\n" + bytes(64), "not a PyTorch checkpoint"),
        (lambda p: pickle.dumps({"a": 1}, protocol=2), "not a PyTorch checkpoint"),
        (_npz, "without <archive>/data.pkl"),
    ],
    ids=["empty", "text", "png", "plain-pickle", "npz"],
)
def test_not_a_checkpoint(tmp_path, content, message):
    path = tmp_path / "weights.npz"
    data = content(path)
    path.write_bytes(data)
    with pytest.raises(TorchPickleError, match=message):
        load(path)


def test_view_past_its_storage_is_an_error(tmp_path):
    data = program(dict_of({"w": tensor("0", W, 20, (3, 4), (4, 1), legacy=False)}))
    with pytest.raises(TorchPickleError, match="reaches past its storage"):
        load(write_zip(tmp_path / "oob.pt", data, [("0", W)]))


def test_missing_storage_record_is_an_error(tmp_path):
    data = program(dict_of({"w": tensor("0", W, 0, (24,), (1,), legacy=False)}))
    with pytest.raises(TorchPickleError, match="lacks the storage record"):
        load(write_zip(tmp_path / "missing.pt", data, []))
