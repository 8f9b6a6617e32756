"""The inference service (FastAPI): ``robot_sac.services.inference.create_app``."""

from robot_sac.services.inference.app import create_app

__all__ = ["create_app"]
