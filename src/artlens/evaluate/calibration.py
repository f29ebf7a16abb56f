"""Calibration numbers of a report: expected calibration error and the reliability-diagram bins.

They live in `artlens.metrics` (training reports the same numbers); this module keeps the names
the evaluate package has always exposed.
"""

from __future__ import annotations

from artlens.metrics import DEFAULT_BINS, expected_calibration_error, reliability_bins

__all__ = ["DEFAULT_BINS", "expected_calibration_error", "reliability_bins"]
