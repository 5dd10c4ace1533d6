"""HTML and PDF reports and their figures."""

from .dose_report import write_batch_recommendations, write_recommendation

__all__ = ["write_batch_recommendations", "write_recommendation"]
