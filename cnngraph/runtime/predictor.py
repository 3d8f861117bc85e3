"""The predictor: an exported model on onnxruntime, on the fastest device there is.

    p = Predictor("lenet5.onnx")                  # CUDA if it really starts, else CPU (logged)
    probs = p.run(batch)[0]                       # NumPy in, NumPy out
    out = p.run_torch(x_cuda)[0]                  # torch in, torch out, same device, no host copy
    out = p.run_ortvalues(p.to_device(batch))     # OrtValues resident on the device

Device-resident inputs and outputs go through IO binding: onnxruntime reads and writes the
caller's buffers in place. With `cuda_graph=True` the first shape seen is captured as a CUDA
graph and replayed; inputs are copied into static device buffers, and the returned outputs are
those static buffers, overwritten by the next call.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import InputError
from .inputs import ModelMeta
from .session import (CUDA, CudaOptions, create_session, digest, providers_for,
                      resolve_device, session_options)

log = logging.getLogger("cnngraph.runtime")

DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
          "tensor(bool)": np.bool_}
SPEC_SUFFIXES = {".yaml", ".yml", ".json"}


class Predictor:
    """An inference session over one exported model (see the module docstring)."""

    def __init__(self, model_path: str | Path, device: str | None = "auto", device_id: int = 0, *,
                 fp16: bool = False, cuda_graph: bool = False, threads: int | None = None,
                 strict: bool = False, cache: bool = True, cuda: CudaOptions | None = None,
                 profile_dir: str | None = None, optimization: str = "all"):
        path = Path(model_path)
        if path.is_dir() or path.suffix.lower() in SPEC_SUFFIXES:
            raise InputError(f"{path}: not an exported model (.onnx); export it first with "
                             f"`cnngraph export {path}`")
        if not path.is_file():
            raise InputError(f"{path}: no such model file")
        self.path, self.device_id, self.cuda_graph = path, device_id, cuda_graph
        self.provider = resolve_device(device)
        on_cuda = self.provider == CUDA
        if cuda_graph and not on_cuda:
            raise InputError("CUDA graphs need the CUDA provider: drop cuda_graph or use device cuda")
        self.source = source = float16_model(path) if fp16 else path
        so = session_options(self.provider, threads=threads, strict=strict, profile_dir=profile_dir,
                             optimization=optimization)
        cuda = cuda or CudaOptions()
        providers = providers_for(self.provider, device_id=device_id, cuda=cuda, fp16=fp16,
                                  cuda_graph=cuda_graph, strict=strict)
        # the cache holds the fully optimised graph; profiling wants names as onnxruntime builds them
        tag = ("cuda-nhwc" if cuda.nhwc(fp16) else "cuda") if on_cuda else "cpu"
        cached = cache and not profile_dir and optimization == "all"
        try:
            self.session = create_session(source, so, providers, cache_tag=tag if cached else None)
        except InputError:
            if fp16:  # a copy that does not load is not kept for the next call
                source.unlink(missing_ok=True)
            from ..files import read_onnx
            read_onnx(path)  # bytes that are not ONNX: the message every command gives
            raise
        if on_cuda and CUDA not in self.session.get_providers():
            raise InputError(f"{path}: onnxruntime did not start its CUDA provider for this model")
        self.meta = ModelMeta.from_props(self.session.get_modelmeta().custom_metadata_map, str(path))
        self.inputs = self.session.get_inputs()
        self.outputs = self.session.get_outputs()
        self.output_names = [o.name for o in self.outputs]
        self._device = "cuda" if on_cuda else "cpu"
        self._graph: tuple | None = None   # (signature, binding, static inputs, static outputs)
        self._shapes: dict = {}             # input shapes -> output shapes
        log.info("%s on %s (%s)", path.name, self.provider, ", ".join(self.session.get_providers()))

    # -- inputs -----------------------------------------------------------------------------
    def _named(self, args: tuple, kwargs: dict) -> dict:
        names = [i.name for i in self.inputs]
        if args and kwargs:
            raise InputError("pass the inputs either positionally or by name, not both")
        if args:
            if len(args) != len(names):
                raise InputError(f"the model takes {len(names)} input(s) {names}, got {len(args)}")
            return dict(zip(names, args))
        unknown = set(kwargs) - set(names)
        missing = set(names) - set(kwargs)
        if unknown or missing:
            raise InputError(f"the model's inputs are {names}; got {sorted(kwargs)}")
        return kwargs

    def _check(self, name: str, shape: tuple[int, ...], dtype) -> None:
        spec = next(i for i in self.inputs if i.name == name)
        want = spec.shape
        if len(shape) != len(want) or any(isinstance(w, int) and w != s for w, s in zip(want, shape)):
            shown = tuple(w if isinstance(w, int) else "N" for w in want)
            raise InputError(f"input '{name}': shape {tuple(shape)} does not fit the model's {shown}")
        if np.dtype(dtype) != np.dtype(DTYPES.get(spec.type, dtype)):
            raise InputError(f"input '{name}': dtype {np.dtype(dtype)} where the model takes "
                             f"{spec.type[7:-1]}")

    def feeds(self, *args, **kwargs) -> dict[str, np.ndarray]:
        """NumPy inputs checked against the model; float arrays are cast to the model's float type."""
        named = self._named(args, kwargs)
        out = {}
        for spec in self.inputs:
            a = np.asarray(named[spec.name])
            want = DTYPES.get(spec.type)
            if want is not None and np.issubdtype(a.dtype, np.floating) and np.issubdtype(want, np.floating):
                a = a.astype(want, copy=False)
            self._check(spec.name, a.shape, a.dtype)
            out[spec.name] = np.ascontiguousarray(a)
        return out

    # -- running ----------------------------------------------------------------------------
    def run(self, *args, **kwargs) -> list[np.ndarray]:
        """NumPy in, NumPy out (all outputs, in the model's order)."""
        feeds = self.feeds(*args, **kwargs)
        if self.cuda_graph:
            return [v.numpy() for v in self._replay(feeds)]
        return self.session.run(self.output_names, feeds)

    __call__ = run

    def to_device(self, array: np.ndarray) -> ort.OrtValue:
        """Copy an array once to the predictor's device, for `run_ortvalues`."""
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self._device, self.device_id)

    def run_ortvalues(self, *args, **kwargs) -> list[ort.OrtValue]:
        """OrtValues in (on this device), OrtValues out, allocated on the same device."""
        named = self._named(args, kwargs)
        for name, value in named.items():
            self._check(name, tuple(value.shape()), _np_type(value.data_type()))
        if self.cuda_graph:
            return self._replay(named)
        io = self.session.io_binding()
        for name, value in named.items():
            io.bind_ortvalue_input(name, value)
        for name in self.output_names:
            io.bind_output(name, self._device, self.device_id)
        self.session.run_with_iobinding(io)
        return io.get_outputs()

    def run_torch(self, *args, **kwargs) -> list:
        """torch tensors in (on the predictor's device), torch tensors out on the same device:
        both bound by pointer, so a CUDA tensor never visits the host."""
        import torch
        named = self._named(args, kwargs)
        device = torch.device(self._device, self.device_id) if self._device == "cuda" else torch.device("cpu")
        for name, t in named.items():
            if t.device != device:
                raise InputError(f"input '{name}' is on {t.device}; this predictor runs on {device}")
            self._check(name, tuple(t.shape), _torch_to_np(t.dtype))
        named = {k: t.contiguous() for k, t in named.items()}
        if device.type == "cuda":   # onnxruntime reads on its own stream: let torch's writes land
            torch.cuda.current_stream(device).synchronize()
        if self.cuda_graph:
            return self._replay(named)
        io = self.session.io_binding()
        for name, t in named.items():
            _bind_torch_input(io, name, t)
        shapes = self._output_shapes({k: tuple(t.shape) for k, t in named.items()})
        outs = [torch.empty(shape, dtype=_np_to_torch(DTYPES[o.type]), device=device)
                for o, shape in zip(self.outputs, shapes)]
        for name, t in zip(self.output_names, outs):
            _bind_torch_output(io, name, t)
        self.session.run_with_iobinding(io)
        return outs

    def _output_shapes(self, shapes: dict[str, tuple[int, ...]]) -> list[tuple[int, ...]]:
        """Output shapes for these input shapes: the model's declared ones with symbolic dims
        (the batch) taken from the inputs; failing that, one run on zeros, remembered. A
        CUDA-graph session must not run unbound, so a plain CPU session does that run."""
        key = tuple(sorted(shapes.items()))
        if key in self._shapes:
            return self._shapes[key]
        known = {}
        for spec in self.inputs:
            known.update((d, v) for d, v in zip(spec.shape, shapes[spec.name]) if isinstance(d, str))
        out = [tuple(d if isinstance(d, int) else known.get(d) for d in o.shape) for o in self.outputs]
        if any(None in shape for shape in out):
            zeros = {spec.name: np.zeros(shapes[spec.name], DTYPES[spec.type]) for spec in self.inputs}
            probe = (ort.InferenceSession(str(self.source), providers=["CPUExecutionProvider"])
                     if self.cuda_graph else self.session)
            out = [tuple(o.shape) for o in probe.run(self.output_names, zeros)]
        self._shapes[key] = out
        return out

    def _replay(self, feeds: dict) -> list:
        """CUDA-graph run: copy the inputs into the static buffers bound at capture, replay."""
        kind = "OrtValue/NumPy" if isinstance(next(iter(feeds.values())), (np.ndarray, ort.OrtValue)) else "torch"
        signature = (kind, tuple((k, _shape(v)) for k, v in feeds.items()))
        if self._graph is None:
            self._graph = self._capture(signature, feeds)
        captured, io, static_in, static_out = self._graph
        if signature != captured:
            raise InputError(f"this predictor captured a CUDA graph for {captured[0]} inputs "
                             f"{dict(captured[1])}; got {signature[0]} {dict(signature[1])} "
                             "(CUDA graphs need fixed shapes and buffers)")
        for name, value in feeds.items():
            _copy_into(static_in[name], value)
        self.session.run_with_iobinding(io)
        return static_out

    def _capture(self, signature: tuple, feeds: dict) -> tuple:
        """Bind static buffers once, inputs and outputs (torch tensors for torch callers,
        OrtValues otherwise): onnxruntime captures the graph on a later run and every replay
        reads and writes exactly these addresses, so they must exist before the first run."""
        io = self.session.io_binding()
        torch_kind = signature[0] == "torch"
        static_in, static_out = {}, []
        for spec in self.inputs:
            value = feeds[spec.name]
            if torch_kind:
                static_in[spec.name] = value.clone()
                _bind_torch_input(io, spec.name, static_in[spec.name])
            else:
                static_in[spec.name] = ort.OrtValue.ortvalue_from_shape_and_type(
                    list(_shape(value)), DTYPES[spec.type], self._device, self.device_id)
                _copy_into(static_in[spec.name], value)
                io.bind_ortvalue_input(spec.name, static_in[spec.name])
        for o, shape in zip(self.outputs, self._output_shapes({k: _shape(v) for k, v in feeds.items()})):
            if torch_kind:
                import torch
                static_out.append(torch.empty(shape, dtype=_np_to_torch(DTYPES[o.type]),
                                              device=next(iter(feeds.values())).device))
                _bind_torch_output(io, o.name, static_out[-1])
            else:
                static_out.append(ort.OrtValue.ortvalue_from_shape_and_type(
                    list(shape), DTYPES[o.type], self._device, self.device_id))
                io.bind_ortvalue_output(o.name, static_out[-1])
        return signature, io, static_in, static_out


