"""ablate: swap one slot of one vision backbone, train it fairly, count its cost, plot the comparison."""
__version__ = "0.1.0"

import warnings

# fvcore and timm call torch.jit.script at import time; the deprecation notice is not for our users
warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)
