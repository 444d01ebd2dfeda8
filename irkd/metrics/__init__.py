"""Framework-free IRSTD metrics (numpy and OpenCV only)."""

from irkd.metrics.irstd import (
    DEFAULT_ROC_THRESHOLDS,
    IRSTDMetrics,
    MatchResult,
    label_targets,
    match_targets,
)

__all__ = [
    "DEFAULT_ROC_THRESHOLDS",
    "IRSTDMetrics",
    "MatchResult",
    "label_targets",
    "match_targets",
]
