"""The coarse stage's integer kernel: every item's int8 code times the user's code, by onnxruntime.

numpy's `int8 @ float` converts the whole matrix to float on every call; onnxruntime's MatMulInteger reads
the codes as they are (MLAS u8 x s8 kernel). The items are the left operand, row-major (N, P) uint8, and
the user the right one, (P, 1) int8: the kernel then streams the item rows once against a tiny packed
right operand. With the user as the left (1, P) operand and the codes as (P, N), the layout this kernel
had before, MLAS packed all N x P codes again on every call: at 100k items x 96 that took 1.33 ms warm
against 0.74 ms this way (docs/results.md, `python -m simulation.benchmarks.bench_int8_kernels`).

MatMulInteger's fast path wants an unsigned left operand without a zero point, so an item code c in
[-127, 127] is stored as c + 128 in [1, 255] (its bit pattern with the top bit flipped); the shift adds
128 * sum_k q_k to every item's dot, one number per request, taken off after. The user code q is 7-bit,
in [-63, 63], which keeps the AVX2 kernel exact: it adds pairs of u8 x s8 products in saturating int16,
and 2 * 255 * 63 = 32,130 < 32,767. The kernel writes its int32 dots into a buffer the caller owns
(IOBinding), so a request allocates nothing of catalogue size; they are turned into float scores in
place. The graph is 158 bytes of ONNX, kept here so that the device needs no file and no `onnx` package
for it (tests/client/test_item_index.py rebuilds it with onnx.helper and checks it is the same graph).
"""

from __future__ import annotations

import base64

import numpy as np
import onnxruntime as ort

from shared.errors import DataError

# inputs items_u8 (N, P) uint8 and user_s8 (P, 1) int8; output dots (N, 1) int32 = items_u8 @ user_s8
COARSE_DOTS_ONNX = base64.b64decode(
    "CAgSB2ZlZGhvbWU6igEKKAoIaXRlbXNfdTgKB3VzZXJfczgSBGRvdHMiDU1hdE11bEludGVnZXISC2NvYXJzZV9kb3RzWhwKCGl0"
    "ZW1zX3U4EhAKDggCEgoKAxIBTgoDEgFQWhoKB3VzZXJfczgSDwoNCAMSCQoDEgFQCgIIAWIXCgRkb3RzEg8KDQgGEgkKAxIBTgoC"
    "CAFCBAoAEBE="
)
USER_LEVELS = 63  # the user code is q in [-63, 63]
ITEM_SHIFT = 128  # an item code c is stored as c + 128
CAST_CHUNK = 65_536  # dots turned into float scores this many at a time
TRANSPOSE_CHUNK = 65_536  # items converted to the kernel's layout at a time (no full-size temporary)


def item_major_u8(codes: np.ndarray) -> np.ndarray:
    """The kernel's layout of (P, N) int8 codes (a release's `item_codes.npy`, or memory-mapped): (N, P)
    uint8 holding c + 128, converted a chunk of items at a time."""
    if codes.dtype != np.int8 or codes.ndim != 2:
        raise DataError(f"item codes must be (P, N) int8, got {codes.dtype} {codes.shape}")
    out = np.empty((codes.shape[1], codes.shape[0]), dtype=np.uint8)
    for lo in range(0, codes.shape[1], TRANSPOSE_CHUNK):
        piece = out[lo : lo + TRANSPOSE_CHUNK]
        piece[...] = codes[:, lo : lo + TRANSPOSE_CHUNK].T.view(np.uint8)
        np.bitwise_xor(piece, np.uint8(ITEM_SHIFT), out=piece)
    return out


def quantize_user(projected: np.ndarray) -> tuple[np.ndarray, float]:
    """(user_s8 (P, 1) int8, scale): projected ~ user_s8 * scale, 7-bit symmetric."""
    peak = float(np.abs(projected).max()) if projected.size else 0.0
    scale = peak / USER_LEVELS if peak > 0 else 1.0
    q = np.clip(np.rint(projected / scale), -USER_LEVELS, USER_LEVELS)
    return q.astype(np.int8)[:, None], scale


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
        user_s8: np.ndarray,
        user_scale: float,
        items_u8: np.ndarray,
        code_scales: np.ndarray,
        out: np.ndarray,
    ) -> np.ndarray:
        """(N,) float32 ~ <Q^T u, Q^T v_j> for the N items of one block (item_major_u8 codes, (N, P)),
        written into `out`, an (N,) int32 or float32 buffer (returned as its float32 view)."""
        if items_u8.dtype != np.uint8 or not items_u8.flags.c_contiguous:
            raise DataError("item codes must be the kernel's contiguous (N, P) uint8 layout")
        if out.shape != (items_u8.shape[0],) or out.itemsize != 4 or not out.flags.c_contiguous:
            raise DataError("out must be a contiguous 4-byte buffer with one entry per item")
        dots = out.view(np.int32)
        binding = self.session.io_binding()
        binding.bind_cpu_input("items_u8", items_u8)
        binding.bind_cpu_input("user_s8", user_s8)
        binding.bind_output("dots", "cpu", 0, np.int32, [len(dots), 1], dots.ctypes.data)
        self.session.run_with_iobinding(binding)
        shift = np.float32(ITEM_SHIFT * int(user_s8.astype(np.int64).sum()))
        scores = out.view(np.float32)
        # int32 -> float32 in place, a piece at a time through a small buffer: numpy would copy the whole
        # input first if asked to cast into memory that aliases it (4 MiB more at 1M items). The dots are
        # below 2^24 in magnitude (255 * 63 * P, P <= 128), so float32 holds them and the shift exactly.
        for lo in range(0, len(dots), CAST_CHUNK):
            piece = self._piece[: min(CAST_CHUNK, len(dots) - lo)]
            np.copyto(piece, dots[lo : lo + CAST_CHUNK], casting="unsafe")
            np.subtract(piece, shift, out=piece)
            np.multiply(piece, code_scales[lo : lo + CAST_CHUNK], out=scores[lo : lo + CAST_CHUNK])
        scores *= np.float32(user_scale)
        return scores
