"""The live plan viewer (posevla.serving.viewer): projection math, HTTP answers, and a headless-Chromium
screenshot of the page over a synthetic frame whose plan lands on known pixels."""

from __future__ import annotations

import http.server
import io
import json
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from posevla.errors import DataError
from posevla.geometry.camera import resize_pad_params
from posevla.serving.viewer import (
    EE_COLOR,
    PALETTE,
    Viewer,
    anchor_to_image,
    ee_tracks,
    plan_tracks,
    project_to_image,
)

W, H = 160, 120
K = np.array([[100.0, 0.0, 79.5], [0.0, 100.0, 59.5], [0.0, 0.0, 1.0]])
GRAY = 128


def _cam_point(u: float, v: float, z: float = 1.0) -> np.ndarray:
    """The camera-frame point at depth z that K projects to pixel (u, v)."""
    return np.array([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z])


def _model_anchor(u: float, v: float, S: int, width: int = W, height: int = H) -> np.ndarray:
    """Source pixel (u, v) → normalised model-input anchor (the resize-pad of training, forwards)."""
    _, new_w, new_h, left, top = resize_pad_params(width, height, S)
    x = new_w / width * (u + 0.5) - 0.5 + left
    y = new_h / height * (v + 0.5) - 0.5 + top
    return np.array([(x + 0.5) / S, (y + 0.5) / S])


def _hex(c: str) -> np.ndarray:
    return np.array([int(c[i : i + 2], 16) for i in (1, 3, 5)])


INFO = {"cameras": ["front", "wrist"], "camera_config": None, "action_names": ["x", "y", "z", "grip"],
        "chunk_size": 4, "checkpoint": "runs/test/posttrain", "image_size": 64}


def _entry(name: str, u: float, v: float, z: float = 1.0) -> dict:
    return {"name": name, "anchor": _model_anchor(u, v, 64), "translation": _cam_point(u, v, z),
            "euler_xyz": np.zeros(3)}


def _sample(with_T: bool = True) -> tuple[dict, dict, dict]:
    """A synthetic request: gray frames, a plan with 'left 0' alone at (40, 30), a 3-point 'right' track."""
    obs = {
        "observation.images.front": np.full((H, W, 3), GRAY, np.uint8),
        "observation.images.wrist": np.full((H, W, 3), GRAY, np.uint8),
        "observation.cameras.front.K": K,  # the wrist camera has no K: anchors are drawn
        "observation.state": np.zeros(4, np.float32),
        "task": "press the red button",
    }
    if with_T:
        obs["observation.cameras.front.T_world_cam"] = np.eye(4)
    plan = [{"camera": cam, "no_object": False,
             "entries": [_entry("right 2", 120, 90), _entry("left 0", 40, 30), _entry("right 0", 100, 40),
                         _entry("right 1", 110, 70)]} for cam in ("front", "wrist")]
    ee = np.stack([_cam_point(60 + 10 * k, 100, 0.8) for k in range(4)])[:, None]  # (H, 1, 3): world = cam
    ee = np.concatenate([ee, np.tile([1.0, 0, 0, 0], (4, 1, 1))], axis=-1)  # (4, 1, 7)
    steps = np.arange(4)[:, None]
    actions = np.concatenate([0.1 * steps, np.sin(steps), -0.05 * steps**2, (steps > 1) * 1.0], axis=1)
    result = {"actions": actions.astype(np.float32), "action_names": INFO["action_names"],
              "action_space": "ee_pose", "ee_pose": ee.astype(np.float32),
              "latency_ms": {"preprocess": 1.0, "model": 20.0, "plan": 5.0, "total": 26.0},
              "pose_tokens": plan}
    return obs, result, {"infer_ms": 26.5, "total_ms": 30.25, "request": 7}


def _state(viewer: Viewer) -> dict:
    status, headers, body = viewer.handle_http("/viewer/state.json?t=1")
    assert status == 200 and headers["Content-Type"] == "application/json"
    return json.loads(body)


# -- projection ---------------------------------------------------------------------------------------
def test_project_known_pixel_and_behind_camera():
    uv = project_to_image(K, np.array([[0.1, -0.05, 1.0], [0.0, 0.0, -1.0], [np.nan, 0, 1]]))
    np.testing.assert_allclose(uv[0], [89.5, 54.5])
    assert np.isnan(uv[1]).all() and np.isnan(uv[2]).all()
    np.testing.assert_allclose(project_to_image(K, _cam_point(40, 30, 2.5)), [[40, 30]], atol=1e-9)


