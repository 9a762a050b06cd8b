"""ablate: swap one slot of one vision backbone, train it fairly, count its cost, plot the comparison."""
__version__ = "0.1.0"
