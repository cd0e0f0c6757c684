"""Configs and config files with bad keys or values: a ConfigError / DataError naming the key (and the file)."""

from __future__ import annotations

import json
from functools import partial

from . import InCase, api, case

cfg = partial(case, "config")


def _train_dict(**changes):
    """``TrainConfig.from_dict`` of the `debug` config's JSON with `changes` (dotted keys) applied."""
    def call(ws, tmp):
        from posevla.training.config import TrainConfig
        from posevla.training.configs import get_config

        d = json.loads(json.dumps(get_config("debug").to_dict()))
        for key, value in changes.items():
            *path, last = key.split("__")
            node = d
            for k in path:
                node = node[k]
            if value is _DEL:
                del node[last]
            else:
                node[last] = value
        TrainConfig.from_dict(d)

    return call


_DEL = object()


def _bins_file(edit):
    """``BinSpec.load`` of a checkpoint's bins.json after `edit(d)` (``edit`` may return text to write)."""
    def call(ws, tmp):
        from posevla.tokens import BinSpec

        d = json.loads((ws.step_dir(ws.token_run) / "bins.json").read_text())
        text = edit(d)
        p = tmp / "bins.json"
        p.write_text(text if isinstance(text, str) else json.dumps(d))
        BinSpec.load(p)

    return call


def _camera_file(d):
    def call(ws, tmp):
        from posevla.data.formats.lerobot import CameraConfig

        p = tmp / "cameras.json"
        p.write_text(json.dumps(d))
        CameraConfig.from_dict(json.loads(p.read_text()), file=str(p))

    return call


def _set_family(fam, key, value):
    def edit(d):
        d["families"][fam][key] = value

    return edit


def _reverse_edges(d):
    d["families"]["trans_z"]["edges"] = d["families"]["trans_z"]["edges"][::-1]


def _nan_edge(d):
    d["families"]["size"]["edges"][3] = float("nan")


