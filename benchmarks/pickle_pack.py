"""Pack a pickle of float32 arrays (the FVD detector's weights) smaller, losslessly, for a GPU call.

One device call carries at most 64 MiB. The I3D file (`out/gpu/i3d-kinetics-400.ckpt`, 50.8 MB, a
pickle of numpy arrays) does not fit beside the checkout and a model's weights, and plain
compressors gain ~0 on float32 bytes. Here every large byte payload of the pickle (the arrays'
data) is split into its four byte planes before lzma: the planes holding sign and exponent
compress well, the mantissa planes do not, and the file shrinks to ~43 MB (the checkout without the
tracked PNGs and the packaged model, this, the held-out prompt table and a 32x128^2 model's fp16
weights then fit one call). `unpack` restores the file byte for byte and checks its SHA-256.
    python benchmarks/pickle_pack.py pack out/gpu/i3d-kinetics-400.ckpt out/i3dp/i3d.pack
    python3 benchmarks/pickle_pack.py unpack out/i3dp/i3d.pack /tmp/i3d-kinetics-400.ckpt   # on the GPU host
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import pickletools
import struct
import sys
from pathlib import Path

import numpy as np

MAGIC = b"HPDM-PICKLE-PACK-1\n"
HEADER = {"BINBYTES": 5, "SHORT_BINBYTES": 2, "BINBYTES8": 9}      # opcode byte + length field
MIN_PAYLOAD = 1024


def payload_spans(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of every byte payload of the pickle long enough, and a multiple of 4, to be array data."""
    spans = []
    for op, arg, pos in pickletools.genops(data):
        if op.name in HEADER and len(arg) >= MIN_PAYLOAD and len(arg) % 4 == 0:
            spans.append((pos + HEADER[op.name], len(arg)))
    return spans


def _planes(data: bytes, spans, forward: bool) -> bytes:
    """The data with every span's 4-byte words split into byte planes (forward) or put back together."""
    out = bytearray(data)
    for off, n in spans:
        a = np.frombuffer(data, np.uint8, n, off)
        a = a.reshape(-1, 4).T if forward else a.reshape(4, -1).T
        out[off:off + n] = a.tobytes()
    return bytes(out)


def pack(data: bytes) -> bytes:
    """The packed form of a pickle: magic, a JSON header (spans, size, SHA-256), then lzma of the planes."""
    spans = payload_spans(data)
    head = json.dumps({"spans": spans, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + lzma.compress(_planes(data, spans, True), preset=6)


def unpack(blob: bytes) -> bytes:
    """The original bytes of a `pack`ed file; ValueError if it is not one or does not check out."""
    if not blob.startswith(MAGIC):
        raise ValueError("not a file written by pickle_pack.py pack")
    at = len(MAGIC)
    (n,) = struct.unpack("<I", blob[at:at + 4])
    head = json.loads(blob[at + 4:at + 4 + n])
    data = _planes(lzma.decompress(blob[at + 4 + n:]), head["spans"], False)
    if len(data) != head["size"] or hashlib.sha256(data).hexdigest() != head["sha256"]:
        raise ValueError("the unpacked bytes do not match the packed file's SHA-256: the pack is damaged")
    return data


def main(argv=None) -> int:
    """pack SRC DST | unpack SRC DST, each written atomically."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from hpdm_cli.io import atomic_write_bytes
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("pack", "unpack"))
    ap.add_argument("src")
    ap.add_argument("dst")
    a = ap.parse_args(argv)
    data = Path(a.src).read_bytes()
    try:
        out = pack(data) if a.mode == "pack" else unpack(data)
    except (ValueError, lzma.LZMAError, struct.error) as e:      # not a pickle, or a damaged pack
        raise SystemExit(f"{a.src}: {e}") from None
    atomic_write_bytes(a.dst, out)
    print(f"{a.mode}ed {a.src} ({len(data)} bytes) -> {a.dst} ({len(out)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
