"""`posevla serve`: the wire format, the input spec, and the server driven by openpi's real client."""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import websockets
from openpi_client import action_chunk_broker, msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from posevla.bench.serve import fuzz_server, is_clear_error, load_server, malformed_frames, tiny_checkpoint, valid_request
from posevla.data.input_spec import InputSpec
from posevla.errors import ConfigError, DataError
from posevla.policy import Policy
from posevla.serving.client import PolicyClient, RemotePolicy, ServerError, call_seed
from posevla.serving.server import serve_in_thread
from posevla.serving.wire import WireError, pack, unpack


# -- wire format ----------------------------------------------------------------------------------------------


def test_wire_round_trip_and_openpi_compatibility():
    msg = {"img": np.arange(24, dtype=np.uint8).reshape(2, 4, 3), "state": np.array([0.5, -1.0]),
           "f32": np.ones((2, 2), np.float32), "scalar": np.float32(2.5), "prompt": "pick", "n": 3, "nested": {"a": [1, 2]}}
    ours = unpack(pack(msg))
    theirs = msgpack_numpy.unpackb(pack(msg))
    from_openpi = unpack(msgpack_numpy.packb(msg))
    for out in (ours, theirs, from_openpi):
        assert out["img"].dtype == np.uint8 and np.array_equal(out["img"], msg["img"])
        assert out["state"].dtype == np.float64 and np.array_equal(out["state"], msg["state"])
        assert out["scalar"] == np.float32(2.5) and out["prompt"] == "pick" and out["nested"] == {"a": [1, 2]}
    assert pack(msg) == msgpack_numpy.packb(msg)  # byte-identical frames


@pytest.mark.parametrize("bad, match", [
    (b"\xc1", "not one msgpack message"),
    (msgpack_numpy.packb({"a": 1}) + b"\x01", "not one msgpack message"),
    (pack({"x": {b"__ndarray__": True, b"data": b"\0" * 16, b"dtype": "|O", b"shape": [2]}}), "not allowed"),
    (pack({"x": {b"__ndarray__": True, b"data": b"\0" * 5, b"dtype": "<f4", b"shape": [2]}}), "needs 8"),
    (pack({"x": {b"__ndarray__": True, b"data": b"", b"dtype": "<f8", b"shape": [1 << 30, 1 << 30]}}), "MB"),
    (pack({"x": {b"__ndarray__": True, b"data": b"", b"dtype": "<f8", b"shape": [-1]}}), "non-negative"),
])
def test_wire_refuses_bad_frames(bad, match):
    with pytest.raises(WireError, match=match):
        unpack(bad)


def test_wire_never_sends_objects():
    with pytest.raises(WireError, match="dtype object"):
        pack({"x": np.array([object()])})
    with pytest.raises(WireError, match="type set"):
        pack({"x": {1, 2}})


# -- input spec -----------------------------------------------------------------------------------------------


def _spec(layout="auto", cams=("agentview", "wrist")):
    sizes = {c: (32, 24) for c in cams}
    return InputSpec.default(cams, sizes, (("observation.ee_pose", 7), ("observation.gripper", 1)), layout)


def test_input_spec_layouts():
    s = _spec()
    assert s.layout == "libero" and [k for k, _ in s.cameras] == ["observation/image", "observation/wrist_image"]
    img = np.zeros((24, 32, 3), np.uint8)
    state = np.arange(8.0)
    native = s.to_native({"observation/image": img, "observation/wrist_image": img, "observation/state": state,
                          "prompt": "go"})
    assert native["task"] == "go" and native["observation.images.wrist"] is img
    np.testing.assert_array_equal(native["observation.ee_pose"], state[:7])
    np.testing.assert_array_equal(native["observation.gripper"], state[7:])
    a = _spec(cams=("head", "left", "right"))
    assert a.layout == "aloha"
    chw = np.zeros((3, 24, 32), np.uint8)
    out = a.to_native({"images": {"cam_high": chw, "cam_left_wrist": img, "cam_right_wrist": img}, "state": state,
                       "prompt": "x"})
    assert out["observation.images.head"].shape == (24, 32, 3)
    # native keys pass under every layout (a MetaWorld client, calibration keys)
    out = s.to_native({"observation.images.agentview": img, "observation.images.wrist": img, "task": "t",
                       "observation.ee_pose": state[:7], "observation.gripper": state[7:],
                       "observation.cameras.agentview.K": np.eye(3)})
    assert "observation.cameras.agentview.K" in out and out["task"] == "t"
    assert InputSpec.from_dict(s.to_dict()) == s


