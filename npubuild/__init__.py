"""npubuild: from training data to Ethos-U firmware assets."""

__version__ = "0.1.0"
