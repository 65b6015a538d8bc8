"""Read PyTorch checkpoints (.pt / .pth) into numpy without PyTorch, never running code that a pickle names.

``load(path)`` reads both container formats torch.save has written: the zip archive (torch >= 1.6:
``<archive>/data.pkl``, ``<archive>/data/<key>`` storages, ``<archive>/byteorder``) and the legacy stream
(magic number, protocol version and sys_info pickles, the main pickle, the list of storage keys, then each storage
as an 8-byte element count and its raw little-endian bytes). Tensors come back as numpy arrays viewing their
storage the way torch tensors do (offset, sizes, strides; two tensors of one storage share memory), whatever
device they were saved from. bfloat16 / float8 come back as ml_dtypes arrays.

Safety: the pickle runs on a virtual machine whose opcodes are an allow-list. A global the pickle names is never
imported: a few names map to this module's own data rebuilders (tensors, OrderedDict, set, torch.Size, ...) and
every other name becomes an inert ``StandIn`` class. Calling anything outside the allow-list (a REDUCE of
os.system, eval, a stand-in class or instance) raises ``RefusedPickle`` naming it; nothing the file names ever
runs. Stand-in instances (a pickled ``nn.Module``, ``argparse.Namespace``, ...) only record their state, so
``state_dict_of`` can read a whole-module pickle's tensors under the keys torch's ``state_dict()`` would give.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import struct
import tarfile
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from jsr.errors import UserError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

__all__ = ["RefusedPickle", "StandIn", "TorchPickleError", "load", "state_dict_of"]


class TorchPickleError(UserError):
    """The file is not a checkpoint this reader can read; the message names the file and the reason."""


class RefusedPickle(TorchPickleError):
    """The pickle would run code (call a function or class outside the data allow-list); nothing was run."""

    def __init__(self, message: str, global_name: str | None = None):
        super().__init__(message)
        self.global_name = global_name


# ------------------------------------------------------------------------------------------------- dtypes

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128,
    "Float8_e4m3fnStorage": ml_dtypes.float8_e4m3fn,
    "Float8_e5m2Storage": ml_dtypes.float8_e5m2,
}

_TORCH_DTYPES = {
    "float32": np.float32,
    "float": np.float32,
    "float64": np.float64,
    "double": np.float64,
    "float16": np.float16,
    "half": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64,
    "long": np.int64,
    "int32": np.int32,
    "int": np.int32,
    "int16": np.int16,
    "short": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "bool": np.bool_,
    "complex64": np.complex64,
    "cfloat": np.complex64,
    "complex128": np.complex128,
    "cdouble": np.complex128,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
}

# Plain numeric numpy dtypes a pickled numpy scalar or array may use (no object, void or structured dtypes).
_NUMPY_KINDS = "biufc"


# ------------------------------------------------------------------------------------------- pickle objects


class StandIn:
    """Inert placeholder for a class named in a pickle; the real class is never imported.

    ``standin_global`` (on the class) is the dotted name the pickle used. An instance keeps what the pickle gave it:
    its ``__dict__`` holds the state's attributes, ``standin_state`` the raw state, ``standin_args`` the NEWOBJ
    arguments, ``standin_items`` / ``standin_list`` what SETITEMS / APPENDS added.
    """

    standin_global = "?"

    def __new__(cls, *args: Any, **kwargs: Any):  # only the unpickler makes instances (via object.__new__)
        raise RefusedPickle(f"refused: calling the stand-in of {cls.standin_global}", cls.standin_global)

    def __repr__(self) -> str:
        return f"<stand-in for {self.standin_global}>"


class _Allowed:
    """A global on the allow-list: ``call`` runs for REDUCE, ``new`` for NEWOBJ (None: refused)."""

    __slots__ = ("name", "call", "new")

    def __init__(self, name: str, call: Callable[..., Any] | None, new: Callable[[], Any] | None = None):
        self.name, self.call, self.new = name, call, new

    def __repr__(self) -> str:
        return f"<{self.name}>"


class _StorageType:
    """A torch.*Storage class named in a persistent id: only its element dtype matters."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype = name, dtype

    def __repr__(self) -> str:
        return f"<{self.name}>"


