"""Transfer and multi-task reinforcement learning, the library behind the course."""

__version__ = "0.1.0"
