"""Simulated robots: Gymnasium tasks and the client loop that drives them through the service.

Imported as ``robot_sac.sim``. Depends on the core only through ``robot_sac.client`` and
``robot_sac.schemas``: a simulated robot is a robot.
"""