@pytest.mark.parametrize("size", [(160, 120), (120, 160), (97, 61), (64, 64)])
def test_anchor_round_trips_through_the_resize_pad(size):
    w, h = size
    for u, v in [(0.0, 0.0), (w - 1.0, h - 1.0), (w / 3, h / 2)]:
        for S in (32, 64, 224):
            got = anchor_to_image(_model_anchor(u, v, S, w, h), w, h, S)
            np.testing.assert_allclose(got, (u, v), atol=1e-9)
        approx = anchor_to_image(_model_anchor(u, v, 224, w, h), w, h, None)  # no S: the continuous limit
        np.testing.assert_allclose(approx, (u, v), atol=1.0)


def test_anchor_box_centre_and_bad_anchor():
    a = _model_anchor(40, 30, 64)
    box = np.array([a[0] - 0.1, a[1] - 0.05, a[0] + 0.1, a[1] + 0.05])
    np.testing.assert_allclose(anchor_to_image(box, W, H, 64), (40, 30), atol=1e-9)
    with pytest.raises(DataError, match="anchor"):
        anchor_to_image([0.1, 0.2, 0.3], W, H, 64)
    with pytest.raises(DataError, match="anchor"):
        anchor_to_image([np.nan, 0.2], W, H, 64)


def test_plan_tracks_group_arms_in_waypoint_order():
    _, result, _ = _sample()
    tracks = plan_tracks(result["pose_tokens"][0]["entries"], K, W, H, 64)
    assert [t["arm"] for t in tracks] == ["right", "left"]
    assert [t["color"] for t in tracks] == list(PALETTE[:2])
    right = tracks[0]["points"]
    assert [p["name"] for p in right] == ["right 0", "right 1", "right 2"]
    uv = [(p["u"], p["v"]) for p in right]
    np.testing.assert_allclose(uv, [(100, 40), (110, 70), (120, 90)], atol=1e-9)
    assert all(p["source"] == "K" and p["z"] == pytest.approx(1.0) for p in right)
    # no K, or a point behind the camera: the anchor, mapped back to the image
    no_k = plan_tracks(result["pose_tokens"][0]["entries"], None, W, H, 64)
    assert all(p["source"] == "anchor" for t in no_k for p in t["points"])
    np.testing.assert_allclose([no_k[1]["points"][0]["u"], no_k[1]["points"][0]["v"]], [40, 30], atol=1e-9)
    behind = [{"name": "arm 0", "anchor": _model_anchor(10, 20, 64), "translation": [0.0, 0.0, -1.0]}]
    (t,) = plan_tracks(behind, K, W, H, 64)
    assert t["points"][0]["source"] == "anchor"
    np.testing.assert_allclose([t["points"][0]["u"], t["points"][0]["v"]], [10, 20], atol=1e-9)


def test_ee_tracks_use_T_world_cam():
    p_cam = _cam_point(50, 60, 0.7)
    T_world_cam = np.eye(4)
    T_world_cam[:3, 3] = [0.2, -0.1, 0.3]  # camera shifted in the world
    ee = np.concatenate([p_cam + T_world_cam[:3, 3], [1, 0, 0, 0]])[None, None]  # (1, 1, 7) world frame
    (t,) = ee_tracks(ee, K, T_world_cam)
    np.testing.assert_allclose(t["points"][0], [50, 60], atol=1e-9)
    assert t["color"] == EE_COLOR
    with pytest.raises(DataError, match="ee_pose"):
        ee_tracks(np.zeros((4, 2, 2)), K, np.eye(4))


# -- HTTP ---------------------------------------------------------------------------------------------
def test_waiting_state_page_and_routes():
    v = Viewer(INFO)
    assert _state(v)["status"] == "waiting"
    status, headers, body = v.handle_http("/viewer")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"/viewer/state.json" in body and b"Waiting for the first request" in body
    assert v.handle_http("/viewer/")[0] == 200
    for other in ("/", "/healthz", "/viewerx"):
        assert v.handle_http(other) is None
    assert v.handle_http("/viewer/frame/front.png")[0] == 404  # known camera, no frame yet
    assert v.handle_http("/viewer/frame/nope.png")[0] == 404
    assert v.handle_http("/viewer/nothing")[0] == 404


