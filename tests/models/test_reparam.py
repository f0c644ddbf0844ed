"""Structural reparameterization: the protocol, the generic walker and its leftover check, exact per variant."""

from __future__ import annotations

import ast
import inspect

import pytest
import torch
from torch import nn

from ffnet_deploy.errors import FFNetDeployError, ReparameterizationError
from ffnet_deploy.models import reparam
from ffnet_deploy.models.config import PUBLISHED
from ffnet_deploy.models.ffnet import FFNet, create_ffnet
from ffnet_deploy.models.layers import BNConv, ConvBN, RepDWConv, ResidualBlock, SkipBNConv
from ffnet_deploy.models.reparam import (
    FusionState,
    Reparameterizable,
    graph_stats,
    reparam_report,
    reparameterize_model,
    unfused_modules,
)
from tests.conftest import randomize_, tiered
from tests.models.helpers import RTOL, rel_err


def test_the_walker_knows_no_model_module():
    tree = ast.parse(inspect.getsource(reparam))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    model_modules = {f"ffnet_deploy.models.{m}" for m in ("config", "layers", "mixers", "ffnet", "checkpoint", "zoo")}
    assert not imported & model_modules


def test_blocks_implement_the_protocols():
    for block in (ConvBN(4, 4), BNConv(4, 4), RepDWConv(4, 4), SkipBNConv(4), ResidualBlock(nn.Identity(), 4)):
        assert isinstance(block, Reparameterizable)
    assert isinstance(ResidualBlock(nn.Identity(), 4), FusionState)
    model = create_ffnet("ffnet_test")
    assert isinstance(model, Reparameterizable) and isinstance(model, FusionState) and not model.is_fused
    assert not isinstance(nn.Conv2d(4, 4, 1), Reparameterizable)


def test_a_plain_module_is_walked_on_a_copy():
    model = randomize_(nn.Sequential(ConvBN(3, 8, 3), nn.GELU(), nn.Sequential(RepDWConv(8, 8, 5, 3)))).eval()
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        fused = reparameterize_model(model)
        assert rel_err(fused(x), model(x)) < RTOL
    assert [type(m) for m in fused.modules()] == [nn.Sequential, nn.Conv2d, nn.GELU, nn.Sequential, nn.Conv2d]
    assert isinstance(model[0], ConvBN)  # the input keeps its structure


def test_a_surviving_batchnorm_is_a_one_line_error():
    model = nn.Sequential(ConvBN(3, 8), nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)))
    with pytest.raises(ReparameterizationError, match=r"1 unfused module\(s\).*: 1\.1 \(BatchNorm2d\);") as err:
        reparameterize_model(model)
    assert isinstance(err.value, FFNetDeployError) and "\n" not in str(err.value)


def test_a_block_that_declares_itself_unfused_is_reported():
    class Stubborn(nn.Module):
        is_fused = False
        kept_unfused = ()

        def reparameterize(self) -> nn.Module:
            return self

    assert unfused_modules(nn.Sequential(Stubborn())) == ["0 (Stubborn)"]
    with pytest.raises(ReparameterizationError, match="Stubborn"):
        reparameterize_model(nn.Sequential(Stubborn()))


@pytest.mark.parametrize("variant", tiered([*PUBLISHED, "ffnet_test"], fast=("ffnet_1",)))  # the larger ones: slow tier
def test_every_variant_fuses_exactly(variant):
    model = randomize_(create_ffnet(variant), seed=7).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(x)
        fused = reparameterize_model(model)
        out = fused(x)
    assert rel_err(out, ref) < RTOL
    # the input model is untouched, in structure and in values
    assert model.state_dict().keys() == snapshot.keys()
    assert all(torch.equal(snapshot[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # nothing left to fuse
    kinds = {type(m) for m in fused.modules()}
    assert not kinds & {nn.BatchNorm2d, ConvBN, BNConv, RepDWConv, SkipBNConv}
    assert all(m.layer_scale is None for m in fused.modules() if isinstance(m, ResidualBlock))
    assert isinstance(fused, FFNet) and fused.is_fused and unfused_modules(fused) == []


def test_rep_branch_kernel_override_fuses():
    model = randomize_(create_ffnet("ffnet_test", rep_branch_kernel=5)).eval()
    assert model.stages[1][1].token_mixer[0].main.conv1.conv1.c.kernel_size == (5, 5)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(reparameterize_model(model)(x), model(x)) < RTOL


def test_fused_state_dict_loads_strictly_into_deploy_model():
    model = randomize_(create_ffnet("ffnet_test")).eval()
    fused = reparameterize_model(model)
    deploy = create_ffnet("ffnet_test", deploy=True).eval()
    deploy.load_state_dict(fused.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(deploy(x), fused(x))


def test_headless_model_keeps_final_bn_by_its_own_declaration():
    model = randomize_(create_ffnet("ffnet_test", num_classes=0)).eval()
    x = torch.randn(1, 3, 64, 64)
    fused = reparameterize_model(model)
    assert isinstance(fused.norm, nn.BatchNorm2d) and fused.kept_unfused == ("norm",)
    with torch.no_grad():
        assert rel_err(fused(x), model(x)) < RTOL
    # the deploy structure of a headless model keeps it too, so fused headless weights load strictly
    deploy = create_ffnet("ffnet_test", num_classes=0, deploy=True).eval()
    deploy.load_state_dict(fused.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(deploy(x), fused(x))


def test_report_counts_what_changed():
    model = create_ffnet("ffnet_1").eval()
    report = reparam_report(model, reparameterize_model(model))
    before, after = report.before, report.after
    assert before.ops["BatchNorm2d"] == 80 and "BatchNorm2d" not in after.ops
    assert after.modules < before.modules and after.params < before.params and after.total_ops < before.total_ops
    # a 2-branch RepVGG pair becomes one conv, and its add disappears
    assert after.ops["add"] < before.ops["add"]
    assert graph_stats(model).to_dict()["total_ops"] == before.total_ops


@pytest.mark.parametrize("mixer", ["attention", "convnext"])
def test_report_traces_every_mixer(mixer):
    model = create_ffnet("ffnet_test", token_mixer=mixer).eval()
    report = reparam_report(model, reparameterize_model(model))
    assert "BatchNorm2d" in report.before.ops and "BatchNorm2d" not in report.after.ops