class _Storage:
    """One storage's elements as a 1-D numpy array; a legacy file fills it after the main pickle."""

    __slots__ = ("key", "data", "filled")

    def __init__(self, key: str, data: np.ndarray, filled: bool):
        self.key, self.data, self.filled = key, data, filled


class _PendingArray:
    """``numpy.core.multiarray._reconstruct(...)``: an array whose contents the following BUILD supplies."""

    __slots__ = ()


# ----------------------------------------------------------------------------------------------- rebuilders


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(type(v) is int for v in value):
        raise TorchPickleError(f"a tensor's {what} is {value!r}, not a tuple of integers")
    return tuple(value)


def _view(storage: Any, offset: Any, size: Any, stride: Any, dtype: np.dtype | None = None) -> np.ndarray:
    """The tensor torch's ``set_(storage, offset, size, stride)`` makes, as a bounds-checked numpy view."""
    if not isinstance(storage, _Storage):
        raise TorchPickleError(f"a tensor's storage is a {type(storage).__name__}, not a storage")
    buf = storage.data if dtype is None else storage.data.view(np.uint8).view(dtype)
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if type(offset) is not int or len(size) != len(stride) or min((offset, *size, *stride)) < 0:
        raise TorchPickleError(f"invalid tensor view: offset {offset!r}, size {size}, stride {stride}")
    if 0 in size:
        return np.empty(size, buf.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= buf.size:
        raise TorchPickleError(
            f"a tensor view (offset {offset}, size {size}, stride {stride}) reaches past its storage "
            f"{storage.key!r} of {buf.size} elements"
        )
    strides = tuple(s * buf.itemsize for s in stride)
    # The bytes as buffer: as_strided goes through __array_interface__, which loses ml_dtypes' dtypes.
    raw = buf.view(np.uint8)
    return np.ndarray(size, buf.dtype, buffer=raw, offset=offset * buf.itemsize, strides=strides)


def _with_metadata(array: np.ndarray, metadata: Any) -> np.ndarray:
    # torch records lazily conjugated / negated views as bits; the values they stand for are these.
    if isinstance(metadata, Mapping):
        if metadata.get("conj"):
            array = np.conj(array)
        if metadata.get("neg"):
            array = -array
    return array


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _view(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _with_metadata(_view(storage, storage_offset, size, stride), metadata)


def _rebuild_tensor_v3(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
) -> np.ndarray:
    if not isinstance(dtype, np.dtype):
        raise TorchPickleError(f"unsupported tensor dtype {getattr(dtype, 'standin_global', dtype)}")
    return _with_metadata(_view(storage, storage_offset, size, stride, dtype), metadata)


def _tensor_arg(data: Any) -> np.ndarray:
    if not isinstance(data, np.ndarray):
        raise TorchPickleError(f"a Parameter wraps a {type(data).__name__}, not a tensor")
    return data


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None):
    return _tensor_arg(data)


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return _tensor_arg(data)


_TENSOR_REBUILDERS = {
    "_rebuild_tensor": _rebuild_tensor,
    "_rebuild_tensor_v2": _rebuild_tensor_v2,
    "_rebuild_tensor_v3": _rebuild_tensor_v3,
    "_rebuild_parameter": _rebuild_parameter,
    "_rebuild_parameter_with_state": _rebuild_parameter_with_state,
}


def _rebuild_from_type_v2(func, new_type, args, state):
    # A tensor subclass or a tensor with Python attributes: only the inner rebuild matters for the data.
    if not (isinstance(func, _Allowed) and func.call in _TENSOR_REBUILDERS.values()) or not isinstance(args, tuple):
        raise _refusal(func)
    return func.call(*args)


def _ordered_dict(items=()):
    if not isinstance(items, list | tuple | Mapping):
        raise TorchPickleError(f"OrderedDict of a {type(items).__name__}")
    return OrderedDict(items)


def _counter(items=()):
    if not isinstance(items, Mapping):
        raise TorchPickleError(f"Counter of a {type(items).__name__}")
    return Counter(dict(items))


def _collection(kind: type) -> Callable[..., Any]:
    def build(items=()):
        if not isinstance(items, list | tuple | set | frozenset):
            raise TorchPickleError(f"{kind.__name__} of a {type(items).__name__}")
        return kind(items)

    return build


def _bytes_of(kind: type) -> Callable[..., Any]:
    def build(data=b"", *rest):
        if rest or not isinstance(data, bytes | bytearray | list):  # never an int: bytes(10**12) allocates
            raise TorchPickleError(f"{kind.__name__} of {type(data).__name__}")
        return kind(data)

    return build


def _complex(real=0.0, imag=0.0):
    if not all(isinstance(v, int | float) for v in (real, imag)):
        raise TorchPickleError("complex of non-numbers")
    return complex(real, imag)


def _slice(*args):
    if len(args) > 3 or not all(v is None or type(v) is int for v in args):
        raise TorchPickleError(f"slice of {args!r}")
    return slice(*args)


def _codecs_encode(text, encoding="utf-8"):
    # How protocol 2 spells bytes: encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise TorchPickleError(f"_codecs.encode of {type(text).__name__} as {encoding!r}")
    return text.encode(encoding)


def _torch_size(dims=()):
    return _ints(dims, "torch.Size")


def _torch_device(kind, index=None):
    # The location of a storage never matters here: everything loads into host memory.
    if not isinstance(kind, str) or not (index is None or type(index) is int):
        raise TorchPickleError(f"torch.device({kind!r}, {index!r})")
    return kind if index is None else f"{kind}:{index}"


def _plain_dtype(dtype: Any) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMPY_KINDS or dtype.fields is not None:
        raise TorchPickleError(f"numpy data of dtype {dtype!r} (only plain numeric dtypes are read)")
    return dtype


def _numpy_dtype(name, align=False, copy=False):
    if not isinstance(name, str):
        raise TorchPickleError(f"numpy.dtype({name!r})")
    return _plain_dtype(np.dtype(name))


def _numpy_scalar(dtype, data=b""):
    dtype = _plain_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise TorchPickleError(f"numpy scalar of {dtype} with {len(data) if isinstance(data, bytes) else data!r}")
    return np.frombuffer(data, dtype)[0]


def _numpy_reconstruct(subtype, shape, typecode):
    if not (isinstance(subtype, _Allowed) and subtype.name == "numpy.ndarray"):
        raise _refusal(subtype)
    return _PendingArray()


def _numpy_array_from_state(state: Any) -> np.ndarray:
    if not (isinstance(state, tuple) and len(state) == 5):
        raise TorchPickleError("a numpy array without its (version, shape, dtype, fortran, data) state")
    _, shape, dtype, fortran, data = state
    dtype = _plain_dtype(dtype)
    if not isinstance(data, bytes | bytearray):
        raise TorchPickleError("a numpy array whose data is not raw bytes (an object array)")
    shape = _ints(shape, "numpy shape")
    count = int(np.prod(shape, dtype=np.int64))
    if count * dtype.itemsize != len(data):
        raise TorchPickleError(f"a numpy array of shape {shape} with {len(data)} bytes of data")
    array = np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")
    return array.astype(dtype.newbyteorder("="))


def _dtype_from_state(dtype: np.dtype, state: Any) -> np.dtype:
    # numpy.dtype's pickled state: (version, byteorder, ...); only the byte order changes a plain dtype.
    if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">"):
        return dtype.newbyteorder(state[1])
    return dtype


