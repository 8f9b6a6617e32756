"""Scripted experts for the Panda tasks: a stand-in for a teleoperator in simulation.

An expert maps the observation a robot sees (panda-gym's ``Dict`` observation flattened by
gymnasium's ``FlattenObservation``, as :func:`robot_sac.sim.envs.make_env` gives it) to an action
in the env's action space. It is stateless: it can take over at any step of an episode, as an
operator grabbing the controls would, and hand back at any step.

The flattened layout: ``FlattenObservation`` concatenates the ``Dict``'s keys in sorted order,
``achieved_goal`` (3), ``desired_goal`` (3), ``observation``; panda-gym's ``observation`` is the
robot's (end-effector position, then velocity; the fingers' width only when the gripper is free,
which it is not in Reach and Push) followed by the task's (Push: the object's position, Euler
rotation, linear and angular velocity). Actions are end-effector displacements in [-1, 1] per
axis, multiplied by 0.05 m (``Panda.ee_displacement_to_target_arm_angles``); the table top is
z = 0 and panda-gym clips the target height at 0.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

# Slices of the flattened observation (the same in Reach and Push up to the end-effector's).
ACHIEVED_GOAL = slice(0, 3)  # Reach: the end-effector's position; Push: the object's
DESIRED_GOAL = slice(3, 6)
EE_POSITION = slice(6, 9)
EE_VELOCITY = slice(9, 12)
OBJECT_POSITION = slice(12, 15)  # Push only

ACTION_SCALE = 0.05  # metres of end-effector displacement per unit of action
CUBE_HALF = 0.02  # half the side of Push's cube (panda-gym's object_size is 0.04)
STEP_S = 0.04  # physics time per env step: 20 substeps of 1/500 s
ARM_BASE_XY = np.array([-0.6, 0.0])  # the Panda's base in Reach and Push
# How far from its base the fingertip gets, pointing down, near the table (measured: 0.80 m)
REACH = 0.79


class Expert(Protocol):
    """A scripted controller for one task."""

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """The action for the flattened observation ``obs`` (float32, inside [-1, 1])."""
        ...

    def goal_distance(self, obs: np.ndarray) -> float:
        """How far the task is from done, in metres: the measure of progress an operator
        watching the robot would judge it by (the dense reward is minus this)."""
        ...


def _displacement(delta: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """The action that moves the end-effector by ``delta`` metres, at most 5 cm per axis."""
    return np.clip(gain * np.asarray(delta) / ACTION_SCALE, -1.0, 1.0).astype(np.float32)


def _goal_distance(obs: np.ndarray) -> float:
    return float(np.linalg.norm(obs[ACHIEVED_GOAL] - obs[DESIRED_GOAL]))


class PandaReachExpert:
    """Reach: proportional control of the end-effector straight to the goal.

    A gain of 1 asks for the whole remaining distance (capped at 5 cm per axis per step): the
    joint controller does not quite get there in one step, so the arm closes in without
    overshooting.
    """

    def __init__(self, gain: float = 1.0) -> None:
        self.gain = gain

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, np.float64)
        return _displacement(obs[DESIRED_GOAL] - obs[EE_POSITION], self.gain)

    def goal_distance(self, obs: np.ndarray) -> float:
        return _goal_distance(np.asarray(obs, np.float64))


class PandaPushExpert:
    """Push: get behind the cube on the far side from the goal, low, and push it to the goal.

    Every step it decides from the observation alone which of three things to do:

    - **push** when the fingertip is low, behind the cube along the cube-to-goal line and close to
      that line: advance along the line (slowing down near the end: a cube shoved fast slides on
      past the goal), correcting sideways back onto it;
    - **lift** when the fingertip is low but neither pushing nor over the pre-push point behind
      the cube: straight up, so that moving sideways cannot knock the cube;
    - **approach** otherwise: fly at a safe height to above the pre-push point, then descend to
      the table.

    A cube that drifts or turns off the line during a push thus makes the expert lift, fly round
    behind it again and push on. The pre-push point is kept inside the arm's reach (about 0.8 m
    from its base with the hand pointing down): a cube near the far edge is pushed from a shorter
    standoff rather than never reached.
    """

    def __init__(
        self,
        push_height: float = 0.02,  # the fingertip at the cube's centre height
        travel_height: float = 0.08,  # well above the cube's top (0.04)
        standoff: float = 0.05,  # fingertip behind the cube's centre when about to push
        line_tolerance: float = 0.018,  # how far off the push line the fingertip may be
        contact: float = 0.03,  # fingertip behind the cube's centre while it pushes
        push_speed: float = 0.03,  # metres per step while pushing (at most 0.05)
        descent_speed: float = 0.025,  # metres per step, at most, downward
        gain: float = 1.0,
        damping: float = 0.5,
    ) -> None:
        self.push_height, self.travel_height = push_height, travel_height
        self.standoff, self.line_tolerance = standoff, line_tolerance
        self.contact, self.push_speed = contact, push_speed
        self.gain, self.damping, self.descent_speed = gain, damping, descent_speed

    def goal_distance(self, obs: np.ndarray) -> float:
        return _goal_distance(np.asarray(obs, np.float64))

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, np.float64)
        ee, cube, goal = obs[EE_POSITION], obs[OBJECT_POSITION], obs[DESIRED_GOAL]
        to_goal = goal[:2] - cube[:2]
        remaining = float(np.linalg.norm(to_goal))
        if remaining < 1e-3:
            return np.zeros(3, np.float32)  # the cube is on the goal: hold still
        u = to_goal / remaining  # the push direction
        perp = np.array([-u[1], u[0]])
        rel = ee[:2] - cube[:2]
        along = float(rel @ u)  # < 0: the fingertip is behind the cube
        lateral = float(rel @ perp)  # signed distance off the push line
        low = ee[2] < self.push_height + 0.015

        if (
            low
            and -2.5 * self.standoff < along < -(CUBE_HALF + 0.005)
            and abs(lateral) < self.line_tolerance
        ):
            # Push: along the line toward where the fingertip is when the cube sits on the goal.
            to_go = float((goal[:2] - ee[:2]) @ u) - self.contact
            step = float(np.clip(0.5 * to_go, 0.0, self.push_speed))
            target = np.array([*(ee[:2] + u * step - perp * lateral), self.push_height])
        else:
            pre = _within_reach(cube[:2] - u * self.standoff)
            off_pre = float(np.linalg.norm(pre - ee[:2]))
            if low and off_pre > 0.02:
                target = np.array([*ee[:2], self.travel_height])  # lift
            elif not low and off_pre > 0.01:
                target = np.array([*pre, self.travel_height])  # fly to above the pre-push point
            else:
                target = np.array([*pre, self.push_height])  # descend onto it
        # Damping: the arm carries momentum from one step into the next (40 ms of physics), so
        # the command leads by less than the distance to go when it is already moving.
        delta = target - ee - self.damping * obs[EE_VELOCITY] * STEP_S
        # Down gently: a fast descent overshoots by centimetres, onto the cube or the table.
        delta[2] = max(delta[2], -self.descent_speed)
        return _displacement(delta, self.gain)


def _within_reach(xy: np.ndarray) -> np.ndarray:
    """``xy`` pulled back into the disc the fingertip reaches with the hand pointing down."""
    rel = xy - ARM_BASE_XY
    r = float(np.linalg.norm(rel))
    return xy if r <= REACH else ARM_BASE_XY + rel * (REACH / r)


# Every env id an expert knows, with the constructor of its expert. The sparse and dense
# variants share their observations and actions; the joint-control variants do not.
_EXPERTS: dict[str, type[PandaReachExpert] | type[PandaPushExpert]] = {
    "PandaReach-v3": PandaReachExpert,
    "PandaReachDense-v3": PandaReachExpert,
    "PandaPush-v3": PandaPushExpert,
    "PandaPushDense-v3": PandaPushExpert,
}
EXPERT_TASKS = tuple(_EXPERTS)


def expert_for(env_id: str) -> Expert:
    """The scripted expert of ``env_id``; ValueError names the tasks that have one."""
    try:
        return _EXPERTS[env_id]()
    except KeyError:
        raise ValueError(
            f"no scripted expert for {env_id}; there is one for {', '.join(EXPERT_TASKS)}"
        ) from None
