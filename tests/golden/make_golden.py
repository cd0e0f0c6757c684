"""Regenerate ``tests/golden/golden.json``: numbers of fixed-seed tiny models, pinned by ``test_golden.py``.

Run ``python tests/golden/make_golden.py`` (one thread, fp32; about a minute) and review the diff of
golden.json like code: a change means the numbers the code computes changed (initialisation, loss scaling,
data order, decoding). What is recorded:

* ``stage1_losses``: the losses of the first three steps of ``debug`` (the tiny model, batch 2) on six
  generated scenes (seed 7, 128x96: the ``tiny_dataset`` fixture of ``tests/conftest.py``);
* ``answer_ids`` / ``answer_logprobs``: the grammar-constrained greedy answer of that checkpoint to the first
  scene's first category (the decoded tokens and their log-probabilities);
* ``posttrain_losses`` and ``action_chunk``: two post-training steps of ``posttrain-tiny`` from scratch on
  ``tests/fixtures/lerobot_v3_tiny``, and the chunk ``Policy.infer`` returns on frame 0 (seed 0, 3 flow steps).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures"


def compute(scenes: Path, tmp: Path) -> dict:
    """The golden numbers, computed with the current code (``scenes``: the tiny_dataset; ``tmp``: scratch)."""
    from posevla.data.action_space import ActionConfig
    from posevla.data.actions import ActionDataset
    from posevla.data.collate import collate
    from posevla.data.formats.lerobot import load_lerobot_v3
    from posevla.data.formats.omni3d import load_omni3d
    from posevla.data.grounding import LabelFilter, build_grounding_example, scene_categories
    from posevla.eval.predict import GroundingPredictor
    from posevla.policy import Policy
    from posevla.training.config import DataConfig
    from posevla.training.configs import get_config
    from posevla.training.trainer import train

    torch.set_num_threads(1)
    stage1 = train(dataclasses.replace(get_config("debug"), data=DataConfig(train_data=str(scenes)),
                                       out_dir=str(tmp / "tok"), steps=3, save_every=3, precision="fp32"))
    out: dict = {"stage1_losses": [h["loss"] for h in stage1.history]}
    p = GroundingPredictor(stage1.checkpoint, device="cpu", precision="fp32")
    scene = load_omni3d(scenes / "dataset.json")[0]
    lf = LabelFilter()
    cat = scene_categories(scene, lf)[0]
    ex = build_grounding_example(scene, cat, image_size=p.spec.image_size, num_views=p.spec.num_views, label_filter=lf)
    g = p.grammar(cat)
    (res,) = p.model.generate(collate([ex], p.codec, p.tokenizer, p.spec, with_answer=False), [g], g.max_length())
    out["answer_ids"] = [int(i) for i in res.ids]
    out["answer_logprobs"] = [float(x) for x in res.logprobs]

    lerobot = FIXTURES / "lerobot_v3_tiny"
    base = get_config("posttrain-tiny")
    post = train(dataclasses.replace(
        base, init_checkpoint=None, data=DataConfig(train_data=str(lerobot)), out_dir=str(tmp / "act"), steps=2,
        batch_size=2, save_every=2, log_every=1, optim=dataclasses.replace(base.optim, warmup_steps=1),
        progress=False, precision="fp32", action=ActionConfig(constant_dims=("z", "R20", "R21")),
    ))
    out["posttrain_losses"] = [h["loss"] for h in post.history]
    policy = Policy.from_checkpoint(post.checkpoint, device="cpu", precision="fp32")
    data = ActionDataset(load_lerobot_v3(lerobot), policy.action_cfg, policy.spec, policy.stats)
    out["action_chunk"] = policy.infer(data.observation(0, 0), seed=0, num_steps=3)["actions"].tolist()
    return out


def main() -> None:
    from posevla.sim.tabletop import generate_dataset

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        generate_dataset(tmp / "scenes", 6, seed=7, width=128, height=96, workers=1, progress=False)
        golden = compute(tmp / "scenes", tmp)
    (HERE / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {HERE / 'golden.json'}")


if __name__ == "__main__":
    main()