def _reconstructor(cls, base, state):
    # copyreg._reconstructor: protocol 0/1's object.__new__(cls) (+ base.__init__(obj, state) if base isn't object).
    if not _is_standin_class(cls):
        raise _refusal(cls)
    if not (isinstance(base, _Allowed) and base.name == "builtins.object" and state is None):
        raise TorchPickleError(f"copyreg._reconstructor of {cls.standin_global} over {base!r:.80} is not supported")
    return _new_standin(cls, ())


def _copyreg_newobj(cls, *args):
    return _newobj(cls, args)


def _copyreg_newobj_ex(cls, args, kwargs):
    return _newobj(cls, args)


def _layout(name):
    if not isinstance(name, str):
        raise TorchPickleError(f"torch layout {name!r:.80}")
    return name


def _inert(*args):
    # Old full-module pickles call torch.nn.backends.thnn._get_thnn_function_backend(); its result is unused.
    return None


def _not_callable(*args):
    raise TorchPickleError("builtins.object is only accepted as copyreg._reconstructor's base")


def _allow_list() -> dict[str, Any]:
    """Dotted global name -> what find_class gives for it; every other name becomes a StandIn class."""
    allowed: dict[str, Any] = {}

    def add(name: str, call: Callable[..., Any] | None, new: Callable[[], Any] | None = None) -> None:
        allowed[name] = _Allowed(name, call, new)

    for name, fn in _TENSOR_REBUILDERS.items():
        add(f"torch._utils.{name}", fn)
    add("torch._tensor._rebuild_from_type_v2", _rebuild_from_type_v2)
    add("torch.nn.parameter.Parameter", _rebuild_parameter)
    add("torch.Tensor", None)
    add("torch.Size", _torch_size)
    add("torch.device", _torch_device)
    add("torch.serialization._get_layout", _layout)
    add("torch.nn.backends.thnn._get_thnn_function_backend", _inert)
    add("collections.OrderedDict", _ordered_dict, OrderedDict)
    add("collections.Counter", _counter, Counter)
    add("builtins.set", _collection(set), set)
    add("builtins.frozenset", _collection(frozenset))
    add("builtins.bytearray", _bytes_of(bytearray))
    add("builtins.bytes", _bytes_of(bytes))
    add("builtins.complex", _complex)
    add("builtins.slice", _slice)
    add("builtins.object", _not_callable)
    add("_codecs.encode", _codecs_encode)
    add("copyreg._reconstructor", _reconstructor)
    add("copyreg.__newobj__", _copyreg_newobj)
    add("copyreg.__newobj_ex__", _copyreg_newobj_ex)
    for core in ("numpy.core", "numpy._core"):
        add(f"{core}.multiarray.scalar", _numpy_scalar)
        add(f"{core}.multiarray._reconstruct", _numpy_reconstruct)
    add("numpy.dtype", _numpy_dtype)
    add("numpy.ndarray", None)
    for module in ("torch", "torch.cuda"):
        for name, dtype in _STORAGE_DTYPES.items():
            allowed[f"{module}.{name}"] = _StorageType(f"{module}.{name}", np.dtype(dtype))
    for name in ("torch.UntypedStorage", "torch.storage.UntypedStorage"):
        allowed[name] = _StorageType(name, np.dtype(np.uint8))
    for name, dtype in _TORCH_DTYPES.items():
        allowed[f"torch.{name}"] = np.dtype(dtype)
    return allowed


