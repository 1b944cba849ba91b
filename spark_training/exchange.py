"""The DFAGD wire protocol: length-prefixed JSON header + raw array bytes over one TCP socket per worker.

Frame = [u32 big-endian header length][header JSON][buffer 0 bytes][buffer 1 bytes]...
The header lists each buffer as {"dtype": "float32"|"bfloat16"|"float16", "n": elements}. Weights and
gradients travel as flat contiguous arrays (the layout of models.step.get_flat / flat_grad), never as
pickled modules. A connection's `Buffers` make the per-update path allocation-free: float32 arrays are sent
straight from the caller's tensor and received in place into buffers that live as long as the connection.

Message kinds (header["kind"]):
    hello  worker -> driver   {worker, attempt, partitions}                      no buffers
    work   driver -> worker   {step, phase, g_version, d_version}               [G weights]? [D weights]?
    result worker -> driver   {step, phase, worker, stats, timing}             [mean gradient]
    stop   driver -> worker   {}                                               no buffers
"""

import json
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

_LEN = struct.Struct(">I")
MAX_HEADER = 1 << 20
EXCHANGE_DTYPES = ("float32", "bfloat16", "float16")


class ProtocolError(ConnectionError):
    """The peer closed the socket or sent a malformed frame."""


@dataclass
class Message:
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    arrays: list[torch.Tensor] = field(default_factory=list)   # flat 1-D tensors


class Buffers:
    """One connection's reusable memory: receive slots (a frame's j-th array lands in slot j, grown when too
    small) and send scratch for the 16-bit exchange dtypes. An array it returns is valid until the next frame."""

    def __init__(self) -> None:
        self._recv: list[bytearray] = []
        self._f32: list[torch.Tensor] = []                    # float32 copies of received 16-bit arrays
        self._send: dict[tuple[int, str], torch.Tensor] = {}

    def recv_slot(self, j: int, nbytes: int) -> memoryview:
        while len(self._recv) <= j:
            self._recv.append(bytearray())
        if len(self._recv[j]) < nbytes:
            self._recv[j] = bytearray(nbytes)
        return memoryview(self._recv[j])[:nbytes]

    def float32_slot(self, j: int, n: int) -> torch.Tensor:
        while len(self._f32) <= j:
            self._f32.append(torch.empty(0))
        if self._f32[j].numel() < n:
            self._f32[j] = torch.empty(n)
        return self._f32[j][:n]

    def send_slot(self, j: int, n: int, dtype: str) -> torch.Tensor:
        buf = self._send.get((j, dtype))
        if buf is None or buf.numel() < n:
            buf = self._send[(j, dtype)] = torch.empty(n, dtype=getattr(torch, dtype))
        return buf[:n]


def encode_array(flat: torch.Tensor, dtype: str, scratch: torch.Tensor | None = None
                 ) -> tuple[dict[str, Any], memoryview]:
    """A flat tensor -> (buffer descriptor, raw bytes) in the exchange dtype (bf16 sent as its 16 raw bits).

    A contiguous float32 CPU tensor sent as float32 is not copied; other conversions write into `scratch`
    (the right dtype and size) when given.
    """
    if dtype not in EXCHANGE_DTYPES:
        raise ValueError(f"spark.exchange_dtype: expected one of {EXCHANGE_DTYPES}, got {dtype!r}")
    src = flat.detach().reshape(-1)
    target = getattr(torch, dtype)
    if scratch is not None and (src.dtype != target or src.device.type != "cpu"):
        t = scratch.copy_(src)
    else:
        t = src.to("cpu", target).contiguous()
    raw = t.view(torch.int16) if dtype == "bfloat16" else t
    return {"dtype": dtype, "n": int(t.numel())}, memoryview(raw.numpy()).cast("B")


def decode_array(desc: dict[str, Any], raw: bytearray | memoryview, out: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of encode_array; always float32 (averaging happens in full precision). float32 bytes are viewed,
    not copied; 16-bit ones are widened into `out` (float32, n elements) when given."""
    dtype, n = desc["dtype"], int(desc["n"])
    if dtype == "bfloat16":
        t = torch.frombuffer(raw, dtype=torch.int16, count=n).view(torch.bfloat16)
    elif dtype in ("float32", "float16"):
        t = torch.frombuffer(raw, dtype=getattr(torch, dtype), count=n)
    else:
        raise ProtocolError(f"unknown buffer dtype {dtype!r}")
    if dtype == "float32":
        return t
    return out.copy_(t) if out is not None else t.float()


def send_message(sock: socket.socket, msg: Message, dtype: str = "float32", buffers: Buffers | None = None) -> int:
    """Writes one frame; returns bytes sent. `buffers`: the connection's scratch for 16-bit conversions."""
    descs, raws = [], []
    for j, a in enumerate(msg.arrays):
        scratch = buffers.send_slot(j, a.numel(), dtype) if buffers is not None and dtype != "float32" else None
        d, r = encode_array(a, dtype, scratch)
        descs.append(d)
        raws.append(r)
    header = json.dumps({"kind": msg.kind, "meta": msg.meta, "buffers": descs}).encode()
    sock.sendall(_LEN.pack(len(header)) + header)
    for r in raws:
        sock.sendall(r)
    return _LEN.size + len(header) + sum(len(r) for r in raws)


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    _recv_into(sock, memoryview(buf))
    return buf


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    n, got = len(view), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ProtocolError(f"connection closed after {got} of {n} bytes")
        got += k


def recv_message(sock: socket.socket, buffers: Buffers | None = None) -> Message:
    """Reads one frame. With `buffers`, arrays are received in place into the connection's slots (views that
    the next frame on this connection overwrites); without, into fresh memory."""
    (hlen,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    if hlen > MAX_HEADER:
        raise ProtocolError(f"frame header of {hlen} bytes exceeds {MAX_HEADER}; not a DFAGD peer?")
    header = json.loads(_recv_exact(sock, hlen))
    arrays = []
    for j, desc in enumerate(header["buffers"]):
        n = int(desc["n"])
        nbytes = n * (4 if desc["dtype"] == "float32" else 2)
        if buffers is None:
            arrays.append(decode_array(desc, _recv_exact(sock, nbytes)))
            continue
        view = buffers.recv_slot(j, nbytes)
        _recv_into(sock, view)
        out = buffers.float32_slot(j, n) if desc["dtype"] != "float32" else None
        arrays.append(decode_array(desc, view, out))
    return Message(header["kind"], header.get("meta", {}), arrays)


def connect(host: str, port: int, timeout_s: float = 60.0) -> socket.socket:
    """Connects to the driver's reduction server, retrying until timeout_s (the driver may still be binding)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=10.0)
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            if time.monotonic() > deadline:
                raise ConnectionError(f"DFAGD worker cannot reach the driver at {host}:{port} "
                                      f"(spark.driver_host must be reachable from executors): {exc}") from exc
            time.sleep(0.2)


def mean_of(contributions: list[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
    """Average of per-worker mean gradients (equal slice sizes => the mean over the global batch), into `out`
    when given (same size; it must not be one of the contributions)."""
    if not contributions:
        raise ValueError("no gradient contributions to average")
    out = contributions[0].clone() if out is None else out.copy_(contributions[0])
    for c in contributions[1:]:
        out += c
    return out.div_(len(contributions))


def array_from_numpy(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32).reshape(-1))