def test_input_spec_errors_name_the_client_key():
    s = _spec()
    img = np.zeros((24, 32, 3), np.uint8)
    with pytest.raises(DataError, match="observation/wrist_image") as e:
        s.to_native({"observation/image": img, "observation/state": np.zeros(8), "prompt": "x"})
    assert e.value.field == "observation/wrist_image"
    with pytest.raises(DataError, match="8 numbers"):
        s.to_native({"observation/image": img, "observation/wrist_image": img, "observation/state": np.zeros(7)})
    with pytest.raises(DataError, match="non-finite value at index 2"):
        s.split_state(np.array([0, 0, np.nan, 0, 0, 0, 0, 0]))
    with pytest.raises(ConfigError, match="valid"):
        _spec("droid")


# -- the server -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("serve") / "run")


@pytest.fixture(scope="module")
def policy(checkpoint):
    return Policy.from_checkpoint(checkpoint, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def server(policy):
    with serve_in_thread(policy) as h:
        yield h


@pytest.fixture(scope="module")
def request_(checkpoint, server):
    return valid_request(checkpoint, PolicyClient(server.url).metadata["observation_spec"])


def _native(request_, spec):
    """The native observation of a client request (what Policy.infer is given in process)."""
    return spec.to_native(request_)


def test_openpi_client_metadata_and_chunk_equal_in_process(server, policy, request_):
    client = WebsocketClientPolicy(server.url)
    meta = client.get_server_metadata()
    assert meta["chunk_size"] == 16 and meta["action_dim"] == 10 and meta["action_space"] == "ee_pose"
    assert meta["observation_spec"]["images"]["observation/image"] == {"camera": "head", "shape": [24, 32, 3],
                                                                       "dtype": "uint8"}
    assert meta["observation_spec"]["state"]["dim"] == 8 and len(meta["norm_stats_sha256"]) == 64
    reply = client.infer({**request_, "seed": 5})
    assert reply["actions"].shape == (16, 10) and reply["actions"].dtype == np.float32
    assert set(reply["server_timing"]) >= {"infer_ms", "queue_ms", "decode_ms"}
    expected = policy.infer(_native(request_, server.server.spec), seed=5)["actions"]
    np.testing.assert_array_equal(reply["actions"], expected)
    assert reply["ee_pose"].shape == (16, 1, 7)
    # openpi's ActionChunkBroker steps through the chunk one action at a time, then asks again
    broker = action_chunk_broker.ActionChunkBroker(client, action_horizon=4)
    steps = [broker.infer({**request_, "seed": 6})["actions"] for _ in range(5)]
    first = policy.infer(_native(request_, server.server.spec), seed=6)["actions"]
    for k in range(4):
        np.testing.assert_array_equal(steps[k], first[k])
    assert steps[0].shape == (10,) and "prev_total_ms" in broker._last_results["server_timing"]


def test_an_error_closes_only_that_connection(server, request_):
    good = WebsocketClientPolicy(server.url)
    bad = WebsocketClientPolicy(server.url)
    with pytest.raises(RuntimeError, match="camera 'head' is missing"):
        bad.infer({"prompt": "x"})
    with pytest.raises(websockets.ConnectionClosed) as e:
        bad._ws.recv()
    assert e.value.rcvd.code == 1011
    assert good.infer(request_)["actions"].shape == (16, 10)  # the other client is still served
    with PolicyClient(server.url) as c, pytest.raises(ServerError, match="non-finite"):
        c.infer({**request_, "observation/state": np.full(8, np.nan)})


def test_http_health_stats_and_api_key(policy, request_):
    with serve_in_thread(policy, api_key="s3cret") as h:
        assert urllib.request.urlopen(h.http_url + "/healthz").read() == b"OK\n"
        with pytest.raises(ConfigError, match="401"):
            PolicyClient(h.url, connect_timeout_s=2)
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(h.http_url + "/stats.json")
        c = WebsocketClientPolicy(h.url, api_key="s3cret")
        assert c.infer(request_)["actions"].shape == (16, 10)
        req = urllib.request.Request(h.http_url + "/stats.json", headers={"Authorization": "Api-Key s3cret"})
        assert b'"answered": 1' in urllib.request.urlopen(req).read()
    with pytest.raises(ConfigError, match="empty"):
        serve_in_thread(policy, api_key=" ")


def test_concurrent_clients_and_malformed_frames(server, request_):
    """Clients in parallel all get chunks; >= 200 malformed frames each get a clear error, meanwhile."""
    spec = PolicyClient(server.url).metadata["observation_spec"]
    frames = malformed_frames(request_, spec, n=200)
    assert len(frames) >= 200 and len({c for c, _ in frames}) >= 40
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(load_server(server.url, request_, clients=4, requests=6,
                                                               action_shape=(16, 10))))
    t.start()
    tally = fuzz_server(server.url, frames)
    t.join()
    assert tally["clear"] == len(frames), tally["unclear"][:5]
    assert out["failures"] == 0 and out["answered"] == 24, out["failure_examples"]
    assert is_clear_error("posevla serve: DataError: x") and not is_clear_error("posevla serve: internal error (X)")


