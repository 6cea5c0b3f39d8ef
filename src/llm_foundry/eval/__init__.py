"""Evaluation: loss, perplexity and bits per byte."""

from .metrics import mean_loss, loss_metrics, evaluate_text

__all__ = ["mean_loss", "loss_metrics", "evaluate_text"]