def test_state_json_and_frames_after_update():
    v = Viewer(INFO)
    obs, result, timing = _sample()
    v.update(obs, result, timing)
    s = _state(v)
    assert s["status"] == "live" and s["request"] == 7 and s["task"] == "press the red button"
    assert s["actions"] == result["actions"].tolist() and s["action_names"] == ["x", "y", "z", "grip"]
    assert s["timing"]["total_ms"] == 30.25 and s["latency_ms"]["model"] == 20.0
    front, wrist = s["views"]
    assert (front["camera"], front["width"], front["height"]) == ("front", W, H)
    assert front["K_source"] == "observation"
    left = next(t for t in front["tracks"] if t["arm"] == "left")
    assert (left["points"][0]["u"], left["points"][0]["v"]) == pytest.approx((40, 30))
    expected_ee = [[60 + 10 * k, 100] for k in range(4)]
    np.testing.assert_allclose(front["ee_tracks"][0]["points"], expected_ee, atol=1e-6)
    assert wrist["K_source"] is None and any("no K" in n for n in wrist["notes"])
    assert all(p["source"] == "anchor" for t in wrist["tracks"] for p in t["points"])
    assert any("ee_pose" in n for n in wrist["notes"])  # needs K and T_world_cam
    status, headers, body = v.handle_http(front["frame"])
    assert status == 200 and headers["Content-Type"] == "image/png"
    img = np.asarray(Image.open(io.BytesIO(body)))
    assert img.shape == (H, W, 3) and (img == GRAY).all()
    # update copies: changing the caller's arrays afterwards changes nothing
    obs["observation.images.front"][:] = 0
    result["pose_tokens"][0]["entries"][1]["translation"][:] = [0.0, 0.0, 5.0]
    v._state_cache = None
    assert _state(v)["views"][0]["tracks"] == front["tracks"]
    assert (np.asarray(Image.open(io.BytesIO(v.handle_http(front["frame"])[2]))) == GRAY).all()


def test_frames_are_served_by_update_version():
    v = Viewer(INFO)
    obs, result, timing = _sample()
    v.update(obs, result, timing)
    first = _state(v)["views"][0]["frame"]
    assert first.endswith("?v=1")

    def png(path: str) -> np.ndarray:
        status, _, body = v.handle_http(path)
        assert status == 200, body
        return np.asarray(Image.open(io.BytesIO(body)))

    for k in range(1, 4):
        v.update({**obs, "observation.images.front": np.full((H, W, 3), k, np.uint8)}, result, timing)
    assert (png(first) == GRAY).all()  # a page that read state 1 still gets frame 1
    assert (png("/viewer/frame/front.png") == 3).all()  # no version: the latest
    v.update(obs, result, timing)  # update 5: update 1 is no longer held
    status, _, body = v.handle_http(first)
    assert status == 404 and b"gone" in body
    assert v.handle_http("/viewer/frame/front.png?v=abc")[0] == 404


def test_static_camera_config_and_result_without_plan():
    from posevla.data.formats.lerobot import CameraConfig  # imports pyarrow: only here

    cc = CameraConfig(cameras=("front", "wrist"), K={"front": K}, T_world_cam={"front": np.eye(4)})
    v = Viewer({**INFO, "camera_config": cc.to_dict()})  # a dict is accepted too
    obs, result, timing = _sample(with_T=False)
    del obs["observation.cameras.front.K"]
    v.update(obs, result, timing)
    front = _state(v)["views"][0]
    assert front["K_source"] == "camera_config" and front["T_world_cam_source"] == "camera_config"
    assert all(p["source"] == "K" for t in front["tracks"] for p in t["points"])
    del result["pose_tokens"]
    v.update(obs, result, timing)
    s = _state(v)
    assert not s["has_plan"] and s["views"][0]["tracks"] == []
    assert any("return_poses" in n for n in s["views"][0]["notes"])


def test_bad_values_become_notes_and_json_stays_valid():
    v = Viewer(INFO)
    obs, result, timing = _sample()
    obs["observation.cameras.front.K"] = [[1.0, 2.0], [3.0]]  # ragged: not a K
    result["actions"][0, 0] = np.nan
    result["pose_tokens"][0]["entries"][0]["anchor"] = ["a", "b"]
    result["pose_tokens"][0]["entries"][0]["translation"] = None
    v.update(obs, result, timing)
    s = json.loads(v.handle_http("/viewer/state.json")[2])  # strict JSON: NaN became null
    assert s["actions"][0][0] is None
    front = s["views"][0]
    assert front["K_source"] is None and any("not a finite 3x3" in n for n in front["notes"])
    assert any("waypoint 'right 2' not drawn" in n for n in front["notes"])
    assert sum(len(t["points"]) for t in front["tracks"]) == 3  # the other waypoints are drawn


