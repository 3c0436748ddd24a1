"""Recorders follow their layer's device (a model split over devices keeps its state spread)."""

from __future__ import annotations

import torch

from indexer.forward.devices import layer_device, site_devices
from indexer.forward.sites import Site


class _Bridge(torch.nn.Module):
    def __init__(self, devices):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(2, 2, device=d) for d in devices)


def test_each_site_gets_its_layers_device():
    bridge = _Bridge(["cpu", "meta", "cpu"])  # 'meta' stands in for a second accelerator here
    plan = [Site("mlp_post", 0, 4), Site("heads", 1, 8), Site("mlp_post", 1, 4), Site("mlp_post", 2, 4)]
    assert site_devices(bridge, plan, "cpu") == {plan[0]: "cpu", plan[1]: "meta", plan[2]: "meta", plan[3]: "cpu"}
    assert layer_device(bridge, 7, "cuda:1") == "cuda:1"  # no such block: the run's device
    assert layer_device(object(), 0, "cpu") == "cpu"
