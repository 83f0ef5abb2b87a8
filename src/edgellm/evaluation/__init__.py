"""Quality measurement: perplexity, agreement with a reference, classifier accuracy."""

from .agreement import AgreementResult
from .classify import ClassifyResult, accuracy
from .perplexity import PerplexityResult, evaluate_lm, windows

__all__ = ["AgreementResult", "ClassifyResult", "PerplexityResult", "accuracy", "evaluate_lm", "windows"]