def test_bad_input_raises_clear_errors():
    with pytest.raises(DataError, match="cameras"):
        Viewer({"cameras": []})
    with pytest.raises(DataError, match="cameras"):
        Viewer({"cameras": "front"})
    with pytest.raises(DataError, match="camera_config"):
        Viewer({**INFO, "camera_config": 3})
    with pytest.raises(DataError, match="image_size"):
        Viewer({**INFO, "image_size": -1})
    v = Viewer(INFO)
    obs, result, timing = _sample()
    with pytest.raises(DataError, match="obs must be a dict"):
        v.update([], result, timing)
    with pytest.raises(DataError, match="actions"):
        v.update(obs, {"actions": np.zeros(3)}, timing)
    with pytest.raises(DataError, match="pose_tokens"):
        v.update(obs, {**result, "pose_tokens": "arm 0"}, timing)
    assert _state(v)["status"] == "waiting"  # failed updates leave nothing behind


def test_update_and_http_from_two_threads():
    v = Viewer(INFO)
    obs, result, timing = _sample()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(200):
                v.update(obs, result, {**timing, "request": i})
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    t = threading.Thread(target=writer)
    t.start()
    while t.is_alive():
        s = _state(v)
        if s["status"] == "live":
            status, _, body = v.handle_http(s["views"][0]["frame"])
            assert status == 200 or (status == 404 and b"gone" in body)  # 4+ newer updates since the state
            assert v.handle_http("/viewer/frame/front.png")[0] == 200
    t.join()
    assert not errors and _state(v)["request"] == 199


# -- the page in headless Chromium ---------------------------------------------------------------------
class _Served:
    """The viewer behind a tiny HTTP server; `after_state` runs once after the first state.json answer."""

    def __init__(self) -> None:
        self.viewer = Viewer(INFO)
        self.url = ""
        self.after_state: Callable[[], None] | None = None
        self.paths: list[str] = []


@pytest.fixture
def viewer_url() -> Iterator[_Served]:
    served = _Served()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            served.paths.append(self.path)
            answer = served.viewer.handle_http(self.path)
            status, headers, body = answer or (404, {"Content-Type": "text/plain"}, b"not found")
            self.send_response(status)
            for k, val in headers.items():
                self.send_header(k, val)
            self.end_headers()
            self.wfile.write(body)
            if self.path.startswith("/viewer/state.json") and served.after_state is not None:
                hook, served.after_state = served.after_state, None
                hook()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        served.url = f"http://127.0.0.1:{server.server_address[1]}/viewer"
        yield served
    finally:
        server.shutdown()
        server.server_close()


def _chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _screenshot(url: str, out: Path, tmp: Path, size: tuple[int, int] = (1280, 1100)) -> np.ndarray:
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium binary: install the Debian package chromium "
                    "(scripts/install_system_deps.sh does)")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--force-device-scale-factor=1", "--hide-scrollbars",
           f"--user-data-dir={tmp / 'chromium-profile'}",
           f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=3000", f"--screenshot={out}", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.exists(), f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def _gray_boxes(img: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of the frame-gray rectangles of the screenshot, left to right."""
    gray = (img == GRAY).all(axis=-1)
    rows = np.nonzero(gray.sum(axis=1) > 100)[0]
    assert rows.size, "the frame's gray is nowhere in the screenshot"
    y0, y1 = rows.min(), rows.max()
    cols = np.nonzero(gray[y0 : y1 + 1].sum(axis=0) > 100)[0]
    runs = np.split(cols, np.nonzero(np.diff(cols) > 1)[0] + 1)
    return [(int(r[0]), int(y0), int(r[-1]), int(y1)) for r in runs if r.size > 100]


def test_page_in_headless_chromium_draws_the_plan_on_the_frame(viewer_url, tmp_path):
    obs, result, timing = _sample()
    viewer_url.viewer.update(obs, result, timing)
    img = _screenshot(viewer_url.url, tmp_path / "viewer.png", tmp_path)
    boxes = _gray_boxes(img)
    assert len(boxes) == 2, f"expected the two camera frames side by side, found gray boxes {boxes}"
    zoom = 480 // max(W, H)
    colour = _hex(PALETTE[1])  # 'left' is the plan's second arm
    for (x0, y0, x1, y1), filled in zip(boxes, (True, False), strict=True):
        assert (x1 - x0 + 1, y1 - y0 + 1) == (W * zoom, H * zoom), "frame not shown at its integer zoom"
        cx, cy = x0 + (40 + 0.5) * zoom, y0 + (30 + 0.5) * zoom  # 'left 0' is at pixel (40, 30)
        yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
        r = np.hypot(xx + 0.5 - cx, yy + 0.5 - cy)
        near = np.abs(img - colour).max(axis=-1) < 40
        if filled:  # front camera, projected with K: a filled dot centred on the pixel
            assert near[r < 2.5].all(), "the waypoint dot is not at its projected pixel"
        else:  # wrist camera, no K: a hollow ring at the anchor
            assert near[(r > 3.5) & (r < 5.5)].mean() > 0.5 and not near[r < 1.5].any()
        far = r > 40
        assert not near[far & (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1) & (xx < cx)].any(), \
            "waypoint colour found away from the waypoint (left of it)"
    # the executed chunk (yellow, dashed) on the front frame near pixel (60, 100)
    x0, y0 = boxes[0][:2]
    px, py = int(x0 + 60 * zoom), int(y0 + 100 * zoom)
    patch = img[py - 3 : py + 4, px - 3 : px + 4]
    assert (np.abs(patch - _hex(EE_COLOR)).max(axis=-1) < 60).any(), "executed ee_pose chunk not drawn"