_ALLOWED = _allow_list()


# --------------------------------------------------------------------------------------------- stand-ins


def _is_standin_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, StandIn)


def _new_standin(cls: type, args: tuple) -> StandIn:
    obj = object.__new__(cls)  # never cls(...): that would be the real class's constructor in a normal unpickler
    if args:
        obj.__dict__["standin_args"] = args
    return obj


def _newobj(cls: Any, args: Any) -> Any:
    if _is_standin_class(cls):
        return _new_standin(cls, tuple(args) if isinstance(args, tuple | list) else (args,))
    if isinstance(cls, _Allowed) and cls.new is not None:
        return cls.new()
    raise _refusal(cls)


def _record_state(obj: StandIn, state: Any) -> None:
    """What __setstate__ or the default BUILD would have stored, kept as plain attributes."""
    attributes, slots = state if isinstance(state, tuple) and len(state) == 2 else (state, None)
    for part in (attributes, slots):
        if isinstance(part, Mapping):
            obj.__dict__.update((k, v) for k, v in part.items() if isinstance(k, str))
    obj.__dict__["standin_state"] = state


def _recorded(obj: StandIn, name: str, kind: type) -> Any:
    # Always a fresh list / OrderedDict of ours, whatever the pickle's state put under that name.
    value = obj.__dict__.get(name)
    if type(value) is not kind:
        value = obj.__dict__[name] = kind()
    return value


def _display_name(name: str) -> str:
    module, _, attr = name.rpartition(".")
    if module in ("posix", "nt"):  # how os.system and friends are spelled inside a pickle
        return f"os.{attr} (pickled as {name})"
    return name


def _refusal(obj: Any) -> RefusedPickle:
    if _is_standin_class(obj):
        name = obj.standin_global
        what = _display_name(name)
    elif isinstance(obj, StandIn):
        name = obj.standin_global
        what = f"an instance of {name}"
    elif isinstance(obj, _Allowed | _StorageType):
        name = obj.name
        what = f"{name} that way"
    else:
        name, what = None, f"a {type(obj).__name__} object"
    return RefusedPickle(
        f"refused: the pickle would call {what}, i.e. run code; nothing was executed "
        "(only tensors, plain containers and inert stand-ins for classes are read)",
        name,
    )


