"""posevla.serving: a post-trained policy over the network, and the robot side of it.

* :mod:`.wire`: the msgpack + numpy wire format (openpi-compatible, no pickle; torch-free).
* :mod:`.server`: ``posevla serve``, the websocket policy server (metadata frame, one reply per request,
  errors as text frames, ``/healthz``, the viewer's pages).
* :mod:`.client`: the light robot-side client (torch-free): :class:`~.client.PolicyClient`, and
  :class:`~.client.RemotePolicy` for closed-loop evaluation through a server.
* :mod:`.viewer`: the live plan viewer served by the server.
* :mod:`.robot`, :mod:`.relative`: the robot-side runtime (chunk execution, real-time chunking, relative EE
  chunks).

Nothing is imported here: ``import posevla.serving.client`` must stay free of torch.
"""