def test_page_in_headless_chromium_waits_before_the_first_request(viewer_url, tmp_path):
    img = _screenshot(viewer_url.url, tmp_path / "waiting.png", tmp_path, size=(800, 300))
    assert (img == GRAY).all(axis=-1).sum() < 200, "a frame is shown before any request"
    assert (np.abs(img - np.array([0xE0, 0xB0, 0x50])).max(axis=-1) < 30).sum() > 50, "no 'waiting' text"


def test_page_in_headless_chromium_refreshes_when_a_request_arrives(viewer_url, tmp_path):
    """The page loads while waiting; the first request arrives after its first poll; it must redraw."""
    obs, result, timing = _sample()
    viewer_url.after_state = lambda: viewer_url.viewer.update(obs, result, timing)
    img = _screenshot(viewer_url.url, tmp_path / "refreshed.png", tmp_path)
    polls = [p for p in viewer_url.paths if p.startswith("/viewer/state.json")]
    assert len(polls) >= 2, f"the page did not poll again: {viewer_url.paths}"
    assert "/viewer/frame/front.png?v=1" in viewer_url.paths
    assert len(_gray_boxes(img)) == 2, "the frames did not appear after the first request"


def test_real_policy_behind_the_server_feeds_the_viewer(tmp_path):
    """A tiny post-trained policy behind `serve_in_thread(viewer=True)`: one request, then the viewer's
    state has the policy's own plan projected with the camera config's K, and the page renders it."""
    server = pytest.importorskip("posevla.serving.server", reason="the policy server is not there yet")
    import urllib.request

    from posevla.bench.serve import tiny_checkpoint, valid_request
    from posevla.policy import Policy
    from posevla.serving.client import PolicyClient

    ck = tiny_checkpoint(tmp_path / "run")
    policy = Policy.from_checkpoint(ck, device="cpu", precision="fp32")
    with server.serve_in_thread(policy, viewer=True, port=0) as handle:
        client = PolicyClient(handle.url)
        request = valid_request(ck, client.metadata["observation_spec"])
        assert "pose_tokens" not in client.infer(request)  # nobody watches: no plan is decoded
        urllib.request.urlopen(handle.http_url + "/viewer", timeout=30).read()  # the page is opened
        reply = client.infer(request)
        state = json.loads(urllib.request.urlopen(handle.http_url + "/viewer/state.json", timeout=30).read())
        assert state["status"] == "live" and state["has_plan"]
        assert [v["camera"] for v in state["views"]] == list(policy.cameras)
        np.testing.assert_allclose(state["actions"], reply["actions"], rtol=1e-6, atol=1e-6)
        view = state["views"][0]
        cam = view["camera"]
        plan = next(p for p in reply["pose_tokens"] if p["camera"] == cam)
        K_cam = policy.camera_config.static_K(cam)
        expected = [K_cam @ np.asarray(e["translation"]) for e in plan["entries"] if e["translation"][2] > 0]
        got = [(p["u"], p["v"]) for t in view["tracks"] for p in t["points"] if p["source"] == "K"]
        expected_uv = sorted((q[0] / q[2], q[1] / q[2]) for q in expected)
        np.testing.assert_allclose(sorted(got), expected_uv, atol=1e-6)
        frame = urllib.request.urlopen(handle.http_url + view["frame"], timeout=30).read()
        assert np.asarray(Image.open(io.BytesIO(frame))).shape == (view["height"], view["width"], 3)
        if _chromium() is None:  # the checks above ran; the page needs the browser
            return
        img = _screenshot(handle.http_url + "/viewer", tmp_path / "served.png", tmp_path)
        inside = [p for t in view["tracks"] for p in t["points"]
                  if -0.5 <= p["u"] <= view["width"] - 0.5 and -0.5 <= p["v"] <= view["height"] - 0.5]
        if inside:
            assert (np.abs(img - _hex(PALETTE[0])).max(axis=-1) < 40).sum() > 20, "no plan drawn on the page"
