"""Activation offloading (`model.activation_offloading`): what the forward saves for the backward
waits in pinned CPU memory instead of on the GPU.

Torch's saved-tensor hooks see every tensor autograd keeps. Large ones that are not parameters are
copied to pinned host memory on a side CUDA stream, overlapping the forward's compute, and their GPU
memory is released once the copy is done; the backward copies each back when it needs it. With
gradient checkpointing the only tensors kept are each layer's input (the checkpoints), so those are
what moves. The numbers do not change: a saved tensor comes back bit for bit.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable

MIN_BYTES = 1 << 20  # smaller tensors stay: copying them costs more than they hold


class Offloader:
    """Saved-tensor hooks moving a model's large saved activations to host memory and back.

    `device_type` is where the model runs; on the CPU there is nothing to move unless `copy_on_cpu`
    (the tests' way to run the same path where there is no GPU)."""

    def __init__(self, model: Any, device_type: str, *, copy_on_cpu: bool = False, min_bytes: int = MIN_BYTES):
        import torch

        self.weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.cuda = device_type == "cuda"
        self.copy_on_cpu, self.min_bytes = copy_on_cpu, min_bytes
        self.stream = torch.cuda.Stream() if self.cuda else None
        self.moved = 0  # bytes moved by the last forward
        self._seen: dict[Any, Any] = {}

    @contextlib.contextmanager
    def __call__(self):
        """Within this context, the forward's saved activations are offloaded."""
        import torch

        self.moved, self._seen = 0, {}
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            yield
        self._seen = {}

    def _moves(self, tensor: Any) -> bool:
        import torch

        on_device = tensor.is_cuda if self.cuda else self.copy_on_cpu and tensor.device.type == "cpu"
        weight = (isinstance(tensor, torch.nn.Parameter) or isinstance(tensor._base, torch.nn.Parameter)
                  or tensor.untyped_storage().data_ptr() in self.weights)  # ZeRO-3 gathers into new storage
        return on_device and not weight and tensor.numel() * tensor.element_size() >= self.min_bytes

    def _pack(self, tensor: Any) -> Any:
        if not self._moves(tensor):
            return tensor
        seen = self._seen.get(id(tensor))
        if seen is not None and seen[0]() is tensor and seen[1] == tensor._version:  # kept twice: moved once
            return seen[2]
        packed = self._copy_out(tensor)
        self._seen[id(tensor)] = (weakref.ref(tensor), tensor._version, packed)  # an id alone may be a freed one's
        self.moved += tensor.numel() * tensor.element_size()
        return packed

    def _copy_out(self, tensor: Any) -> tuple:
        import torch

        if not self.cuda:
            return tensor.device, tensor.clone(), None
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            host = torch.empty_like(tensor, device="cpu", pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            tensor.record_stream(self.stream)  # its memory is reused only after the copy
            done = self.stream.record_event()
        return tensor.device, host, done

    @staticmethod
    def _unpack(packed: Any) -> Any:
        if not isinstance(packed, tuple):
            return packed
        device, host, done = packed
        if done is not None:
            done.synchronize()
        return host.to(device, non_blocking=True)


def offloading(loss: Callable, offloader: Offloader) -> Callable:
    """`loss` with its forward's saved activations offloaded."""

    def offloaded(model: Any, batch: dict) -> Any:
        with offloader():
            return loss(model, batch)

    return offloaded
