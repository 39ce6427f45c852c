"""`retention report` and `retention customers --at-risk` as Rich tables, JSON and HTML.

JSON keys are a contract (docs/reports.md lists them; ``report_version`` changes
when one is renamed or removed).  The HTML report is one self-contained file: inline
CSS and hand-drawn inline SVG charts, no script and no external resource, so it
reads the same offline, in a mail attachment or from a file share.
"""

from worker.report.as_json import at_risk_json, dumps, report_json
from worker.report.html_page import report_html
from worker.report.tables import at_risk_table, report_tables

__all__ = ["at_risk_json", "at_risk_table", "dumps", "report_html", "report_json", "report_tables"]
