"""Reports from a study's storage alone: the trials as tables (frame.py), statistics (stats.py: arm summaries;
compare.py: Holm-corrected pairwise tests and the ANOVA; scaling.py: power-law fits), the analysis (analysis.py),
tables and figures (tables.py, figures.py, a registry), report.md (markdown.py), and build.py that writes them."""
