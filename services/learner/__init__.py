"""The asynchronous learner worker: ``robot_sac.services.learner.Learner``."""

from robot_sac.services.learner.learner import Learner

__all__ = ["Learner"]
