"""Video of a simulated robot: frames from an env's ``rgb_array`` render, written as MP4 or GIF.

:class:`FrameRecorder` keeps the frames of the first few episodes an env plays (one after each
reset, one after each step), so a scoring loop that knows nothing of video records as it scores;
:func:`write_video` encodes them with imageio (MP4 through ``imageio-ffmpeg``, which ships its
own ffmpeg binary; GIF through Pillow). Both come with the ``video`` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from robot_sac.sim.envs import PANDA_TASKS

# MP4 encoders want sizes that are multiples of 16; these keep the file small and the arm visible.
DEFAULT_WIDTH, DEFAULT_HEIGHT = 480, 320
# panda-gym's camera, closer than its default (which leaves the arm small in the frame): the
# whole arm, the table's front edge and the goals in view.
PANDA_CAMERA = {
    "render_distance": 1.2,
    "render_target_position": (-0.25, 0.0, 0.25),
    "render_yaw": 50.0,
    "render_pitch": -20.0,
}


def render_kwargs(
    env_id: str, width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT
) -> dict[str, Any]:
    """The ``make_env`` keywords that make ``env_id`` render RGB frames (of that size where the
    library takes one: panda-gym does; other envs render at their own size)."""
    kwargs: dict[str, Any] = {"render_mode": "rgb_array"}
    if env_id in PANDA_TASKS or env_id.startswith("Panda"):
        kwargs.update(render_width=width, render_height=height, **PANDA_CAMERA)
        kwargs["render_target_position"] = np.array(PANDA_CAMERA["render_target_position"])
    return kwargs


class RenderError(RuntimeError):
    """The env did not give an RGB frame."""


class FrameRecorder(gym.Wrapper):  # type: ignore[type-arg]
    """Keeps ``env.render()``'s frame after each reset and each step of the first ``episodes``
    episodes; ``frames`` holds them, ``episode_frames`` how many each recorded episode has.

    The wrapped env must have been made with ``render_mode="rgb_array"``. Rendering does not
    change the simulation: the same seeds and actions give the same episodes with or without it.
    """

    def __init__(self, env: gym.Env, episodes: int) -> None:  # type: ignore[type-arg]
        super().__init__(env)
        self.episodes = episodes
        self.frames: list[np.ndarray] = []
        self.episode_frames: list[int] = []
        self._resets = 0

    @property
    def recording(self) -> bool:
        """Whether the episode being played is one of the first ``episodes``."""
        return 0 < self._resets <= self.episodes

    def _capture(self) -> None:
        try:
            frame = self.env.render()
        except Exception as exc:  # a missing renderer (pygame for classic control), ...
            raise RenderError(
                f"{self.spec.id if self.spec else 'the env'} cannot render: {exc}"
            ) from exc
        if not isinstance(frame, np.ndarray) or frame.ndim != 3:
            raise RenderError(f"the env rendered {type(frame).__name__}, not an RGB frame")
        self.frames.append(np.ascontiguousarray(frame[..., :3], dtype=np.uint8))
        self.episode_frames[-1] += 1

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        result = self.env.reset(**kwargs)
        self._resets += 1
        if self.recording:
            self.episode_frames.append(0)
            self._capture()
        return result

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        result = self.env.step(action)
        if self.recording:
            self._capture()
        return result


def write_video(path: str | Path, frames: list[np.ndarray], fps: float) -> None:
    """Encode ``frames`` (H, W, 3 uint8, one size) at ``fps``: MP4 (H.264) or, for a ``.gif``
    path, an endlessly looping GIF."""
    import imageio.v2 as imageio

    if not frames:
        raise ValueError("no frames to write")
    path = Path(path)
    if path.suffix.lower() == ".gif":
        # GIF delays are in hundredths of a second; Pillow takes the duration in milliseconds
        images: list[Any] = list(frames)  # imageio's annotation wants a list of array-likes
        imageio.mimsave(path, images, duration=1000.0 / fps, loop=0)
        return
    # macro_block_size=1: keep the size rendered (DEFAULT_WIDTH and DEFAULT_HEIGHT are multiples
    # of 16, as H.264 prefers; yuv420p needs even sizes, which the envs render)
    writer = imageio.get_writer(
        path, fps=fps, codec="libx264", quality=7, macro_block_size=1, pixelformat="yuv420p"
    )
    try:
        for frame in frames:
            writer.append_data(frame)
    finally:
        writer.close()
