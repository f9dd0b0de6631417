"""Consecutive kernel calls of a plan as one call of ``qc_plan_run`` (``host_plan.cpp``).

A plan (:mod:`qcompile.kernels.plan`) replays kept kernel calls from Python, each paying for an output tensor
and a ctypes call (about 3 us); a model makes dozens in a row (MobileNetV2: all its calls). A segment is such a
run of steps (the quantize, convolutions, linear layers, adds, pooling, copies, the dequantize) made into one
table of entry points and arguments that C walks through. The values that only the segment's own steps read
live in an arena, reused at every call; a value's bytes are given to a later one once its last reader has run,
so a segment needs room for the largest set of values alive at once, not all of them. A model's segments share
one arena (its plans run one at a time on a thread), as large as the largest of them needs: a model called
with inputs of many shapes keeps one arena, not one for each. Values that Python reads later (the steps after
the segment, the model's output) are tensors allocated at each call, as before. Before and after, for two
convolutions and an add::

    values.append(conv1(values[4])); values.append(conv2(values[5])); values.append(add(values[6], values[4]))
    segment(values)   # one qc_plan_run: conv1 and conv2 into the arena, the add into a new tensor

Contract: the same kernel calls with the same arguments, in the same order, so the same codes; a call
concurrent with another of the model's (another thread) uses an arena of its own, made for the call.
"""

from __future__ import annotations

import ctypes
import threading

import torch
from qcompile.kernels import host

# entry point -> its kind in qc_plan_run
KINDS = {"qc_conv_gemm": 0, "qc_conv_gemm_amx": 1, "qc_conv_depthwise_vnni": 2, "qc_conv_depthwise": 3,
         "qc_conv_gemm_bytes": 4, "qc_host_add_lookup": 5, "qc_host_add": 6, "qc_host_max_pool": 7,
         "qc_host_to_channels_last": 8, "qc_host_mean_pixels": 9, "qc_host_dequantize": 10,
         "qc_host_quantize": 11}
STEP_WORDS = 24  # host_plan.cpp's kStepWords
ALIGN = 64  # an arena value's bytes start at a multiple of this
SLACK = 64  # bytes after the arena's last value (a vector read past a value's end stays inside)


def kernel_call(step: tuple):
    """The kept kernel call a plan's step makes (a ``host.KernelCall``: a layer's, a pooling's, a layout copy's;
    or a ``host.AddCall``) whose entry point ``qc_plan_run`` knows, or None."""
    fn = step[0]
    if not isinstance(fn, (host.KernelCall, host.AddCall)) or step[-1] is None:
        return None
    return fn if fn.entry.__name__ in KINDS else None


def _word(arg) -> int:
    """An argument as ``qc_plan_run`` reads it: an integer, a ctypes array's address, or a float32's bits."""
    if isinstance(arg, ctypes.c_float):
        return ctypes.c_uint32.from_buffer(arg).value
    return ctypes.addressof(arg) if isinstance(arg, ctypes.Array) else int(arg)


def _arguments(call) -> list[int]:
    """The entry point's arguments other than the values' addresses, in its order."""
    before = call.before if isinstance(call, host.KernelCall) else ()
    return [_word(a) for a in (*before, *call.after)]


def _bytes(call) -> int:
    return torch.Size(call.out_shape).numel() * call.out_dtype.itemsize


class Arena:
    """The bytes a model's segments keep their values in: one at a time (``lock``), grown to what the largest
    needs."""

    def __init__(self):
        self.lock = threading.Lock()
        self.bytes = torch.empty(0, dtype=torch.uint8)

    def at_least(self, size: int) -> torch.Tensor:
        """The bytes, grown to ``size`` where they are fewer (the caller holds the lock)."""
        if self.bytes.numel() < size:
            self.bytes = torch.empty(0, dtype=torch.uint8)  # the old bytes go before the new ones come
            self.bytes = torch.empty(size, dtype=torch.uint8)
        return self.bytes


