"""HTML and PDF reports and their figures."""