# ---------------------------------------------------------------------------------------------- unpickler

_DATA_OPCODES = (
    "PROTO FRAME PERSID BINPERSID NONE NEWFALSE NEWTRUE INT BININT BININT1 LONG BININT2 LONG1 LONG4 FLOAT BINFLOAT "
    "STRING BINSTRING BINBYTES UNICODE BINUNICODE BINUNICODE8 BINBYTES8 BYTEARRAY8 SHORT_BINSTRING SHORT_BINBYTES "
    "SHORT_BINUNICODE TUPLE EMPTY_TUPLE TUPLE1 TUPLE2 TUPLE3 EMPTY_LIST EMPTY_DICT EMPTY_SET FROZENSET LIST DICT "
    "GLOBAL STACK_GLOBAL POP POP_MARK DUP GET BINGET LONG_BINGET PUT BINPUT LONG_BINPUT MEMOIZE MARK STOP"
).split()


class _Opcodes(dict):
    def __missing__(self, op: int):
        raise TorchPickleError(f"unsupported pickle opcode {bytes([op])!r}")


class _InertUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcode table can be replaced
    """Unpickles data only: the opcodes that would call code are reimplemented, the rest come from an allow-list."""

    def __init__(self, file: BinaryIO, storages: _Storages | None, classes: dict[str, type]):
        super().__init__(file, encoding="utf-8", errors="surrogateescape")
        self._storages = storages
        self._classes = classes

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3:  # Python 2 spellings (__builtin__, copy_reg), a table lookup
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        dotted = f"{module}.{name}"
        if dotted in _ALLOWED:
            return _ALLOWED[dotted]
        if dotted not in self._classes:
            self._classes[dotted] = type(name, (StandIn,), {"standin_global": dotted, "__module__": module})
        return self._classes[dotted]

    def persistent_load(self, pid: Any) -> Any:
        if self._storages is None or not isinstance(pid, tuple) or not pid:
            raise TorchPickleError(f"unexpected persistent id {pid!r:.80}")
        return self._storages.get(pid)

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if not (isinstance(func, _Allowed) and func.call is not None):
            raise _refusal(func)
        if not isinstance(args, tuple):
            raise TorchPickleError(f"{func.name} called with {type(args).__name__} arguments")
        self.stack[-1] = func.call(*args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(_newobj(cls, args))

    def load_newobj_ex(self) -> None:
        self.stack.pop()  # keyword arguments: a stand-in ignores them, an allow-listed type takes none
        self.load_newobj()

    def load_inst(self) -> None:
        module = self.readline()[:-1].decode("ascii")
        name = self.readline()[:-1].decode("ascii")
        self._instantiate(self.find_class(module, name), self.pop_mark())

    def load_obj(self) -> None:
        args = self.pop_mark()
        self._instantiate(args.pop(0), args)

    def _instantiate(self, cls: Any, args: list) -> None:
        # Protocol 0/1 spelling of cls(*args), or cls.__new__(cls) without arguments: only the latter is inert.
        if args or not _is_standin_class(cls):
            raise _refusal(cls)
        self.append(_new_standin(cls, ()))

    def load_build(self) -> None:
        state = self.stack.pop()
        obj = self.stack[-1]
        if isinstance(obj, StandIn):
            _record_state(obj, state)
        elif isinstance(obj, np.ndarray):
            pass  # an old pickle's tensor state: requires_grad and hooks, not data
        elif isinstance(obj, np.dtype):
            self.stack[-1] = _dtype_from_state(obj, state)
        elif isinstance(obj, _PendingArray):
            self.stack[-1] = _numpy_array_from_state(state)
        elif type(obj) in (OrderedDict, Counter) and isinstance(state, Mapping):
            # state_dict's _metadata only: other attributes could shadow the mapping's own methods
            obj.__dict__.update((k, v) for k, v in state.items() if k == "_metadata")
        else:
            raise RefusedPickle(f"refused: the pickle would set the state of {obj!r:.80}, i.e. run its code")

    def load_append(self) -> None:
        value = self.stack.pop()
        self._extend(self.stack[-1], [value])

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._extend(self.stack[-1], items)

    @staticmethod
    def _extend(target: Any, items: list) -> None:
        if type(target) is list:
            target.extend(items)
        elif isinstance(target, StandIn):
            _recorded(target, "standin_list", list).extend(items)
        else:
            raise RefusedPickle(f"refused: the pickle would append to {target!r:.80}")

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._update(self.stack[-1], [key, value])

    def load_setitems(self) -> None:
        items = self.pop_mark()
        self._update(self.stack[-1], items)

    @staticmethod
    def _update(target: Any, items: list) -> None:
        if type(target) in (dict, OrderedDict, Counter):
            pass
        elif isinstance(target, StandIn):
            target = _recorded(target, "standin_items", OrderedDict)
        else:
            raise RefusedPickle(f"refused: the pickle would set items of {target!r:.80}")
        for i in range(0, len(items) - 1, 2):
            target[items[i]] = items[i + 1]

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise RefusedPickle(f"refused: the pickle would add items to {target!r:.80}")
        target.update(items)

    dispatch = _Opcodes(
        {getattr(pickle, op)[0]: pickle._Unpickler.dispatch[getattr(pickle, op)[0]] for op in _DATA_OPCODES}
    )
    for _op, _fn in (
        ("REDUCE", load_reduce),
        ("NEWOBJ", load_newobj),
        ("NEWOBJ_EX", load_newobj_ex),
        ("INST", load_inst),
        ("OBJ", load_obj),
        ("BUILD", load_build),
        ("APPEND", load_append),
        ("APPENDS", load_appends),
        ("SETITEM", load_setitem),
        ("SETITEMS", load_setitems),
        ("ADDITEMS", load_additems),
    ):
        dispatch[getattr(pickle, _op)[0]] = _fn
    del _op, _fn


# ------------------------------------------------------------------------------------------------ storages


class _Storages:
    """The storages a checkpoint's persistent ids name, one per key."""

    def __init__(self) -> None:
        self.by_key: dict[str, _Storage] = {}

    def get(self, pid: tuple) -> Any:
        raise NotImplementedError

    @staticmethod
    def _dtype(storage_type: Any) -> np.dtype:
        if not isinstance(storage_type, _StorageType):
            raise TorchPickleError(f"unsupported storage type {getattr(storage_type, 'standin_global', storage_type)}")
        return storage_type.dtype

    def _known(self, key: str, dtype: np.dtype, numel: int) -> _Storage | None:
        storage = self.by_key.get(key)
        if storage is not None and (storage.data.dtype != dtype or storage.data.size != numel):
            raise TorchPickleError(f"storage {key!r} is named with two dtypes or sizes")
        return storage


class _ZipStorages(_Storages):
    """Storages of a zip checkpoint, each read from ``<archive>/data/<key>`` when the pickle first names it."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, big_endian: bool):
        super().__init__()
        self.archive, self.prefix, self.big_endian = archive, prefix, big_endian

    def get(self, pid: tuple) -> _Storage:
        if len(pid) != 5 or pid[0] != "storage" or not isinstance(pid[2], str) or type(pid[4]) is not int:
            raise TorchPickleError(f"unexpected persistent id {pid!r:.80} in a zip checkpoint")
        _, storage_type, key, _location, numel = pid
        dtype = self._dtype(storage_type)
        if numel < 0:
            raise TorchPickleError(f"storage {key!r} of {numel} elements")
        storage = self._known(key, dtype, numel)
        if storage is None:
            storage = self.by_key[key] = _Storage(key, self._read(key, dtype, numel), True)
        return storage

    def _read(self, key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        name = f"{self.prefix}data/{key}"
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise TorchPickleError(f"the archive lacks the storage record {name}") from None
        if info.file_size != numel * dtype.itemsize:
            raise TorchPickleError(
                f"storage record {name} holds {info.file_size} bytes, expected {numel} x {dtype.itemsize}"
            )
        data = np.frombuffer(self.archive.read(name), np.uint8).copy().view(dtype)  # a copy: writable arrays
        if self.big_endian:
            _byteswap(data)
        return data


def _byteswap(data: np.ndarray) -> None:
    """Big-endian storage bytes to native (little-endian) order, in place."""
    unit = data.dtype.itemsize // 2 if data.dtype.kind == "c" else data.dtype.itemsize  # complex: swap each half
    if unit > 1:
        data.view(np.dtype(f"u{unit}")).byteswap(inplace=True)


class _LegacyStorages(_Storages):
    """Storages of a legacy file: allocated when the pickle names them, filled from the bytes after it."""

    def __init__(self, file_size: int):
        super().__init__()
        self.file_size = file_size

    def get(self, pid: tuple) -> Any:
        if pid[0] == "module" and len(pid) == 4:
            return self._module(pid[1])
        if len(pid) != 6 or pid[0] != "storage" or not isinstance(pid[2], str) or type(pid[4]) is not int:
            raise TorchPickleError(f"unexpected persistent id {pid!r:.80} in a legacy checkpoint")
        _, storage_type, key, _location, numel, view = pid
        dtype = self._dtype(storage_type)
        if not 0 <= numel * dtype.itemsize <= self.file_size:
            raise TorchPickleError(
                f"truncated or damaged: storage {key!r} of {numel} elements exceeds the {self.file_size}-byte file"
            )
        root = self._known(key, dtype, numel)
        if root is None:
            root = self.by_key[key] = _Storage(key, np.zeros(numel, dtype), False)
        return root if view is None else self._view(root, view)

    @staticmethod
    def _module(cls: Any) -> type:
        # ('module', class, source file, source): a pickled nn.Module names its class this way.
        if not _is_standin_class(cls):
            raise TorchPickleError(f"a module persistent id naming {cls!r:.80}")
        return cls

    @staticmethod
    def _view(root: _Storage, view: Any) -> _Storage:
        # Pre-1.0 torch pickled a slice of a storage as (view key, offset, size) over its root.
        if not (isinstance(view, tuple) and len(view) == 3 and all(type(v) is int for v in view[1:])):
            raise TorchPickleError(f"invalid storage view {view!r:.80}")
        key, offset, size = view
        if offset < 0 or size < 0 or offset + size > root.data.size:
            raise TorchPickleError(f"storage view {key!r} reaches past storage {root.key!r}")
        return _Storage(str(key), root.data[offset : offset + size], True)

    def fill(self, file: BinaryIO, keys: Any) -> None:
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise TorchPickleError("the storage key list after the pickle is not a list of strings")
        for key in keys:
            storage = self.by_key.get(key)
            if storage is None:
                raise TorchPickleError(f"storage {key!r} is listed but never used by the pickle")
            self._fill_one(file, storage)
        unfilled = [key for key, s in self.by_key.items() if not s.filled]
        if unfilled:
            raise TorchPickleError(f"the pickle uses storage {unfilled[0]!r}, which the file does not hold")

    @staticmethod
    def _fill_one(file: BinaryIO, storage: _Storage) -> None:
        header = file.read(8)
        if len(header) != 8:
            raise TorchPickleError(f"truncated: the file ends before storage {storage.key!r}")
        (count,) = struct.unpack("<q", header)
        if count != storage.data.size:
            raise TorchPickleError(
                f"storage {storage.key!r} holds {count} elements, the pickle says {storage.data.size}"
            )
        raw = storage.data.view(np.uint8)
        if file.readinto(raw) != raw.size:
            raise TorchPickleError(f"truncated: the file ends inside storage {storage.key!r}")
        storage.filled = True


# -------------------------------------------------------------------------------------------------- formats


def load(path: str | Path) -> Any:
    """The object a torch.save file holds, with tensors as numpy arrays; raises TorchPickleError / RefusedPickle."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _load_file(f)
    except OSError:
        raise
    except TorchPickleError as e:
        raise type(e)(f"{path}: {e}", *([e.global_name] if isinstance(e, RefusedPickle) else [])) from None
    except Exception as e:  # whatever a damaged pickle makes the virtual machine trip over
        raise TorchPickleError(
            f"{path}: not a readable PyTorch checkpoint: the file is damaged or truncated ({type(e).__name__}: {e})"
        ) from e


def _load_file(f: BinaryIO) -> Any:
    head = f.read(4)
    if not head:
        raise TorchPickleError("not a PyTorch checkpoint (the file is empty)")
    f.seek(0)
    if zipfile.is_zipfile(f):
        f.seek(0)
        return _load_zip(f)
    if head == b"PK\x03\x04":
        raise TorchPickleError("a damaged or truncated zip archive (no central directory)")
    f.seek(0)
    if _is_tar(f):
        raise TorchPickleError("a PyTorch < 0.4 tar checkpoint, which this reader does not support")
    f.seek(0)
    return _load_legacy(f)


def _is_tar(f: BinaryIO) -> bool:
    try:
        with tarfile.open(fileobj=f, mode="r:"):
            return True
    except tarfile.TarError:
        return False


def _load_zip(f: BinaryIO) -> Any:
    with zipfile.ZipFile(f) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if any(n.endswith("/constants.pkl") for n in names):
            raise TorchPickleError("a TorchScript archive (torch.jit.save), not a torch.save checkpoint")
        if len(pickles) != 1:
            raise TorchPickleError("not a PyTorch checkpoint: a zip archive without <archive>/data.pkl")
        prefix = pickles[0][: -len("data.pkl")]
        big_endian = _zip_byteorder(archive, prefix) == "big"
        storages = _ZipStorages(archive, prefix, big_endian)
        return _InertUnpickler(io.BytesIO(archive.read(pickles[0])), storages, {}).load()


def _zip_byteorder(archive: zipfile.ZipFile, prefix: str) -> str:
    # Files without the record come from torch versions that only wrote little-endian data in practice.
    try:
        mark = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
    except KeyError:
        return "little"
    if mark not in ("little", "big"):
        raise TorchPickleError(f"unknown byte order {mark!r} in {prefix}byteorder")
    return mark


def _load_legacy(f: BinaryIO) -> Any:
    classes: dict[str, type] = {}
    try:
        magic = _InertUnpickler(f, None, classes).load()
    except Exception:
        magic = None
    if type(magic) is not int or magic != MAGIC_NUMBER:
        raise TorchPickleError(
            "not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save file with its magic number)"
        )
    version = _InertUnpickler(f, None, classes).load()
    if version != PROTOCOL_VERSION:
        raise TorchPickleError(f"unsupported legacy protocol version {version!r} (expected {PROTOCOL_VERSION})")
    sys_info = _InertUnpickler(f, None, classes).load()
    if not isinstance(sys_info, dict):
        raise TorchPickleError("the legacy header's sys_info is not a dict")
    storages = _LegacyStorages(_file_size(f))
    result = _InertUnpickler(f, storages, classes).load()
    storages.fill(f, _InertUnpickler(f, None, classes).load())
    return result


def _file_size(f: BinaryIO) -> int:
    here = f.tell()
    size = f.seek(0, io.SEEK_END)
    f.seek(here)
    return size


# ---------------------------------------------------------------------------------------------- modules


def state_dict_of(module: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """The tensors of a pickled nn.Module stand-in under the keys ``module.state_dict()`` would give."""
    if not isinstance(module, StandIn) or not isinstance(vars(module).get("_parameters"), Mapping):
        raise TorchPickleError(f"{module!r:.80} is not a pickled torch module (no _parameters)")
    out: dict[str, np.ndarray] = {}
    _collect(module, prefix, out, depth=0)
    return out


def _collect(module: StandIn, prefix: str, out: dict[str, np.ndarray], depth: int) -> None:
    # torch's order: this module's parameters, then its persistent buffers, then each child in turn.
    if depth > 500:
        raise TorchPickleError(f"modules nested deeper than 500 levels at {prefix!r:.80}")
    state = vars(module)
    skipped = state.get("_non_persistent_buffers_set") or set()
    for field in ("_parameters", "_buffers", "_modules"):
        if not isinstance(state.get(field) or {}, Mapping):
            raise TorchPickleError(f"{prefix or 'the module'}'s {field} is a {type(state[field]).__name__}, not a dict")
    if not isinstance(skipped, set | frozenset | list | tuple):
        raise TorchPickleError(f"{prefix or 'the module'}'s _non_persistent_buffers_set is a {type(skipped).__name__}")
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is None or (group == "_buffers" and name in skipped):
                continue
            if not isinstance(value, np.ndarray):
                raise TorchPickleError(f"{prefix}{name} of {module!r} is a {type(value).__name__}, not a tensor")
            out[f"{prefix}{name}"] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, StandIn):
            raise TorchPickleError(f"submodule {prefix}{name} is a {type(child).__name__}, not a module")
        _collect(child, f"{prefix}{name}.", out, depth + 1)
