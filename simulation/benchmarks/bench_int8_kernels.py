"""Which kernel scores int8 item codes fastest on one thread (the choice in client/device/int8_kernel.py).

    python -m simulation.benchmarks.bench_int8_kernels --items 100000 1000000 --dim 64 [--cold]

Random int8 codes (P, N) and one user code; each candidate computes the N dot products (the same integers
where it is exact); median and p90 wall-clock and thread CPU milliseconds over --repeats calls, with
`--cold` after a 64 MiB pass over other memory before each call (so the codes come from DRAM, as they do
on a device between homepage requests):
- numpy: int8 rows converted to float32 16,384 at a time, then a float matrix-vector product;
- MatMulInteger with the user as the left operand, (1, P) x (P, N): s8 x s8, u8 x s8 without and with a
  zero-point input (onnxruntime);
- MatMulInteger with the items as the left operand, (N, P) u8 x (P, 1) s8;
- DynamicQuantizeMatMul and MatMulIntegerToFloat (onnxruntime contrib ops, float user, scales fused);
- the project's kernel (int8_kernel.CoarseKernel: items (N, P) u8 x user (P, 1) s8, the shift and the
  scales applied after, float scores out).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from client.device.int8_kernel import CoarseKernel, item_major_u8, quantize_user

T = TensorProto


def session(
    node: helper.NodeProto, inputs: list[tuple[str, int, list[str | int | None]]], output: tuple[str, int]
) -> ort.InferenceSession:
    """A one-node onnxruntime session, one thread."""
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [node], "g", [vi(n, t, s) for n, t, s in inputs], [vi(output[0], output[1], [None, None])]
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def timed(call: Callable[[], object], repeats: int, *, cold: bool = False) -> dict[str, float]:
    """Median and p90 of wall-clock and of this thread's CPU milliseconds per call (after a warm-up);
    `cold`: a 64 MiB pass over other memory before each call, not timed."""
    call()
    wall, cpu = [], []
    other = np.zeros(64 * 2**20, dtype=np.uint8) if cold else None
    for _ in range(repeats):
        if other is not None:
            np.add(other, 1, out=other)
        start, start_cpu = time.perf_counter(), time.thread_time()
        call()
        cpu.append(time.thread_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    figures = {}
    for name, values in (("wall", wall), ("cpu", cpu)):
        ms = np.array(values) * 1e3
        figures[f"{name}_median_ms"] = round(float(np.median(ms)), 2)
        figures[f"{name}_p90_ms"] = round(float(np.percentile(ms, 90)), 2)
    return figures


def candidates(n: int, p: int) -> dict[str, Callable[[], object]]:
    rng = np.random.default_rng(0)
    codes = rng.integers(-127, 128, size=(p, n), dtype=np.int8)
    user = rng.normal(size=p).astype(np.float32)
    user_s8, user_scale = quantize_user(user)  # (P, 1) int8 in [-63, 63]
    user_u8 = (user_s8[:, 0].astype(np.int16) + 64).astype(np.uint8)[None]  # (1, P), shifted to unsigned
    scales, out = np.ones(n, dtype=np.float32), np.empty(n, dtype=np.float32)
    rows, items_u8 = np.ascontiguousarray(codes.T), item_major_u8(codes)
    mmi = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    mmi_zp = helper.make_node("MatMulInteger", ["a", "b", "az"], ["y"])
    s8s8 = session(mmi, [("a", T.INT8, [1, p]), ("b", T.INT8, [p, None])], ("y", T.INT32))
    u8s8 = session(mmi, [("a", T.UINT8, [1, p]), ("b", T.INT8, [p, None])], ("y", T.INT32))
    u8s8_zp = session(
        mmi_zp, [("a", T.UINT8, [1, p]), ("b", T.INT8, [p, None]), ("az", T.UINT8, [])], ("y", T.INT32)
    )
    items_left = session(mmi, [("a", T.UINT8, [None, p]), ("b", T.INT8, [p, 1])], ("y", T.INT32))
    dqmm = session(
        helper.make_node("DynamicQuantizeMatMul", ["a", "b", "bs"], ["y"], domain="com.microsoft"),
        [("a", T.FLOAT, [1, p]), ("b", T.INT8, [p, None]), ("bs", T.FLOAT, [None])],
        ("y", T.FLOAT),
    )
    mitf = session(
        helper.make_node("MatMulIntegerToFloat", ["a", "b", "as", "bs"], ["y"], domain="com.microsoft"),
        [("a", T.UINT8, [1, p]), ("b", T.INT8, [p, None]), ("as", T.FLOAT, [1]), ("bs", T.FLOAT, [None])],
        ("y", T.FLOAT),
    )
    kernel = CoarseKernel(1)

    def numpy_chunks() -> np.ndarray:
        dots = np.empty(n, dtype=np.float32)
        for lo in range(0, n, 16_384):
            dots[lo : lo + 16_384] = rows[lo : lo + 16_384].astype(np.float32) @ user
        return dots

    return {
        "numpy int8->float32 chunks": numpy_chunks,
        "MatMulInteger s8 x s8": lambda: s8s8.run(None, {"a": user_s8.T.copy(), "b": codes}),
        "MatMulInteger u8 x s8": lambda: u8s8.run(None, {"a": user_u8, "b": codes}),
        "MatMulInteger u8 x s8, zero point": lambda: u8s8_zp.run(
            None, {"a": user_u8, "b": codes, "az": np.array(64, dtype=np.uint8)}
        ),
        "MatMulInteger items (N, P) u8 x user (P, 1) s8": lambda: items_left.run(
            None, {"a": items_u8, "b": user_s8}
        ),
        "DynamicQuantizeMatMul": lambda: dqmm.run(None, {"a": user[None], "b": codes, "bs": scales}),
        "MatMulIntegerToFloat": lambda: mitf.run(
            None, {"a": user_u8, "b": codes, "as": np.array([user_scale], dtype=np.float32), "bs": scales}
        ),
        "CoarseKernel (items u8 x user s8, shift and scales, float out)": lambda: kernel.dots(
            user_s8, user_scale, items_u8, scales, out=out
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--cold", action="store_true", help="evict the caches before each call")
    args = parser.parse_args(argv)
    results = {
        f"{n}_items": {
            name: timed(call, args.repeats, cold=args.cold) for name, call in candidates(n, args.dim).items()
        }
        for n in args.items
    }
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
