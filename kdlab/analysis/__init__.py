"""The papers' analyses of trained runs (``kdlab analyze``): each returns a table and a figure.

- :func:`~kdlab.analysis.robustness.robustness`: top-1/top-5 under FGSM and PGD (TeKAP).
- :func:`~kdlab.analysis.calibration.calibration`: ECE, reliability diagram, NLL, student-teacher agreement.
- :func:`~kdlab.analysis.discrepancy.discrepancy`: student-teacher discrepancy by teacher correctness and the
  per-sample fusion ratios (TGeo-KD).
- :func:`~kdlab.analysis.transfer.transfer`: linear probe of the frozen student on another dataset (TeKAP).
- :func:`~kdlab.analysis.per_class.per_class`: per-class accuracy by many/medium/few-shot group (long-tailed data).

Open a run with :func:`~kdlab.analysis.common.open_run`, write a result with
:func:`~kdlab.analysis.common.write_result`.
"""

from __future__ import annotations

from kdlab.analysis.common import AnalysisError, AnalysisResult, OpenedRun, open_run, write_result

ANALYSES = ("robustness", "calibration", "discrepancy", "transfer", "per_class")
"""Names of the analyses, as ``kdlab analyze`` spells them."""

__all__ = ["ANALYSES", "AnalysisError", "AnalysisResult", "OpenedRun", "open_run", "write_result"]
