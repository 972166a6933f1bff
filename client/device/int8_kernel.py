"""The coarse stage's integer kernel: item codes (int8) times a user code, read directly by onnxruntime.

numpy's `int8 @ float` converts the whole matrix to float on every call; onnxruntime's MatMulInteger reads
the int8 codes as they are (MLAS u8 x s8 kernel). One thread, 1M items x 64, thread CPU time
(`python -m simulation.bench_int8_kernels`, docs/results.md): u8 x s8 4.0 ms, this kernel with its
offsets and scales 6.2 ms, numpy in float chunks 21.9 ms, s8 x s8 (no fast kernel) 120 ms.

MatMulInteger's fast path wants an unsigned left operand without a zero point (with a zero-point input
it took 13.5 ms; the contrib ops that fuse the scales, DynamicQuantizeMatMul and MatMulIntegerToFloat,
~19 ms), so the user code is 7-bit signed shifted to unsigned: a = q + 64 with q in [-63, 63], a in
[1, 127]; the shift is taken off again with a per-item offset 64 * sum_k codes[k, j] computed once per
item. 7 bits also keep the AVX2 kernel exact: it adds pairs of u8 x s8 products in saturating int16, and
2 * 127 * 127 = 32,258 < 32,767. The kernel writes its int32 dots into a buffer the caller owns
(IOBinding), so a request allocates nothing of catalogue size; the caller turns them into float scores in
place. The graph is 152 bytes of ONNX, kept here so that the device needs no file and no `onnx` package
for it (tests/client/test_item_index.py rebuilds it with onnx.helper and checks it is the same graph).
"""

from __future__ import annotations

import base64

import numpy as np
import onnxruntime as ort

from shared.errors import DataError

# inputs user_u8 (1, P) uint8 and codes (P, N) int8; output dots (1, N) int32 = user_u8 @ codes
COARSE_DOTS_ONNX = base64.b64decode(
    "CAgSB2ZlZGhvbWU6hAEKJQoHdXNlcl91OAoFY29kZXMSBGRvdHMiDU1hdE11bEludGVnZXISC2NvYXJzZV9kb3RzWhoKB3VzZXJf"
    "dTgSDwoNCAISCQoCCAEKAxIBUFoZCgVjb2RlcxIQCg4IAxIKCgMSAVAKAxIBTmIXCgRkb3RzEg8KDQgGEgkKAggBCgMSAU5CBAoA"
    "EBE="
)
USER_LEVELS = 63  # the user code is q in [-63, 63]
USER_SHIFT = 64  # ... sent as q + 64 in [1, 127]
CAST_CHUNK = 65_536  # dots turned into float scores this many at a time


def code_offsets(codes: np.ndarray) -> np.ndarray:
    """(N,) int32: USER_SHIFT * sum_k codes[k, j], what the shifted user code adds to item j's dot."""
    offsets = codes.sum(axis=0, dtype=np.int32)
    offsets *= USER_SHIFT
    return offsets


def quantize_user(projected: np.ndarray) -> tuple[np.ndarray, float]:
    """(user_u8 (1, P) uint8, scale): projected ~ (user_u8 - 64) * scale, 7-bit symmetric."""
    peak = float(np.abs(projected).max()) if projected.size else 0.0
    scale = peak / USER_LEVELS if peak > 0 else 1.0
    q = np.clip(np.rint(projected / scale), -USER_LEVELS, USER_LEVELS)
    return (q + USER_SHIFT).astype(np.uint8)[None], scale


class CoarseKernel:
    """One onnxruntime session of the coarse graph; `dots` scores one block of item codes."""

    def __init__(self, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(COARSE_DOTS_ONNX, options, providers=["CPUExecutionProvider"])
        self._piece = np.empty(CAST_CHUNK, dtype=np.float32)

    def dots(
        self,
        user_u8: np.ndarray,
        user_scale: float,
        codes: np.ndarray,
        offsets: np.ndarray,
        code_scales: np.ndarray,
        out: np.ndarray,
    ) -> np.ndarray:
        """(N,) float32 ~ <Q^T u, Q^T v_j> for the N items of one block of codes (P, N), written into
        `out`, an (N,) int32 or float32 buffer (returned as its float32 view)."""
        if out.shape != (codes.shape[1],) or out.itemsize != 4 or not out.flags.c_contiguous:
            raise DataError("out must be a contiguous 4-byte buffer with one entry per item")
        dots = out.view(np.int32)
        binding = self.session.io_binding()
        binding.bind_cpu_input("user_u8", user_u8)
        binding.bind_cpu_input("codes", codes)
        binding.bind_output("dots", "cpu", 0, np.int32, [1, len(dots)], dots.ctypes.data)
        self.session.run_with_iobinding(binding)
        np.subtract(dots, offsets, out=dots)
        scores = out.view(np.float32)
        # int32 -> float32 in place, a piece at a time through a small buffer: numpy would copy the whole
        # input first if asked to cast into memory that aliases it (4 MiB more at 1M items)
        for lo in range(0, len(dots), CAST_CHUNK):
            piece = self._piece[: min(CAST_CHUNK, len(dots) - lo)]
            np.copyto(piece, dots[lo : lo + CAST_CHUNK], casting="unsafe")
            np.multiply(piece, code_scales[lo : lo + CAST_CHUNK], out=scores[lo : lo + CAST_CHUNK])
        scores *= np.float32(user_scale)
        return scores
