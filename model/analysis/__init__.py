"""Know the data before training on it: distribution, unreadable images, label problems, duplicates,
outliers and the human baseline, in one HTML report and a JSON summary (``weather-al analyze``)."""

from model.analysis.inputs import AnalysisInput, read_input
from model.analysis.pipeline import AnalysisResult, analyze

__all__ = ["AnalysisInput", "AnalysisResult", "analyze", "read_input"]
