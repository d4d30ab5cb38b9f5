"""Metrics (pure), the metric-table report, verify and best-of-N."""

from .report import evaluate, format_report

__all__ = ["evaluate", "format_report"]
