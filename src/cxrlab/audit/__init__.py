"""Data audit: leakage (duplicates, patients across splits) and shortcut detection (metadata-only and
image-statistics baselines) before and after training. See docs/trust.md."""

from cxrlab.audit.core import audit_dataset, make_warnings, quick_audit
from cxrlab.audit.report import write_audit

__all__ = ["audit_dataset", "make_warnings", "quick_audit", "write_audit"]