CASES = [
    # -- a training config read back from JSON (a checkpoint's, or a user's file) -----------------------------------
    cfg("train/unknown_key", ("learning_rate", "valid keys"), call=_train_dict(learning_rate=1e-3)),
    cfg("train/unknown_nested_key", ("train.optim", "lrr"), call=_train_dict(optim__lrr=1e-3)),
    cfg("train/steps_text", ("--steps", "ten"), call=_train_dict(steps="ten")),
    cfg("train/lr_nan", "--optim.lr", call=_train_dict(optim__lr=float("nan"))),
    cfg("train/objective_unknown", ("objective", "poses"), call=_train_dict(objective="poses")),
    cfg("train/model_size_unknown", ("--model.size", "giant"), call=_train_dict(model__size="giant")),
    cfg("train/action_unknown_field", ("chunk", "ActionConfig"), call=_train_dict(action__chunk=8)),
    cfg("train/bins_count_text", ("--bins.loc",), call=_train_dict(bins__loc="many")),
    cfg("train/not_an_object", ("JSON object", "list"),
        call=api("posevla.training.config:TrainConfig.from_dict", [1, 2])),
    cfg("train/unknown_named_config", ("stage2-tinyy", "stage2-tiny"),
        call=api("posevla.training.configs:get_config", "stage2-tinyy")),
    # -- action, source, model and expert configs --------------------------------------------------------------
    cfg("action/space_unknown", ("--action.space", "cartesian"),
        call=api("posevla.data.action_space:ActionConfig", space="cartesian")),
    cfg("action/chunk_size_0", "--action.chunk-size",
        call=api("posevla.data.action_space:ActionConfig", chunk_size=0)),
    cfg("action/stride_negative", "--action.stride", call=api("posevla.data.action_space:ActionConfig", stride=-1)),
    cfg("action/ee_keys_empty", "--action.ee-keys", call=api("posevla.data.action_space:ActionConfig", ee_keys=())),
    cfg("action/gripper_per_arm", "--action.gripper-keys",
        call=api("posevla.data.action_space:ActionConfig", ee_keys=("a", "b"), gripper_keys=("g",))),
    cfg("action/std_eps_0", "--action.std-eps", call=api("posevla.data.action_space:ActionConfig", std_eps=0.0)),
    cfg("source/kind_unknown", ("parquet", "valid"),
        call=api("posevla.data.sources:SourceSpec", kind="parquet", path="x")),
    cfg("source/weight_negative", ("weight", "omni3d:x"),
        call=api("posevla.data.sources:SourceSpec", kind="omni3d", path="x", weight=-1.0)),
    cfg("source/horizon_0", ("horizon",), call=api("posevla.data.sources:SourceSpec", kind="lerobot", path="x",
                                                      horizon=0)),
    cfg("source/pseudo_views_on_robot_data", ("pseudo views", "lerobot"),
        call=api("posevla.data.sources:SourceSpec", kind="lerobot", path="x", pseudo_views=True)),
    cfg("model/unknown_key", ("hidden", "valid"), call=api("posevla.models.config:PoseVLMConfig.from_dict",
                                                                 {"hidden": 3})),
    cfg("expert/unknown_key", ("width_mult",), call=api("posevla.models.config:ActionExpertConfig.from_dict",
                                                              {"width_mult": 2})),
    cfg("env/unknown", ("libero9", "metaworld"), call=api("posevla.sim:make_env", "libero9", "x")),
    cfg("demos/no_tasks", "--tasks", call=api("posevla.sim.demos:ExpertDemoConfig", tasks=())),
    cfg("demos/cameras_empty", "cameras", call=api("posevla.sim.demos:ExpertDemoConfig", tasks=("reach-v3",),
                                                     cameras=())),
    cfg("demos/camera_unknown", ("nosuchcam", "available cameras"),
        call=api("posevla.sim:make_env", "metaworld", "reach-v3", cameras=("nosuchcam",))),
    # -- bins.json ----------------------------------------------------------------------------------------------
    cfg("bins/missing_file", ("nope.json", "not found"), call=api("posevla.tokens:BinSpec.load", InCase("nope.json"))),
    cfg("bins/not_json", ("bins.json", "not valid JSON"), call=_bins_file(lambda d: "{\"version\": ")),
    cfg("bins/top_level_list", ("bins.json", "JSON object"), call=_bins_file(lambda d: "[]")),
    cfg("bins/version_missing", ("bins.json", "field 'version'"), call=_bins_file(lambda d: d.pop("version") and None)),
    cfg("bins/version_future", ("bins.json", "version"), call=_bins_file(lambda d: d.update(version=99))),
    cfg("bins/family_missing", ("bins.json", "families.rot"),
        call=_bins_file(lambda d: d["families"].pop("rot") and None)),
    cfg("bins/count_negative", ("bins.json", "families.loc.count"), call=_bins_file(_set_family("loc", "count", -4))),
    cfg("bins/edges_short", ("bins.json", "families.trans_xy"),
        call=_bins_file(_set_family("trans_xy", "edges", [0, 1]))),
    cfg("bins/edges_not_increasing", ("bins.json", "families.trans_z"), call=_bins_file(_reverse_edges)),
    cfg("bins/edge_nan", ("bins.json", "families.size"), call=_bins_file(_nan_edge)),
    cfg("bins/edges_text", ("bins.json", "families.size"), call=_bins_file(_set_family("size", "edges", "0 1 2"))),
    cfg("bins/kind_unknown", ("bins.json", "families.rot"), call=_bins_file(_set_family("rot", "kind", "spiral"))),
    cfg("bins/uniform_low_above_high", ("bins.json", "families.loc"),
        call=_bins_file(_set_family("loc", "low", 2.0))),
    # -- a LeRobot camera config file ---------------------------------------------------------------------------
    cfg("cameras/unknown_key", ("cameras.json", "field 'fov'"), call=_camera_file({"cameras": ["a"], "fov": 60})),
    cfg("cameras/missing_cameras", ("cameras.json", "cameras"), call=_camera_file({"tcp_offset": [0, 0, 0]})),
    cfg("cameras/not_an_object", ("cameras.json", "json object"), call=_camera_file(["head"])),
    cfg("cameras/tcp_offset_short", ("cameras.json", "tcp_offset"),
        call=_camera_file({"cameras": ["a"], "tcp_offset": [0, 0]})),
    cfg("cameras/depth_scale_0", ("cameras.json", "depth_scale"),
        call=_camera_file({"cameras": ["a"], "depth_scale": 0})),
    cfg("cameras/K_not_3x3", ("cameras.json", "K"),
        call=_camera_file({"cameras": ["a"], "K": {"a": [[1, 0], [0, 1]]}})),
]
