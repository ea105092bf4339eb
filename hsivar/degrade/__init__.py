"""Degradation synthesis for the all-in-one protocol: the family table, the record, the protocol.

* :mod:`hsivar.degrade.families` — one function and one :class:`Family` row per task family
  (:data:`FAMILIES`), with levels, units and the protocol notes;
* :mod:`hsivar.degrade.record` — :class:`DegradationRecord`, what a degradation did;
* :mod:`hsivar.degrade.observation` — :class:`Observation`, what is known of how a cube was observed
  (masks, blur, sr scale, noise), from a record, a level, the cube itself or the user;
* :mod:`hsivar.degrade.protocol` — :func:`degrade`, mixtures, the training sampler, the seeded test
  protocol.

Task names and weights (the model's contract) are in :mod:`hsivar.tasks`; the classical baselines in
:mod:`hsivar.classical`.
"""

from hsivar.classical import missing_band_mask
from hsivar.degrade.families import (
    COMPLEX_SIGMAS,
    DEFAULT_TASKS,
    FAMILIES,
    IMPULSE_AMOUNTS,
    Family,
    ImagingStep,
    Level,
    family,
    weights_in,
)
from hsivar.degrade.observation import Observation
from hsivar.degrade.protocol import (
    ProtocolCase,
    case_level,
    degrade,
    degrade_for_test,
    degrade_mixture,
    observation_of_level,
    protocol_cases,
    sample_training_degradation,
    test_protocol,
)
from hsivar.degrade.record import DegradationRecord

__all__ = [
    "COMPLEX_SIGMAS",
    "DEFAULT_TASKS",
    "FAMILIES",
    "IMPULSE_AMOUNTS",
    "DegradationRecord",
    "Family",
    "Level",
    "ProtocolCase",
    "ImagingStep",
    "case_level",
    "degrade",
    "degrade_for_test",
    "degrade_mixture",
    "family",
    "missing_band_mask",
    "Observation",
    "observation_of_level",
    "protocol_cases",
    "sample_training_degradation",
    "test_protocol",
    "weights_in",
]
