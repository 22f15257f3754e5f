"""The layer tricks: activations by name, ghost batch norm (training, running statistics, eval, compile), batch-norm
scales frozen at 1, and the param groups that give batch-norm biases their own LR and weight-decay scales."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipelines.layers import GhostBatchNorm2d, activation, batch_norm, freeze_bn_weights, param_groups


def sample(n: int = 8, c: int = 3, size: int = 4, *, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, size, size, generator=generator) * 3 + 1


def ghost(c: int = 3, *, g: int) -> GhostBatchNorm2d:
    """A ghost batch norm with a non-trivial scale and shift."""
    module = GhostBatchNorm2d(c, ghost_batch=g)
    with torch.no_grad():
        module.weight.copy_(torch.linspace(0.5, 2.0, c))
        module.bias.copy_(torch.linspace(-1.0, 1.0, c))
    return module


def plain_like(module: nn.BatchNorm2d) -> nn.BatchNorm2d:
    twin = nn.BatchNorm2d(module.num_features)
    twin.load_state_dict(module.state_dict())
    return twin


def test_activations_are_built_by_name() -> None:
    x = torch.tensor([-2.0, -0.1, 0.0, 1.5])
    assert torch.equal(activation("relu")(x.clone()), torch.relu(x))
    assert torch.allclose(activation("celu", celu_alpha=0.3)(x), torch.nn.functional.celu(x, alpha=0.3))
    assert activation("celu").alpha == 0.075  # Myrtle's, with learned BN scales
    assert torch.allclose(activation("gelu")(x), torch.nn.functional.gelu(x))
    with pytest.raises(ValueError, match="activation must be one of relu, celu, gelu, got 'swish'"):
        activation("swish")


def test_one_ghost_batch_the_size_of_the_batch_is_plain_batch_norm() -> None:
    x = sample(8)
    module = ghost(g=8)
    twin = plain_like(module)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_a, out_b = module(xa), twin(xb)
    assert torch.allclose(out_a, out_b, atol=1e-5)
    (out_a * x).sum().backward()
    (out_b * x).sum().backward()
    assert torch.allclose(xa.grad, xb.grad, atol=1e-4)
    assert torch.allclose(module.bias.grad, twin.bias.grad, atol=1e-4)
    assert torch.allclose(module.running_mean, twin.running_mean, atol=1e-6)
    assert torch.allclose(module.running_var, twin.running_var, atol=1e-5)


def test_each_chunk_is_normalised_by_its_own_statistics() -> None:
    x = torch.cat([sample(4, seed=1), sample(4, seed=2) * 5 - 3])  # two chunks with very different statistics
    module = ghost(g=4)
    chunk_bns = [plain_like(module), plain_like(module)]
    out = module(x)
    expected = torch.cat([bn(chunk) for bn, chunk in zip(chunk_bns, x.split(4), strict=True)])
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, plain_like(ghost(g=4))(x), atol=1e-2)  # not the whole batch's statistics
    # running statistics: the mean of what each chunk's own batch norm would hold (Myrtle's collated splits)
    assert torch.allclose(module.running_mean, (chunk_bns[0].running_mean + chunk_bns[1].running_mean) / 2)
    assert torch.allclose(module.running_var, (chunk_bns[0].running_var + chunk_bns[1].running_var) / 2)
    assert int(module.num_batches_tracked) == 1


def test_eval_mode_is_batch_norm_on_the_running_statistics() -> None:
    module = ghost(g=2)
    for seed in range(3):
        module(sample(6, seed=seed))
    module.eval()
    twin = plain_like(module).eval()
    x = sample(5, seed=9)  # any batch size in eval mode
    assert torch.allclose(module(x), twin(x), atol=1e-6)


def test_a_batch_that_is_not_a_multiple_of_the_ghost_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="a batch of 6 images is not a multiple of ghost_batch = 4"):
        ghost(g=4)(sample(6))


def test_ghost_batch_norm_compiles_as_one_graph_and_matches_eager() -> None:
    torch._dynamo.reset()
    module = ghost(g=2)
    twin = ghost(g=2)
    compiled = torch.compile(twin, backend="aot_eager", fullgraph=True)  # fullgraph: any graph break fails
    x = sample(6).contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_a, out_b = module(xa), compiled(xb)
    out_a.square().sum().backward()
    out_b.square().sum().backward()
    assert torch.allclose(out_a, out_b, atol=1e-5)
    assert torch.allclose(xa.grad, xb.grad, atol=1e-4)
    assert torch.allclose(module.running_var, twin.running_var, atol=1e-6)  # buffers updated through the graph
    module.eval()
    twin.eval()
    assert torch.allclose(module(x), compiled(x), atol=1e-5)


def test_batch_norm_is_ghost_only_when_asked() -> None:
    assert type(batch_norm(4)) is nn.BatchNorm2d
    made = batch_norm(4, ghost_batch=32)
    assert isinstance(made, GhostBatchNorm2d) and made.ghost_batch == 32


def conv_bn_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), batch_norm(4, ghost_batch=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)
    )


def test_frozen_batch_norm_scales_stay_at_one_and_out_of_training() -> None:
    model = conv_bn_net()
    bn = model[1]
    with torch.no_grad():
        bn.weight.fill_(0.25)
    freeze_bn_weights(model)
    assert torch.equal(bn.weight, torch.ones(4)) and not bn.weight.requires_grad
    assert bn.bias.requires_grad
    bn.reset_parameters()  # a reused model is re-initialised between runs
    assert torch.equal(bn.weight, torch.ones(4)) and not bn.weight.requires_grad
    model(sample(4)).sum().backward()
    assert bn.weight.grad is None and bn.bias.grad is not None
    trained = {id(p) for group in param_groups(model, weight_decay=5e-4) for p in group["params"]}
    assert id(bn.weight) not in trained and id(bn.bias) in trained


def test_batch_norm_biases_get_their_own_lr_and_weight_decay_scales() -> None:
    model = conv_bn_net()
    model(sample(2))  # materialise the lazy linear
    groups = param_groups(model, weight_decay=5e-4, bn_bias_lr_scale=16, bn_bias_decay_scale=1 / 16)  # Myrtle's
    biases, rest = groups
    assert biases["params"] == [model[1].bias]
    assert biases["lr_scale"] == 16 and biases["weight_decay"] == pytest.approx(5e-4 / 16)
    assert rest["params"] == [model[0].weight, model[1].weight, model[4].weight, model[4].bias]
    assert rest["lr_scale"] == 1 and rest["weight_decay"] == 5e-4
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True)
    assert [g["lr_scale"] for g in optimizer.param_groups] == [16, 1]  # the step reads it per group
    assert [g["weight_decay"] for g in optimizer.param_groups] == pytest.approx([5e-4 / 16, 5e-4])


def test_a_model_without_batch_norm_has_one_group() -> None:
    model = nn.Linear(3, 2)
    (group,) = param_groups(model, weight_decay=0.0, bn_bias_lr_scale=64)
    assert group["lr_scale"] == 1 and len(group["params"]) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ghost_batch_norm_replays_in_a_cuda_graph_under_bf16_autocast() -> None:
    module, twin = ghost(g=4).cuda(), ghost(g=4).cuda()
    x = sample(16, size=8).cuda().contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        expected = module(x)
    static = torch.zeros_like(x)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
        twin(static)  # warm-up before capture, as step.GraphStep does
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
        out = twin(static)
    static.copy_(x)
    graph.replay()
    assert out.dtype == expected.dtype == x.dtype  # float32 in, float32 out, as BatchNorm2d under autocast
    assert torch.allclose(out.float(), expected.float(), atol=1e-2)
    assert int(twin.num_batches_tracked) == 2  # the warm-up and the replay: the buffers update inside the graph
