"""The coarse stage's integer kernel: item codes (int8) times a user code, read directly by onnxruntime.

numpy's `int8 @ float` converts the whole matrix to float on every call; onnxruntime's MatMulInteger reads
the int8 codes as they are (MLAS u8 x s8 kernel, one thread measured at ~3-4 ms for 1M items x 64 on the
project's 2-core AVX2 machine; the signed x signed variant has no fast kernel and takes ~130 ms).

MatMulInteger's fast path wants an unsigned left operand without a zero point (a zero-point input was
measured 4x slower), so the user code is 7-bit signed shifted to unsigned: a = q + 64 with q in [-63, 63],
a in [1, 127], and the shift is taken off again with a per-item offset 64 * sum_k codes[k, j] computed once
per item. 7 bits also keep the AVX2 kernel exact: it adds pairs of u8 x s8 products in saturating int16,
and 2 * 127 * 127 = 32,258 < 32,767. The graph below is 378 bytes of ONNX, kept here so that the device
needs no file and no `onnx` package for it (tests/client/test_item_index.py rebuilds it with onnx.helper
and checks it is the same graph).
"""

from __future__ import annotations

import base64

import numpy as np
import onnxruntime as ort

# inputs user_u8 (1, P) uint8, codes (P, N) int8, offsets (N,) int32, code_scales (N,) float32,
# user_scale () float32; output scores (1, N) = ((user_u8 @ codes) - offsets) * code_scales * user_scale
COARSE_DOTS_ONNX = base64.b64decode(
    "CAgSB2ZlZGhvbWU65gIKLAoHdXNlcl91OAoFY29kZXMSC2RvdHNfb2Zmc2V0Ig1NYXRNdWxJbnRlZ2VyCiEKC2RvdHNfb2Zmc2V0"
    "CgdvZmZzZXRzEgRkb3RzIgNTdWIKIQoEZG90cxIIZG90c19mMzIiBENhc3QqCQoCdG8YAaABAgokCghkb3RzX2YzMgoLY29kZV9z"
    "Y2FsZXMSBnNjYWxlZCIDTXVsCiEKBnNjYWxlZAoKdXNlcl9zY2FsZRIGc2NvcmVzIgNNdWwSC2NvYXJzZV9kb3RzWhoKB3VzZXJf"
    "dTgSDwoNCAISCQoCCAEKAxIBUFoZCgVjb2RlcxIQCg4IAxIKCgMSAVAKAxIBTloWCgdvZmZzZXRzEgsKCQgGEgUKAxIBTloaCgtj"
    "b2RlX3NjYWxlcxILCgkIARIFCgMSAU5aFAoKdXNlcl9zY2FsZRIGCgQIARIAYhkKBnNjb3JlcxIPCg0IARIJCgIIAQoDEgFOQgQK"
    "ABAR"
)
USER_LEVELS = 63  # the user code is q in [-63, 63]
USER_SHIFT = 64  # ... sent as q + 64 in [1, 127]


def code_offsets(codes: np.ndarray) -> np.ndarray:
    """(N,) int32: USER_SHIFT * sum_k codes[k, j], what the shifted user code adds to item j's dot."""
    return (USER_SHIFT * codes.sum(axis=0, dtype=np.int32)).astype(np.int32)


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

    def dots(
        self,
        user_u8: np.ndarray,
        user_scale: float,
        codes: np.ndarray,
        offsets: np.ndarray,
        code_scales: np.ndarray,
    ) -> np.ndarray:
        """(N,) float32 approximate <Q^T u, Q^T v_j> for the N items of one block of codes (P, N)."""
        (scores,) = self.session.run(
            None,
            {
                "user_u8": user_u8,
                "codes": codes,
                "offsets": offsets,
                "code_scales": code_scales,
                "user_scale": np.asarray(user_scale, dtype=np.float32),
            },
        )
        return np.asarray(scores[0])
