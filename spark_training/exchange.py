"""The DFAGD wire protocol: length-prefixed JSON header + raw array bytes over one TCP socket per worker.

Frame = [u32 big-endian header length][header JSON][buffer 0 bytes][buffer 1 bytes]...
The header lists each buffer as {"dtype": "float32"|"bfloat16"|"float16", "n": elements}. Weights and
gradients travel as flat contiguous arrays (the layout of models.step.get_flat / flat_grad), never as
pickled modules, so a 16 MB update costs one memcpy on each side plus the transfer.

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


def encode_array(flat: torch.Tensor, dtype: str) -> tuple[dict[str, Any], memoryview]:
    """A flat tensor -> (buffer descriptor, raw bytes) in the exchange dtype (bf16 sent as its 16 raw bits)."""
    if dtype not in EXCHANGE_DTYPES:
        raise ValueError(f"spark.exchange_dtype: expected one of {EXCHANGE_DTYPES}, got {dtype!r}")
    t = flat.detach().reshape(-1).to("cpu", getattr(torch, dtype)).contiguous()
    raw = t.view(torch.int16) if dtype == "bfloat16" else t
    return {"dtype": dtype, "n": int(t.numel())}, memoryview(raw.numpy()).cast("B")


def decode_array(desc: dict[str, Any], raw: bytearray) -> torch.Tensor:
    """Inverse of encode_array; always returns float32 (averaging happens in full precision)."""
    dtype, n = desc["dtype"], int(desc["n"])
    if dtype == "bfloat16":
        t = torch.frombuffer(raw, dtype=torch.int16, count=n).view(torch.bfloat16)
    elif dtype in ("float32", "float16"):
        t = torch.frombuffer(raw, dtype=getattr(torch, dtype), count=n)
    else:
        raise ProtocolError(f"unknown buffer dtype {dtype!r}")
    return t.float() if dtype != "float32" else t


def send_message(sock: socket.socket, msg: Message, dtype: str = "float32") -> int:
    """Writes one frame; returns bytes sent."""
    descs, raws = [], []
    for a in msg.arrays:
        d, r = encode_array(a, dtype)
        descs.append(d)
        raws.append(r)
    header = json.dumps({"kind": msg.kind, "meta": msg.meta, "buffers": descs}).encode()
    sock.sendall(_LEN.pack(len(header)) + header)
    for r in raws:
        sock.sendall(r)
    return _LEN.size + len(header) + sum(len(r) for r in raws)


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ProtocolError(f"connection closed after {got} of {n} bytes")
        got += k
    return buf


def recv_message(sock: socket.socket) -> Message:
    (hlen,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    if hlen > MAX_HEADER:
        raise ProtocolError(f"frame header of {hlen} bytes exceeds {MAX_HEADER}; not a DFAGD peer?")
    header = json.loads(_recv_exact(sock, hlen))
    arrays = []
    for desc in header["buffers"]:
        itemsize = 4 if desc["dtype"] == "float32" else 2
        arrays.append(decode_array(desc, _recv_exact(sock, int(desc["n"]) * itemsize)))
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


def mean_of(contributions: list[torch.Tensor]) -> torch.Tensor:
    """Average of per-worker mean gradients (equal slice sizes => the mean over the global batch)."""
    if not contributions:
        raise ValueError("no gradient contributions to average")
    out = contributions[0].clone()
    for c in contributions[1:]:
        out += c
    return out.div_(len(contributions))


def array_from_numpy(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32).reshape(-1))
