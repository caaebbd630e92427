"""Attention-logit soft-capping in the Triton kernels (Gemma-2's attn_logit_softcapping).

Scores s = (q . k) * scale become softcap * tanh(s / softcap). The kernels keep scores in
log2 units for exp2, so with a cap they compute tanh(dot * (scale / softcap)) * (softcap *
log2(e)): the launcher passes those two factors (`softcap_factors`) in place of scale *
log2(e) and 0, and a constexpr SOFTCAP flag compiles the tanh in; without it the kernels are
unchanged.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


def softcap_factors(scale: float, softcap: float) -> tuple[float, float]:
    """(score factor, post-tanh factor) for the kernels: (scale * log2 e, 0) without a cap,
    (scale / softcap, softcap * log2 e) with one."""
    if not 0.0 <= softcap < float("inf"):
        raise ValueError(f"softcap must be finite and >= 0, got {softcap}")
    if softcap == 0:
        return scale * LOG2E, 0.0
    return scale / softcap, softcap * LOG2E


@triton.jit
def tanh(x):
    """float32 tanh from exp2 (the interpreter has no libdevice): an odd Taylor polynomial
    below |x| = 0.25, (1 - e^-2|x|) / (1 + e^-2|x|) above; absolute error about 1e-7."""
    a = tl.abs(x)
    a2 = a * a
    # x - x^3/3 + 2x^5/15 - 17x^7/315 + 62x^9/2835: the next term is < 1e-8 * a there.
    poly = -0.021869488536155203 * a2 + 0.05396825396825397
    poly = poly * a2 - 0.13333333333333333
    poly = poly * a2 + 0.3333333333333333
    small = a - a * a2 * poly
    t = tl.exp2(a * -2.8853900817779268)  # e^(-2a), in (0, 1]: no overflow
    large = tl.fdiv(1.0 - t, 1.0 + t)
    y = tl.where(a < 0.25, small, large)
    return tl.where(x < 0, -y, y)