class Segment:
    """A run of a plan's kernel calls, whose outputs are the value slots from ``base`` on, as one C call."""

    def __init__(self, calls: list, reads: list[tuple[int, ...]], base: int, kept: set[int], arena: Arena):
        """``calls``: the steps' kernel calls; ``reads``: the value slots each reads; ``base``: the slot of the
        first one's output; ``kept``: the slots read after the segment (its outputs there are tensors);
        ``arena``: the model's."""
        self.calls = calls  # holds the tensors their arguments point into
        produced = range(base, base + len(calls))
        inputs = sorted({s for r in reads for s in r if s < base})
        local = {slot: i for i, slot in enumerate([*inputs, *produced])}
        self.inputs = [(local[s], s) for s in inputs]  # (local index, slot) of values from before the segment
        last = {s: i for i, r in enumerate(reads) for s in r}  # each value's last reader in the segment
        offsets = _offsets([_bytes(c) for c in calls], [last.get(s, i) for i, s in enumerate(produced)],
                           [s in kept for s in produced])
        self.outputs = []  # (local index, position in the segment, shape, strides, dtype) of the tensors made per call
        words = torch.zeros(len(calls), STEP_WORDS, dtype=torch.int64)
        for i, (call, r) in enumerate(zip(calls, reads, strict=True)):
            slot = base + i
            if offsets[i] < 0:
                self.outputs.append((local[slot], i, call.out_shape, call.out_strides, call.out_dtype))
            row = [KINDS[call.entry.__name__], ctypes.cast(call.entry, ctypes.c_void_p).value, local[r[0]],
                   local[r[1]] if len(r) > 1 else -1, local[slot], offsets[i], *_arguments(call)]
            words[i, :len(row)] = torch.tensor(row, dtype=torch.int64)
        self.words = words
        self.size = max([o + b for o, b in zip(offsets, map(_bytes, calls), strict=True) if o >= 0], default=0)
        self.values = (ctypes.c_int64 * len(local))()  # used under the arena's lock
        self.arena = arena

    def __call__(self, values: list) -> None:
        """Run the steps on ``values`` (the plan's, up to the segment's first output), appending theirs (None for
        those in the arena)."""
        need = self.size + SLACK + ALIGN
        if self.arena.lock.acquire(blocking=False):
            try:
                self._run(values, self.values, self.arena.at_least(need))
            finally:
                self.arena.lock.release()
        else:  # another thread is in the model's segments: its own table of addresses and arena
            self._run(values, (ctypes.c_int64 * len(self.values))(), torch.empty(need, dtype=torch.uint8))

    def _run(self, values: list, addresses, arena: torch.Tensor) -> None:
        for i, slot in self.inputs:
            addresses[i] = values[slot].data_ptr()
        made = [None] * len(self.calls)
        for i, position, shape, strides, dtype in self.outputs:
            out = made[position] = torch.empty_strided(shape, strides, dtype=dtype)
            addresses[i] = out.data_ptr()
        start = -arena.data_ptr() % ALIGN + arena.data_ptr()
        failed = host.library().qc_plan_run(self.words.data_ptr(), len(self.calls), addresses, start)
        if failed >= 0:  # an entry point that KINDS names and host_plan.cpp does not: a mismatch of the two
            raise RuntimeError(f"qc_plan_run has no kind for {self.calls[failed].entry.__name__}")
        values.extend(made)


def _offsets(sizes: list[int], last: list[int], kept: list[bool]) -> list[int]:
    """Each value's offset in the arena (-1 for a kept one: a tensor of its own): value ``i``, written by step
    ``i`` and last read by step ``last[i]``, at the lowest offset (a multiple of ALIGN) whose bytes no value still
    to be read at step ``i`` holds (its inputs included: a kernel's output must not overlap them)."""
    offsets = [-1] * len(sizes)
    for i, size in enumerate(sizes):
        if kept[i]:
            continue
        taken = sorted((offsets[j], offsets[j] + sizes[j]) for j in range(i) if offsets[j] >= 0 and last[j] >= i)
        at = 0
        for begin, end in taken:
            if at + size <= begin:
                break
            at = max(at, -(-end // ALIGN) * ALIGN)
        offsets[i] = at
    return offsets


def join(steps: list[tuple], reads: list[tuple[int, ...]], first: int, read_later: set[int], arena: Arena) -> list:
    """``steps`` (value slots from ``first``) with each run of two or more kernel calls made one segment step
    ``(segment,)``; ``read_later``: the slots that the model's output reads; ``arena``: the model's."""
    if host.library() is None:
        return steps
    calls = [kernel_call(s) for s in steps]
    joined, i = [], 0
    while i < len(steps):
        j = i
        while j < len(steps) and calls[j] is not None:
            j += 1
        if j - i < 2:
            joined.append(steps[i])
            i += 1
            continue
        kept = set(read_later)
        for k, r in enumerate(reads):
            if not i <= k < j:
                kept.update(r)
        joined.append((Segment(calls[i:j], reads[i:j], first + i, kept, arena),))
        i = j
    return joined
