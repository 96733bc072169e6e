"""mattergen-lab: a re-implementation of MatterGen with an interactive design environment."""

__version__ = "0.1.0"
