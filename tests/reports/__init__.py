"""Reports, audits and the dashboard."""