def float16_model(path: Path) -> Path:
    """The fp16 copy of an fp32 model (weights and compute in float16, inputs and outputs kept
    float32), made for the CUDA provider's tensor cores; the CPU provider runs it too, where it
    has float16 kernels, slowly. The cnngraph functions are inlined first, so their bodies
    compute in float16 too. Written once beside the model, or in the temporary folder when
    that one is read-only; the name holds the model's digest and the onnxruntime and cnngraph
    versions, so a new converter makes a new copy."""
    import tempfile

    from exporters.ir_export import to_float16

    from .. import __version__
    name = f"{path.stem}.fp16-ort{ort.__version__}-cg{__version__}-{digest(path)}.onnx"
    folders = (path.parent, Path(tempfile.gettempdir()))
    for folder in folders:
        if (folder / name).exists():
            return folder / name
    from ..files import read_onnx
    model = read_onnx(path)  # junk is one line here too
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # noqa: BLE001 - a missing or short external-data file
        raise InputError(f"{path}: its external weights cannot be read ({type(exc).__name__}: "
                         f"{str(exc).strip()[:160]}); keep the .onnx and its data file together"
                         ) from None
    model = to_float16(model, inline=True)
    for folder in folders:
        tmp = folder / f".{name}.tmp"
        try:
            onnx.save(model, str(tmp))
            tmp.replace(folder / name)
            return folder / name
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.info("cannot write the float16 copy into %s (%s)", folder, exc)
    raise InputError(f"{path}: cannot write its float16 copy beside it or in {folders[-1]}")


