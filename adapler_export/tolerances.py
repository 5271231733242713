"""Every numeric tolerance, per precision, in one place (../shared/DESIGN.md §4).

- end to end (`parity.compare_backends`): |Δlogit|, keep-decision flip rate, label agreement. fp32 keeps
  every decision; fp16 may flip decisions whose score sits within rounding of the threshold (bounded,
  reported); int8 (quantised weights) is bounded loosely and reported;
- one segment against the PyTorch module it came from (polygraphy's comparator, absolute + relative);
- right after an export (`segments.export_segments`, `baseline.export_full_onnx`): max error relative to
  the largest reference value, on random inputs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Tolerances:
    max_abs_logit: float | None  # None: reported, not bounded
    mean_abs_logit: float
    max_flip_rate: float
    min_label_agreement: float
    segment_atol: float = 1e-4
    segment_rtol: float = 1e-4
    export_relative: float = 1e-3

    @classmethod
    def for_precision(cls, precision: str) -> "Tolerances":
        if precision == "fp32":
            return cls(max_abs_logit=1e-3, mean_abs_logit=1e-4, max_flip_rate=0.0, min_label_agreement=0.995)
        if precision == "fp16":
            return cls(max_abs_logit=None, mean_abs_logit=0.05, max_flip_rate=0.005, min_label_agreement=0.995,
                       segment_atol=2e-2, segment_rtol=2e-2, export_relative=5e-2)
        if precision == "int8":
            return cls(max_abs_logit=None, mean_abs_logit=0.3, max_flip_rate=0.05, min_label_agreement=0.97,
                       segment_atol=2e-2, segment_rtol=2e-2, export_relative=5e-2)
        raise ValueError(f"no tolerances for precision {precision!r} (fp32, fp16, int8)")

    def to_dict(self) -> dict:
        return asdict(self)
