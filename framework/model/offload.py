"""Activation offloading (`model.activation_offloading`): what the decoder's forward saves for the
backward waits in pinned CPU memory instead of on the GPU.

Torch's saved-tensor hooks see every tensor autograd keeps. `offloading` enters them only around the
decoder body (a forward pre-hook on the transformers decoder module, left in its forward hook) and only
while gradients are on: the loss head's tensors never move (a chunked loss takes each chunk's gradients
inside its own forward: they would go out and straight back), and evaluation and reference scoring move
nothing. Large saved tensors that are not weights are copied to pinned host memory on a side CUDA
stream, overlapping the forward's compute, and their GPU memory is released once the copy is done. A
weight includes autocast's cached low-precision copy of an fp32 parameter: the cache holds it until
autocast exits, so moving it would free nothing. A frozen fp32 weight (a LoRA base) is not cached:
autocast casts it again at every use, and that fresh copy, held by nothing but the graph, does move.

The backward reads the saved tensors in reverse order of the autograd nodes that saved them (the
engine runs nodes by decreasing sequence number, and a save is tagged with the number the forward is
at). When the backward reads a node's first tensor, the next node's are started back to the GPU on the
side stream (prefetch); the compute stream waits for a copy on its event, and the host never waits. A
tensor several nodes saved moves out once and back once. With gradient checkpointing the only
tensors kept are each layer's input (the checkpoints), so those are what moves. The numbers do not
change: a saved tensor comes back bit for bit.
"""
from __future__ import annotations

import contextlib
import functools
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

MIN_BYTES = 1 << 20  # smaller tensors stay: copying them costs more than they hold


@dataclass(eq=False)
class Slot:
    """One moved tensor: its host copy and, while the backward still needs it, its copy back."""

    device: Any
    host: Any
    uses: int = 1  # saves of this tensor the backward has not read yet
    back: Any = None  # the copy back on the device: prefetched, or kept for a later read
    ready: Any = None  # CUDA event: `back` is complete
    asked: bool = False  # read once at least (its first read is in Saves.restores)


@dataclass(eq=False)
class Saves:
    """What one decoder forward moved. A tensor several nodes save is moved once (a slot) and saved
    several times; each save knows its slot and its autograd node, which gives the backward's order."""

    slots: list[Slot] = field(default_factory=list)
    order: list[int] = field(default_factory=list)  # per save: its slot
    node_of: list[int] = field(default_factory=list)  # per save: its node (numbered in saving order)
    firsts: list[int] = field(default_factory=list)  # per node: its first save
    restores: list[tuple[int, bool]] = field(default_factory=list)  # per slot's first read: (slot, on its way)
    _node: Optional[int] = None

    def add(self, slot: int, node: Optional[int]) -> _Saved:
        if node is None or node != self._node:
            self.firsts.append(len(self.order))
        self.node_of.append(len(self.firsts) - 1)
        self.order.append(slot)
        self._node = node
        return _Saved(self, len(self.order) - 1)

    def upcoming(self, save: int) -> list[Slot]:
        """The slots the backward reads next, unread so far: the rest of `save`'s node, and the nearest
        earlier node's. A node's all at once: it does not always read them in the order it saved them
        (a checkpoint's inputs, saved by no node, share the number of the node before)."""
        node = self.node_of[save]
        found = self._unread(node)
        for earlier in range(node - 1, -1, -1):
            more = self._unread(earlier)
            if more:
                return found + more
        return found

    def _unread(self, node: int) -> list[Slot]:
        stop = self.firsts[node + 1] if node + 1 < len(self.firsts) else len(self.order)
        slots = (self.slots[self.order[save]] for save in range(self.firsts[node], stop))
        return [slot for slot in slots if not slot.asked]


@dataclass(frozen=True, eq=False)
class _Saved:
    """What autograd keeps in place of a moved tensor."""

    saves: Saves
    index: int


def _node() -> Optional[int]:
    """The forward's next autograd sequence number: making a node takes one, and a node saves its tensors
    right after it is made, so saves that see the same number share a node (None without this private
    call: every save is then a node of its own, and the order is the reverse of packing)."""
    import torch

    sequence_nr = getattr(torch._C._autograd, "_get_sequence_nr", None)
    return None if sequence_nr is None else sequence_nr()


def _cast_of_parameter(tensor: Any) -> bool:
    """Whether `tensor` is a cast of a trainable parameter: autocast's cached copy (its grad_fn's input
    is the parameter's AccumulateGrad), or a cast the model makes itself, a weight's size either way."""
    import torch

    fn = tensor.grad_fn
    return fn is not None and fn.name() == "ToCopyBackward0" and any(
        isinstance(getattr(prev, "variable", None), torch.nn.Parameter) for prev, _ in fn.next_functions)


