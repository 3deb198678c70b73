"""Re-export of :mod:`bilevel._validation` for the modules that import it from here."""

from bilevel._validation import check_count, check_positive, check_projection, check_step_sizes

__all__ = ["check_count", "check_positive", "check_projection", "check_step_sizes"]
