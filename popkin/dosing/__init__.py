"""Individual posteriors, targets, regimen search, recommendations."""
