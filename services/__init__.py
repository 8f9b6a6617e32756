"""The processes of robot_sac: ``inference`` (the FastAPI service) and ``learner``.

Imported as ``robot_sac.services``; they depend on the core, never the other way round.
"""
