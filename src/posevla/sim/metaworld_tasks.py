"""The 50 MetaWorld v3 tasks: names, three natural-language instructions each, and name / seed checks.

Pure Python (no simulator import), so task names can be validated before MetaWorld loads.
"""

from __future__ import annotations

import difflib
from typing import Any

import numpy as np

from posevla.errors import ConfigError

__all__ = ["TASKS", "resolve_task", "check_seed", "instruction_for"]

#: Three phrasings per task; ``reset(seed)`` picks ``seed % 3``. Keys are MetaWorld v3 task names.
_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "assembly-v3": (
        "put the ring onto the peg",
        "pick up the nut and slide it over the peg",
        "assemble the ring on the peg",
    ),
    "basketball-v3": (
        "put the ball into the hoop", "pick up the basketball and dunk it", "drop the ball through the hoop"
    ),
    "bin-picking-v3": (
        "move the cube into the other bin",
        "pick the block out of the bin and place it in the empty bin",
        "transfer the cube between the bins",
    ),
    "box-close-v3": (
        "close the box with its lid", "put the lid on the box", "pick up the lid and cover the box"
    ),
    "button-press-topdown-v3": (
        "press the button from above", "push the button down", "press down on the button"
    ),
    "button-press-topdown-wall-v3": (
        "press the button from above behind the wall",
        "reach over the wall and push the button down",
        "press down on the button behind the wall",
    ),
    "button-press-v3": ("press the button", "push the button in", "press the button on the box"),
    "button-press-wall-v3": (
        "press the button behind the wall",
        "reach past the wall and push the button",
        "push in the button behind the wall",
    ),
    "coffee-button-v3": (
        "press the button on the coffee machine",
        "push the coffee machine's button",
        "start the coffee machine",
    ),
    "coffee-pull-v3": (
        "pull the mug away from the coffee machine",
        "slide the cup out from under the coffee machine",
        "move the mug back to the goal",
    ),
    "coffee-push-v3": (
        "push the mug under the coffee machine",
        "slide the cup beneath the coffee spout",
        "move the mug to the coffee machine",
    ),
    "dial-turn-v3": ("turn the dial", "rotate the dial", "spin the knob around"),
    "disassemble-v3": (
        "take the ring off the peg", "lift the nut off the peg", "remove the ring from the peg"
    ),
    "door-close-v3": ("close the door", "push the door shut", "shut the safe door"),
    "door-lock-v3": ("lock the door", "turn the lock down", "rotate the knob to lock the door"),
    "door-open-v3": ("open the door", "pull the door open", "swing the safe door open"),
    "door-unlock-v3": ("unlock the door", "turn the lock up", "rotate the knob to unlock the door"),
    "hand-insert-v3": (
        "put the hand into the hole", "insert the gripper into the hole", "reach into the hole in the table"
    ),
    "drawer-close-v3": ("close the drawer", "push the drawer shut", "slide the drawer closed"),
    "drawer-open-v3": ("open the drawer", "pull the drawer open", "slide the drawer out"),
    "faucet-open-v3": ("turn the faucet on", "rotate the faucet handle to open it", "open the tap"),
    "faucet-close-v3": ("turn the faucet off", "rotate the faucet handle to close it", "close the tap"),
    "hammer-v3": (
        "hammer the nail into the wall",
        "pick up the hammer and drive in the nail",
        "use the hammer to hit the nail",
    ),
    "handle-press-side-v3": (
        "press the handle down from the side",
        "push the side handle down",
        "press down on the handle from the side",
    ),
    "handle-press-v3": ("press the handle down", "push down on the handle", "press the handle to the bottom"),
    "handle-pull-side-v3": (
        "pull the handle up from the side", "lift the side handle", "pull up on the handle from the side"
    ),
    "handle-pull-v3": ("pull the handle up", "lift the handle", "pull up on the handle"),
    "lever-pull-v3": ("pull the lever up", "raise the lever", "lift the lever to the top"),
    "pick-place-wall-v3": (
        "pick up the puck and place it at the goal behind the wall",
        "lift the puck over the wall to the target",
        "move the puck past the wall to the goal",
    ),
    "pick-out-of-hole-v3": (
        "pick the peg out of the hole",
        "lift the peg out of the hole",
        "take the peg out of the hole and hold it up",
    ),
    "pick-place-v3": (
        "pick up the puck and place it at the goal",
        "put the puck on the target",
        "move the puck to the goal position",
    ),
    "plate-slide-v3": (
        "slide the plate into the goal",
        "push the plate forward into the net",
        "slide the plate into the cabinet",
    ),
    "plate-slide-side-v3": (
        "slide the plate sideways into the goal",
        "push the plate sideways into the net",
        "slide the plate into the cabinet from the side",
    ),
    "plate-slide-back-v3": (
        "slide the plate back out of the goal",
        "pull the plate back out of the net",
        "slide the plate out of the cabinet",
    ),
    "plate-slide-back-side-v3": (
        "slide the plate sideways out of the goal",
        "pull the plate sideways out of the net",
        "slide the plate out of the cabinet to the side",
    ),
    "peg-insert-side-v3": (
        "insert the peg into the hole from the side",
        "pick up the peg and push it into the hole",
        "put the peg in the side hole",
    ),
    "peg-unplug-side-v3": (
        "unplug the peg from the side", "pull the peg out of the hole", "remove the peg from the side hole"
    ),
    "soccer-v3": (
        "kick the ball into the goal", "push the soccer ball into the net", "score a goal with the ball"
    ),
    "stick-push-v3": (
        "push the bottle with the stick",
        "pick up the stick and push the bottle to the goal",
        "use the stick to push the bottle",
    ),
    "stick-pull-v3": (
        "pull the bottle with the stick",
        "pick up the stick and pull the bottle to the goal",
        "use the stick to pull the bottle",
    ),
    "push-v3": (
        "push the puck to the goal",
        "slide the puck to the target",
        "push the puck across the table to the goal",
    ),
    "push-wall-v3": (
        "push the puck around the wall to the goal",
        "slide the puck past the wall to the target",
        "push the puck to the goal behind the wall",
    ),
    "push-back-v3": (
        "push the puck back to the goal",
        "slide the puck backwards to the target",
        "pull the puck back to the goal",
    ),
    "reach-v3": (
        "reach the goal", "move the gripper to the target", "touch the goal position with the gripper"
    ),
    "reach-wall-v3": (
        "reach the goal behind the wall",
        "move the gripper over the wall to the target",
        "reach past the wall to the goal",
    ),
    "shelf-place-v3": (
        "place the block on the shelf",
        "pick up the cube and put it on the shelf",
        "put the block onto the shelf",
    ),
    "sweep-into-v3": (
        "sweep the puck into the hole",
        "push the puck into the hole",
        "slide the puck into the hole in the table",
    ),
    "sweep-v3": (
        "sweep the puck off the table", "push the puck off the edge", "slide the puck off the table"
    ),
    "window-open-v3": ("open the window", "slide the window open", "push the window open"),
    "window-close-v3": ("close the window", "slide the window shut", "push the window closed"),
}
#: The 50 MetaWorld v3 task names this adapter knows (each with a scripted expert).
TASKS: tuple[str, ...] = tuple(_INSTRUCTIONS)


def resolve_task(task_name: str) -> str:
    """Exact v3 name, or the same name without the ``-v3`` suffix; else a ConfigError with suggestions."""
    if not isinstance(task_name, str):
        raise ConfigError(
            f"task_name must be a string such as 'pick-place-v3', got {type(task_name).__name__}"
        )
    name = task_name.strip()
    if name in _INSTRUCTIONS:
        return name
    if name + "-v3" in _INSTRUCTIONS:
        return name + "-v3"
    close = difflib.get_close_matches(name, TASKS, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(
        f"unknown MetaWorld task {task_name!r}.{hint} Valid names (MetaWorld v3): {', '.join(TASKS)}"
    )


def check_seed(seed: Any) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an int in [0, 2**32), got {seed!r} ({type(seed).__name__})")
    if not 0 <= int(seed) < 2**32:
        raise ConfigError(f"seed must be in [0, 2**32) (numpy seeding), got {int(seed)}")
    return int(seed)


def instruction_for(task_name: str, seed: int) -> str:
    """The natural-language instruction of ``task_name`` for an episode seed (template ``seed % 3``)."""
    phrases = _INSTRUCTIONS[resolve_task(task_name)]
    return phrases[check_seed(seed) % len(phrases)]