class Offloader:
    """Saved-tensor hooks moving a model's large saved activations to host memory and back.

    `device_type` is where the model runs; on the CPU there is nothing to move unless `copy_on_cpu`
    (the tests' way to run the same path, bookkeeping and prefetch included, where there is no GPU)."""

    def __init__(self, model: Any, device_type: str, *, copy_on_cpu: bool = False, min_bytes: int = MIN_BYTES):
        import torch

        self.weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.cuda = device_type == "cuda"
        self.copy_on_cpu, self.min_bytes = copy_on_cpu, min_bytes
        self.stream = torch.cuda.Stream() if self.cuda else None
        self.moved = 0  # bytes moved by the last forward
        self._saves: Callable[[], Optional[Saves]] = lambda: None
        self._seen: dict[int, tuple] = {}

    @property
    def saves(self) -> Optional[Saves]:
        """What the last offloaded forward moved, while its graph lives (the graph holds it, not this)."""
        return self._saves()

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        """Within this context, saved tensors are offloaded (`offloading` enters it around the decoder)."""
        import torch

        saves = Saves()
        self.moved, self._seen, self._saves = 0, {}, weakref.ref(saves)
        with torch.autograd.graph.saved_tensors_hooks(functools.partial(self._pack, saves), self._unpack):
            yield
        self._seen = {}

    @contextlib.contextmanager
    def around(self, module: Any) -> Iterator[None]:
        """While this lasts, `module`'s forward runs offloaded whenever gradients are on."""
        import torch

        open_: list[contextlib.ExitStack] = []  # a stack: the module may run within itself

        def enter(*_: Any) -> None:
            open_.append(contextlib.ExitStack())
            if torch.is_grad_enabled():
                open_[-1].enter_context(self())

        def leave(*_: Any) -> None:
            if open_:  # empty when a pre-hook before ours raised
                open_.pop().close()

        handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave, always_call=True)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _moves(self, tensor: Any) -> bool:
        import torch

        on_device = tensor.is_cuda if self.cuda else self.copy_on_cpu and tensor.device.type == "cpu"
        if not on_device or tensor.numel() * tensor.element_size() < self.min_bytes:
            return False
        base = tensor if tensor._base is None else tensor._base  # a weight is often saved transposed
        weight = (isinstance(base, torch.nn.Parameter) or _cast_of_parameter(base)
                  or tensor.untyped_storage().data_ptr() in self.weights)  # ZeRO-3 gathers into new storage
        return not weight

    def _pack(self, saves: Saves, tensor: Any) -> Any:
        if not self._moves(tensor):
            return tensor
        seen = self._seen.get(id(tensor))
        if seen is not None and seen[0]() is tensor and seen[1] == tensor._version:  # kept twice: moved once
            slot = seen[2]
            saves.slots[slot].uses += 1
        else:
            slot = len(saves.slots)
            saves.slots.append(self._copy_out(tensor))
            self._seen[id(tensor)] = (weakref.ref(tensor), tensor._version, slot)  # an id alone may be a freed one's
            self.moved += tensor.numel() * tensor.element_size()
        return saves.add(slot, _node())

    def _unpack(self, saved: Any) -> Any:
        if not isinstance(saved, _Saved):
            return saved
        saves, number = saved.saves, saved.saves.order[saved.index]
        slot = saves.slots[number]
        if not slot.asked:
            slot.asked = True
            saves.restores.append((number, slot.back is not None))
        if slot.back is None:
            self._copy_back(slot)
        for upcoming in saves.upcoming(saved.index):
            if upcoming.back is None:
                self._copy_back(upcoming)
        return self._take(slot)

    def _copy_out(self, tensor: Any) -> Slot:
        import torch

        if not self.cuda:
            return Slot(tensor.device, tensor.clone())
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            host = torch.empty_like(tensor, device="cpu", pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            tensor.record_stream(self.stream)  # its memory is reused only after the copy
        return Slot(tensor.device, host)

    def _copy_back(self, slot: Slot) -> None:
        """Start `slot`'s copy back to the device; on the side stream, after its copy out."""
        import torch

        if not self.cuda:
            slot.back = slot.host.clone()  # a copy, as on the GPU, so the CPU path hands out fresh tensors
            return
        with torch.cuda.stream(self.stream):
            slot.back = slot.host.to(slot.device, non_blocking=True)
            slot.ready = self.stream.record_event()

    def _take(self, slot: Slot) -> Any:
        """`slot`'s copy back, for the compute stream; kept for the slot's next read, if any."""
        import torch

        tensor = slot.back
        if self.cuda:
            compute = torch.cuda.current_stream()
            compute.wait_event(slot.ready)
            tensor.record_stream(compute)  # made on the side stream: not reused while the compute stream reads it
        slot.uses -= 1
        if slot.uses <= 0:
            slot.back = slot.ready = None  # autograd holds it for as long as its node needs it
        return tensor


def decoder(model: Any) -> Any:
    """The transformers decoder body inside the wrappers (the whole model if it names none)."""
    from framework.model.heads import causal_lm

    inner = causal_lm(model)
    return inner.get_decoder() if hasattr(inner, "get_decoder") else inner


def offloading(loss: Callable, offloader: Offloader) -> Callable:
    """`loss` with its model's decoder body offloaded while gradients are on; its loss head stays."""

    def offloaded(model: Any, batch: dict) -> Any:
        with offloader.around(decoder(model)):
            return loss(model, batch)

    return offloaded
