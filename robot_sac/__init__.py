"""robot_sac: Soft Actor-Critic for robots that learn while they work.

The core library: the SAC math (:mod:`robot_sac.distributions`, :mod:`robot_sac.networks`,
:mod:`robot_sac.sac`), the replay buffer, policy version files, the task and wire schemas and
the command line. It imports no web framework, simulator or Gymnasium.
"""

__version__ = "0.1.0"
