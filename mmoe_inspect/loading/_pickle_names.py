"""Which imported names a refusal lists, and which of them get a WARNING.

`ALLOWED` is the small allowlist every plain `torch.save` of tensors uses: tensor and parameter
rebuild functions, storage types, dtypes/devices/sizes, plain containers. Every other name a pickle
would import is listed in the refusal, torch's own classes included (`torch.hub.load` is a torch
name too). `is_dangerous` marks names that load, import or execute something when called: those
get a WARNING. A name is compared exactly (protocol 4 may reach attributes through dots, such as
`collections.OrderedDict.fromkeys`, which is not `collections.OrderedDict`).
"""

from __future__ import annotations

_REBUILD = {
    "_rebuild_tensor",
    "_rebuild_tensor_v2",
    "_rebuild_tensor_v3",
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
    "_rebuild_sparse_tensor",
    "_rebuild_nested_tensor",
    "_rebuild_device_tensor_from_numpy",
    "_rebuild_device_tensor_from_cpu_tensor",
    "_rebuild_meta_tensor_no_storage",
    "_rebuild_wrapper_subclass",
    "_rebuild_qtensor",
}
_STORAGES = {
    f"{kind}Storage"
    for kind in (
        "Untyped",
        "Typed",
        "Float",
        "Double",
        "Half",
        "BFloat16",
        "Long",
        "Int",
        "Short",
        "Char",
        "Byte",
        "Bool",
        "ComplexFloat",
        "ComplexDouble",
        "QInt8",
        "QUInt8",
        "QInt32",
        "QUInt4x2",
        "QUInt2x4",
    )
}
_DTYPES = {
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
    "complex64",
    "complex128",
    "float",
    "double",
    "half",
    "long",
    "int",
}

ALLOWED = frozenset(
    {f"torch._utils.{f}" for f in _REBUILD}
    | {f"torch.{s}" for s in _STORAGES}
    | {f"torch.storage.{s}" for s in ("UntypedStorage", "TypedStorage", "_LegacyStorage")}
    | {f"torch.{d}" for d in _DTYPES}
    | {
        "torch._tensor._rebuild_from_type_v2",
        "torch.Size",
        "torch.device",
        "torch.Tensor",
        "torch.nn.parameter.Parameter",
        "torch.strided",
        "torch.sparse_coo",
        "torch.contiguous_format",
        "torch.channels_last",
        "torch.preserve_format",
        "collections.OrderedDict",
        "collections.defaultdict",
        "collections.deque",
        "builtins.set",
        "builtins.frozenset",
        "builtins.bytearray",
        "builtins.complex",
        "builtins.slice",
        "builtins.range",
        "_codecs.encode",  # how protocol 2 writes `bytes`
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "numpy.ndarray",
        "numpy.dtype",
    }
)
"""Names a plain tensor checkpoint imports: never listed, never warned about."""

_DANGEROUS_ROOTS = {
    "builtins",
    "__builtin__",
    "os",
    "posix",
    "nt",
    "posixpath",
    "ntpath",
    "subprocess",
    "sys",
    "shutil",
    "socket",
    "importlib",
    "runpy",
    "pickle",
    "_pickle",
    "pickletools",
    "dill",
    "cloudpickle",
    "joblib",
    "marshal",
    "ctypes",
    "pty",
    "code",
    "codeop",
    "webbrowser",
    "multiprocessing",
    "pathlib",
    "io",
    "_io",
    "tempfile",
    "urllib",
    "requests",
    "http",
    "types",
    "operator",
    "functools",
    "inspect",
    "signal",
    "asyncio",
    "threading",
    "_thread",
    "gc",
    "platform",
    "pdb",
    "bdb",
    "timeit",
    "cProfile",
    "profile",
    "trace",
    "shelve",
    "dbm",
    "sqlite3",
    "zipimport",
    "pkgutil",
    "site",
    "setuptools",
    "pip",
    "distutils",
    "_posixsubprocess",
    "_osx_support",
    "pydoc",
}
_DANGEROUS_TORCH = (
    "torch.hub",
    "torch.load",
    "torch.serialization",
    "torch.jit",
    "torch.ops",
    "torch._ops",
    "torch._C",
    "torch.package",
    "torch.fx",
    "torch.utils.cpp_extension",
    "torch.utils._import_utils",
    "torch._dynamo",
    "torch._inductor",
    "torch.compile",
    "torch.export",
    "torch.library",
    "torch.classes",
    "torch.distributed",
    "torch.storage._load_from_bytes",
    "torch.multiprocessing",
    "torch.backends",
)
_DANGEROUS_WORDS = ("exec", "eval", "system", "popen", "spawn", "load", "import", "compile", "open")


def is_allowed(name: str) -> bool:
    """Whether `module.name` is on the tensor-checkpoint allowlist (`ALLOWED`)."""
    return name in ALLOWED


def is_dangerous(name: str) -> bool:
    """Whether `name` loads, imports or executes something when called (a WARNING in the refusal)."""
    if name in ALLOWED:
        return False
    parts = name.split(".")
    if parts[0] in _DANGEROUS_ROOTS:
        return True
    if any(p.startswith("__") and p.endswith("__") for p in parts[1:]):  # __globals__, __builtins__, ...
        return True
    if any(name == t or name.startswith(t + ".") for t in _DANGEROUS_TORCH):
        return True
    last = parts[-1].lower()
    return any(word in last for word in _DANGEROUS_WORDS)
