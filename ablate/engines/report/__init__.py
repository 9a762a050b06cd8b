"""Reports from a study's storage alone: the trials as tables (frame.py), statistics (stats.py), the analysis
(analysis.py), figures as a registry (figures.py), report.md (markdown.py), and build.py that writes them."""
