"""Contrastive losses over the global batch: 2 gloo ranks on CPU compute the single-process loss
of the concatenated batch, and after DDP's average their gradients are its gradients."""
from __future__ import annotations


import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmt_core import distributed
from mmt_core.config import LossConfig
from mmt_core.engine import may_leave_parameters_unused
from mmt_core.losses import compute_losses
from mmt_core.models.output import ModelOutput

D_IN, D_PROJ, CLASSES = 6, 5, 3
EVERY_TERM = LossConfig(avc=True, imc=True, al=True, imal=True)


class TwoTowers(torch.nn.Module):
    """Stand-in for an MMT's last layers: features -> logits and g_A / g_V projections."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(2 * D_IN, CLASSES)
        self.audio_proj = torch.nn.Linear(D_IN, D_PROJ)
        self.video_proj = torch.nn.Linear(D_IN, D_PROJ)

    def forward(self, a, v):
        return ModelOutput(head_logits={"label": self.head(torch.cat([v, a], 1))},
                           audio_proj=self.audio_proj(a), video_proj=self.video_proj(v))


def _data(sizes):
    g = torch.Generator().manual_seed(0)
    n = sum(sizes)
    return ([torch.randn(n, D_IN, generator=g) for _ in range(4)],  # a, v, a2, v2
            torch.randint(0, CLASSES, (n,), generator=g))


def _loss(model, x, y, cfg, gather=None):
    a, v, a2, v2 = x
    out, out2 = model(a, v), model(a2, v2)
    return compute_losses(out, {"label": y}, cfg=cfg, epoch=1, out2=out2, gather=gather)


def _single(sizes, cfg):
    torch.manual_seed(0)
    model = TwoTowers()
    x, y = _data(sizes)
    losses = _loss(model, x, y, cfg)
    losses["total"].backward()
    return ({k: float(torch.as_tensor(v).detach()) for k, v in losses.items()},
            {k: p.grad.clone() for k, p in model.named_parameters()})


def _rank(rank, world, init_file, sizes, cfg, result):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(TwoTowers())
        x, y = _data(sizes)
        lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
        local = [t[lo:hi] for t in x]
        got_sizes = distributed.all_sizes(hi - lo)
        losses = _loss(model, local, y[lo:hi], cfg, distributed.row_gatherer(got_sizes))
        losses["total"].backward()  # DDP averages the gradients over the ranks
        result[rank] = {"sizes": got_sizes,
                        "terms": {k: float(torch.as_tensor(v).detach()) for k, v in losses.items()},
                        "grads": {k: p.grad.clone() for k, p in model.module.named_parameters()}}
    finally:
        dist.destroy_process_group()


def _run_two_ranks(tmp_path, sizes, cfg):
    with mp.Manager() as manager:
        result = manager.dict()
        mp.spawn(_rank, args=(2, str(tmp_path / "init"), sizes, cfg, result), nprocs=2)
        return dict(result)


def test_two_ranks_equal_single_process_loss_and_gradients(tmp_path):
    sizes = [4, 4]
    single, grads = _single(sizes, EVERY_TERM)
    ranks = _run_two_ranks(tmp_path, sizes, EVERY_TERM)
    for r in (0, 1):
        assert ranks[r]["sizes"] == sizes
        for k in ("avc", "imc", "al", "imal"):  # every rank: the loss of the global batch
            assert ranks[r]["terms"][k] == pytest.approx(single[k], rel=1e-6, abs=1e-7)
        for k, g in grads.items():
            torch.testing.assert_close(ranks[r]["grads"][k], g, rtol=1e-5, atol=1e-7)
    # CE stays per rank; with equal batches their mean is the global CE
    ce = (ranks[0]["terms"]["ce"] + ranks[1]["terms"]["ce"]) / 2
    assert ce == pytest.approx(single["ce"], rel=1e-6)
    # ... and without the gather each rank would see a different, smaller problem
    assert ranks[0]["terms"]["avc"] != pytest.approx(_single([4], EVERY_TERM)[0]["avc"])


def test_two_ranks_with_unequal_batches_gather_every_row(tmp_path):
    """A rank that dropped broken clips has fewer rows: the gather pads and trims, and the
    contrastive gradients still equal the single-process ones."""
    sizes = [3, 5]
    cfg = LossConfig(ce=0.0, avc=True, imc=True)  # CE per rank would weigh the ranks' rows unequally
    single, grads = _single(sizes, cfg)
    ranks = _run_two_ranks(tmp_path, sizes, cfg)
    for r in (0, 1):
        assert ranks[r]["sizes"] == sizes
        assert ranks[r]["terms"]["total"] == pytest.approx(single["total"], rel=1e-6)
        for k, g in grads.items():
            if k.startswith("head."):  # CE weight 0: no gradient to compare
                continue
            torch.testing.assert_close(ranks[r]["grads"][k], g, rtol=1e-5, atol=1e-7)


def test_one_process_gather_is_the_identity():
    x = torch.randn(3, 2)
    assert distributed.all_sizes(3) == [3]
    assert distributed.row_gatherer([3])(x) is x


@pytest.mark.parametrize("loss,two_views,modalities,aux", [
    (LossConfig(), True, "av", False),
    (LossConfig(imc=False), False, "av", False),
    (LossConfig(avc=False, imc=False), False, "av", False),
    (LossConfig(imc=False), False, "a", False),
    (LossConfig(avc=False), True, "a", False),
    (LossConfig(), True, "av", True),
])
def test_unused_parameter_rule_matches_a_real_backward(loss, two_views, modalities, aux):
    """DDP searches for unused parameters only when a step can leave one without a gradient:
    the rule must agree with what a real backward of that set-up leaves untouched."""
    from mmt_core import create_model

    kw = {"aux_heads": aux} if aux else {}
    model = create_model("mmt_tiny" if modalities == "av" else "mat_tiny", num_classes=3, **kw)
    torch.manual_seed(0)
    x = {k: torch.randn(2, *shape) for k, shape in model.input_spec.items()}
    y = {"label": torch.tensor([0, 1])}
    cfg = LossConfig(**{**loss.__dict__, "aux_ce": 0.0})
    out = model(**x)
    out2 = model(**x) if two_views else None
    compute_losses(out, y, cfg=cfg, epoch=1, out2=out2)["total"].backward()
    unused = [k for k, p in model.named_parameters() if p.grad is None]
    assert may_leave_parameters_unused(model, cfg, two_views) == bool(unused), unused