def _shape(value) -> tuple[int, ...]:
    return tuple(value.shape()) if isinstance(value, ort.OrtValue) else tuple(value.shape)



def _copy_into(static, value) -> None:
    """Copy `value` into a static buffer: a torch tensor on the device; NumPy from the host;
    an OrtValue through the host (onnxruntime's Python API has no device-to-device copy that
    works for every provider)."""
    if isinstance(value, np.ndarray):
        static.update_inplace(value)
    elif isinstance(value, ort.OrtValue):
        static.update_inplace(value.numpy())
    else:
        static.copy_(value)


def _bind_torch_input(io: ort.IOBinding, name: str, t) -> None:
    io.bind_input(name, t.device.type, t.device.index or 0, _torch_to_np(t.dtype), list(t.shape), t.data_ptr())


def _bind_torch_output(io: ort.IOBinding, name: str, t) -> None:
    io.bind_output(name, t.device.type, t.device.index or 0, _torch_to_np(t.dtype), list(t.shape), t.data_ptr())


def _np_type(onnx_type: str):
    return np.dtype(DTYPES[onnx_type])


def _torch_to_np(dtype):
    import torch
    return {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64,
            torch.int64: np.int64, torch.int32: np.int32, torch.uint8: np.uint8,
            torch.bool: np.bool_}[dtype]


def _np_to_torch(dtype: np.dtype):
    import torch
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
            np.dtype(np.float64): torch.float64, np.dtype(np.int64): torch.int64,
            np.dtype(np.int32): torch.int32, np.dtype(np.uint8): torch.uint8,
            np.dtype(np.bool_): torch.bool}[np.dtype(dtype)]
