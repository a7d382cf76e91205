"""Attack reports (docs/design/metrics.md): every figure of a run beside its undefended baseline."""

from clicooper.report.report import make_report, render_markdown, run_summary, train_baseline

__all__ = ["make_report", "render_markdown", "run_summary", "train_baseline"]
