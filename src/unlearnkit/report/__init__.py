"""The self-contained HTML report of a bench or forget run (``report.html``)."""

from .html import item_hash, report_from_dir, write_report

__all__ = ["item_hash", "report_from_dir", "write_report"]
