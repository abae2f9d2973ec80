"""Sample-wise knowledge fusion: wrappers that re-weight, per sample, the distillation and the label terms of an inner
method (``kd``, ``dkd``, ``dist``), one file per policy family over a shared base:

- :mod:`~kdlab.methods.fusion.base`: the objective, the inner methods' per-sample forms (:data:`SAMPLE_FORMS`,
  :class:`SampleTerms`), the logged ratio statistics and :class:`SampleFusion`, the base of every policy;
- :mod:`~kdlab.methods.fusion.anl` (``anl_kd``, teacher annealing), :mod:`~kdlab.methods.fusion.ada` (``ada_kd``,
  the teacher's margin), :mod:`~kdlab.methods.fusion.wls` (``wls_kd``, weighted soft labels): fixed policies;
- :mod:`~kdlab.methods.fusion.learned` (:class:`RatioNet`, :class:`LearnedFusion`) and
  :mod:`~kdlab.methods.fusion.hypergradient` (:class:`HypergradientStep`, the one-step-unrolled hypergradient
  solver; :mod:`~kdlab.methods.fusion.jvp`, its cheaper exact batch-norm tangent): learned policies, trained on a
  held-out split; :mod:`~kdlab.methods.fusion.rw` (``rw_kd``) is one, ``tgeo_kd`` (:mod:`kdlab.methods.tgeo_kd`)
  the other.

Every public name of these modules is re-exported here (``from kdlab.methods.fusion import SampleFusion``).
"""

from __future__ import annotations

from kdlab.methods.fusion.ada import MarginFusion
from kdlab.methods.fusion.anl import AnnealedFusion
from kdlab.methods.fusion.base import CLASS_STATS_MAX, SAMPLE_FORMS, SampleFusion, SampleTerms
from kdlab.methods.fusion.hypergradient import HypergradientStep
from kdlab.methods.fusion.jvp import BatchNormJvp
from kdlab.methods.fusion.learned import LearnedFusion, RatioNet
from kdlab.methods.fusion.rw import ReweightFusion
from kdlab.methods.fusion.wls import WeightedSoftLabelFusion

__all__ = [
    "CLASS_STATS_MAX",
    "SAMPLE_FORMS",
    "AnnealedFusion",
    "BatchNormJvp",
    "HypergradientStep",
    "LearnedFusion",
    "MarginFusion",
    "RatioNet",
    "ReweightFusion",
    "SampleFusion",
    "SampleTerms",
    "WeightedSoftLabelFusion",
]
