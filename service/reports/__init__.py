"""Reports for platform and finance owners: escalations, costs, histograms, audits and the run report."""
