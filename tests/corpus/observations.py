"""Observations a robot loop could hand the policy that it must refuse: a DataError naming the key (the LeRobot
feature name), never an action chunk computed from them. The policy is the workspace's post-trained tiny policy
(camera ``head``, 32x24 images, ee-pose actions); the valid observation is its training data's first frame."""

from __future__ import annotations

from functools import partial

import numpy as np

from . import case

obs_case = partial(case, "observation")
IMG, DEPTH = "observation.images.head", "observation.depth.head"
K, T = "observation.cameras.head.K", "observation.cameras.head.T_world_cam"
EE, GRIP = "observation.ee_pose", "observation.gripper"


def _infer(change=None, drop: tuple[str, ...] = (), whole=None, **kw):
    """``policy.infer`` of the valid observation with keys `drop`ped and ``change(obs)`` applied (or `whole`)."""
    kw = {"seed": 0} | kw

    def call(ws, tmp):
        obs = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in ws.observation.items() if k not in drop}
        if change is not None:
            change(obs)
        ws.policy.infer(obs if whole is None else whole, **kw)

    return call


def _put(key, fn):
    def change(obs):
        obs[key] = fn(obs[key]) if callable(fn) else fn

    return change


def _at(index, value):
    def fn(a):
        a = np.array(a, copy=True)
        a[index] = value
        return a

    return fn


def _o(what, names, **kw):
    return obs_case(what, names, call=_infer(**kw))


LONG = " ".join(["pick up the red block and put it in the bowl"] * 12)

CASES = [
    _o("not_a_dict", ("observation", "dict"), whole=[1, 2]),
    _o("image_missing", (IMG, "missing"), drop=(IMG,)),
    _o("image_float", (IMG, "uint8"), change=_put(IMG, lambda a: a.astype(np.float64) / 255)),
    _o("image_wrong_size", (IMG, "32x24"), change=_put(IMG, np.zeros((24, 31, 3), np.uint8))),
    _o("image_grayscale", (IMG,), change=_put(IMG, np.zeros((24, 32), np.uint8))),
    _o("image_rgba", (IMG,), change=_put(IMG, np.zeros((24, 32, 4), np.uint8))),
    _o("image_channels_first", (IMG,), change=_put(IMG, np.zeros((3, 24, 32), np.uint8))),
    _o("image_a_list", (IMG,), change=_put(IMG, [[0, 1], [2, 3]])),
    _o("gripper_missing", (GRIP, "missing"), drop=(GRIP,)),
    _o("gripper_nan", (GRIP,), change=_put(GRIP, np.array([np.nan], np.float32))),
    _o("ee_pose_missing", (EE, "missing"), drop=(EE,)),
    _o("ee_pose_nan", (EE, "non-finite"), change=_put(EE, _at(2, np.nan))),
    _o("ee_pose_six_numbers", (EE,), change=_put(EE, lambda a: a[:6])),
    _o("ee_pose_quaternion_zero", (EE, "quaternion"), change=_put(EE, _at(slice(3, 7), 0.0))),
    _o("ee_pose_text", (EE,), change=_put(EE, "0 0 0 1 0 0 0")),
    _o("depth_all_nan", (DEPTH, "NaN"), change=_put(DEPTH, lambda a: np.full_like(a, np.nan))),
    _o("depth_inf", (DEPTH,), change=_put(DEPTH, _at((0, 0), np.inf))),
    _o("depth_negative", (DEPTH, "negative"), change=_put(DEPTH, lambda a: a - 5.0)),
    _o("depth_wrong_shape", (DEPTH, "camera 'head'"), change=_put(DEPTH, lambda a: a[:, :-1])),
    _o("depth_in_millimetres", (DEPTH, "metres"), change=_put(DEPTH, lambda a: a * 1000.0)),
    _o("depth_uint16", (DEPTH, "float"), change=_put(DEPTH, lambda a: (a * 1000).astype(np.uint16))),
    _o("K_nan", (K,), change=_put(K, _at((0, 0), np.nan))),
    _o("K_negative_focal", (K,), change=_put(K, _at((1, 1), -30.0))),
    _o("K_2x3", (K,), change=_put(K, lambda a: a[:2])),
    _o("T_world_cam_reflection", (T,), change=_put(T, _at((0, 0), -1.0))),
    _o("T_world_cam_nan", (T,), change=_put(T, _at((1, 3), np.nan))),
    _o("instruction_too_long_task", ("'task'", "tokens"), change=_put("task", LONG)),
    _o("instruction_too_long_instruction", ("'instruction'", "tokens"),
       change=lambda o: o.pop("task") and o.update(instruction=LONG)),
    _o("instruction_not_text", ("task",), change=_put("task", 42)),
    _o("instruction_missing", ("task",), drop=("task",)),
    _o("seed_text", ("seed",), seed="abc"),
    _o("num_steps_zero", ("num_steps",), num_steps=0),
]