def test_remote_policy_sends_the_in_process_seeds(server, checkpoint, request_):
    """RemotePolicy numbers its calls like an in-process Policy, so both give the same chunks, call by call."""
    local = Policy.from_checkpoint(checkpoint, device="cpu", precision="fp32", seed=0)
    remote = RemotePolicy(server.url, seed=0)
    native = _native(request_, server.server.spec)
    for k in range(3):
        np.testing.assert_array_equal(remote(native)["actions"], local.infer(native)["actions"])
        assert remote.calls == k + 1
    assert call_seed(0, 2) == int(np.random.SeedSequence([0, 2]).generate_state(1)[0])
    remote.close()


def test_client_module_imports_no_torch():
    code = ("import sys, posevla.serving.client, posevla.serving.wire; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_serve_cli_refuses_bad_flags(capsys):
    from posevla.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--checkpoint", "x", "--port", "70000"])
    with pytest.raises(SystemExit) as e:
        main(["serve", "--checkpoint", "/nonexistent/run", "--no-viewer"])
    assert e.value.code == 1 and "checkpoint" in capsys.readouterr().err


def test_relative_ee_chunks_round_trip_to_the_in_process_chunk(policy, request_):
    """--relative-ee: the chunk comes relative to the request's EE pose; made absolute again on the robot side
    with the pose recorded at request time, it is the in-process chunk."""
    from posevla.serving.relative import chunk_to_absolute, reference_pose

    with serve_in_thread(policy, relative_ee=True) as h:
        c = PolicyClient(h.url)
        assert c.metadata["relative_ee"] is True
        reply = c.infer({**request_, "seed": 9})
        assert reply["relative"] is True and "ee_pose" not in reply
        native = _native(request_, h.server.spec)
        absolute = chunk_to_absolute(reply["actions"], reference_pose(native))
        np.testing.assert_allclose(absolute, policy.infer(native, seed=9)["actions"], atol=1e-5)
