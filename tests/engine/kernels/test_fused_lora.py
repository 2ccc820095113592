"""peft's LoRA layers with a fused forward: peft's results, peft's names, less kept for backward."""

from __future__ import annotations

import copy as copy_module

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from loratk.engine.kernels import fused_lora
from loratk.engine.kernels.fused_lora import FusedLoraForward, fuse_lora_layers, lora_delta, unfused_targets
from loratk.engine.kernels.lora_dropout import dropped_units
from loratk.engine.memory.measure import kept_for_backward

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def reference(result, x, weight_a, weight_b, p, seed, scaling, dtype, as_mask=False):
    """peft's path with the same dropped units: dropout, lora_A, lora_B, scaling, sum."""
    keep = torch.ones(x.numel(), dtype=torch.bool)
    keep[dropped_units(x.numel(), p, seed, as_mask=as_mask)] = False
    dropped = torch.where(keep.view(x.shape), x, 0) / (1 - p)
    delta = dropped.to(dtype) @ weight_a.to(dtype).T @ weight_b.to(dtype).T * scaling
    return result + delta.to(result.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("as_mask", [False, True], ids=["indices", "mask"])  # the mask: CUDA's form
def test_the_fused_delta_and_its_gradients_equal_peft_s_path(dtype, p, input_grad, as_mask, monkeypatch):
    monkeypatch.setattr(fused_lora, "dropped_units",
                        lambda *args, **kwargs: dropped_units(*args, **kwargs, as_mask=as_mask))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 10, 32, generator=generator, dtype=dtype).requires_grad_(input_grad)
    result = torch.randn(3, 10, 24, generator=generator, dtype=dtype, requires_grad=True)
    weight_a = torch.randn(8, 32, generator=generator, requires_grad=True)
    weight_b = torch.randn(24, 8, generator=generator, requires_grad=True)
    inputs = (result, x, weight_a, weight_b)
    wanted = [t for t in inputs if t.requires_grad]
    out = lora_delta(*inputs, p, 123, 2.0, dtype)
    grad_out = torch.randn(out.shape, generator=generator, dtype=dtype)
    fused = torch.autograd.grad(out, wanted, grad_out)
    expected_out = reference(*inputs, p, 123, 2.0, dtype, as_mask)
    expected = torch.autograd.grad(expected_out, wanted, grad_out)
    assert out.dtype == dtype
    for got, want in zip([out, *fused], [expected_out, *expected]):
        assert got.dtype == want.dtype
        # a few units in the last place of the largest value (the sums run in another order)
        scale = (4 * torch.finfo(dtype).eps if dtype == torch.float32 else 2e-2) * want.abs().max().item()
        torch.testing.assert_close(got, want, atol=scale, rtol=1e-5 if dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize("kind", ["fresh", "view"])
def test_the_delta_goes_into_a_fresh_base_output_in_place_and_beside_a_view(kind):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 10, 32, generator=generator, requires_grad=True)
    base = torch.randn(24, 32, generator=generator, requires_grad=True)
    weight_a = torch.randn(8, 32, generator=generator, requires_grad=True)
    weight_b = torch.randn(24, 8, generator=generator, requires_grad=True)
    inputs = (x, base, weight_a, weight_b)

    def run(delta):
        result = x @ base.T  # a base layer's output, fresh
        if kind == "view":
            result = result.transpose(0, 1).transpose(0, 1)
        out = delta(result, x, weight_a, weight_b, 0.0, 0, 2.0, torch.float32)
        return out, result

    out, result = run(lora_delta)
    assert (out is result) == (kind == "fresh")
    grad_out = torch.randn(out.shape, generator=generator)
    got = torch.autograd.grad(out, inputs, grad_out)
    expected_out, _ = run(reference)
    expected = torch.autograd.grad(expected_out, inputs, grad_out)
    torch.testing.assert_close(out, expected_out)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def tiny_peft(dropout=0.05, seed=0, **lora):
    config = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    return get_peft_model(model, LoraConfig(r=4, lora_dropout=dropout, init_lora_weights=False,
                                            target_modules=TARGETS, **lora))


IDS = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])


def optimizer_step(model):
    """What an optimizer does to the adapter weights, without changing them: an in-place update."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.mul_(1)


def logits_and_gradients(model):
    model.zero_grad()
    out = model(input_ids=IDS, labels=IDS)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# rsLoRA and per-module ranks/alphas change only each layer's rank and scaling, which the fused
# layers read from peft's layer: they take the fused path, proven equal to peft's here.
SCALING_VARIANTS = {"plain": {}, "rslora": {"use_rslora": True},
                    "patterns": {"use_rslora": True, "rank_pattern": {"k_proj": 2, "down_proj": 6},
                                 "alpha_pattern": {"q_proj": 3.0, "up_proj": 32.0}}}


@pytest.mark.parametrize("variant", list(SCALING_VARIANTS))
def test_fusing_keeps_names_outputs_and_gradients(variant):
    model = tiny_peft(dropout=0.0, **SCALING_VARIANTS[variant])  # no dropout: peft's numbers, up to rounding
    names = [n for n, _ in model.named_parameters()]
    logits, grads = logits_and_gradients(model.train())
    assert fuse_lora_layers(model) == 14
    assert [n for n, _ in model.named_parameters()] == names
    assert sum(isinstance(m, FusedLoraForward) for m in model.modules()) == 14
    for _ in range(3):  # the first call learns which layers share an input, the next ones use it
        fused_logits, fused_grads = logits_and_gradients(model)
        optimizer_step(model)
        torch.testing.assert_close(fused_logits, logits, atol=1e-5, rtol=1e-5)
        assert fused_grads.keys() == grads.keys()
        for name in grads:
            torch.testing.assert_close(fused_grads[name], grads[name], atol=1e-5, rtol=1e-4)
    assert fuse_lora_layers(model) == 0  # once is enough
    assert unfused_targets(model) == {}


def test_layers_of_a_variant_are_named_with_the_reason():
    model = tiny_peft(dropout=0.0, use_dora=True)
    fuse_lora_layers(model)
    assert unfused_targets(model) == {name: "DoRA variant" for name in TARGETS}


@pytest.fixture
def down_calls(monkeypatch):
    """How many adapters each ``_LoraDown`` call served, call by call."""
    calls = []
    apply = fused_lora._LoraDown.apply

    def counting(x, p, seed, dtype, *weights):
        calls.append(len(weights))
        return apply(x, p, seed, dtype, *weights)

    monkeypatch.setattr(fused_lora._LoraDown, "apply", counting)
    return calls


def in_place_update(model):
    return lambda: optimizer_step(model)


def adamw(**options):
    def make(model):
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, **options).step
    return make


# fused AdamW (transformers' default optimizer) changes the weights without bumping their version
@pytest.mark.parametrize("make_step", [in_place_update, adamw(fused=True), adamw(foreach=True), adamw(foreach=False)],
                         ids=["in-place", "adamw-fused", "adamw-foreach", "adamw-loop"])
def test_layers_that_read_one_input_share_one_down_product(down_calls, make_step):
    model = tiny_peft()
    fuse_lora_layers(model)
    model.train()
    step = make_step(model)
    for _ in range(2):  # learning; the grouping waits for the weights to change
        model(input_ids=IDS, labels=IDS).loss.backward()
        assert down_calls == [1] * 14
        down_calls.clear()
    step()
    model(input_ids=IDS, labels=IDS).loss.backward()
    assert down_calls == [3, 1, 2, 1] * 2  # per decoder layer: q/k/v, o, gate/up, down
    down_calls.clear()
    model.eval()
    with torch.no_grad():
        model(input_ids=IDS)
    assert down_calls == [3, 1, 2, 1] * 2


def test_the_grouping_can_be_learned_before_training_without_drawing_random_numbers(down_calls):
    model = tiny_peft()  # with dropout: a training forward would draw seeds
    fuse_lora_layers(model)
    model.train()
    state = torch.get_rng_state()
    assert fused_lora.learn_shared_inputs(model)
    assert torch.equal(torch.get_rng_state(), state) and model.training
    down_calls.clear()
    model(input_ids=IDS, labels=IDS).loss.backward()  # the first step is grouped
    assert down_calls == [3, 1, 2, 1] * 2


def test_without_autograd_the_grouping_starts_at_the_next_call(down_calls):
    model = tiny_peft()
    fuse_lora_layers(model)
    with torch.no_grad():
        model(input_ids=IDS)
        down_calls.clear()
        model(input_ids=IDS)
    assert down_calls == [3, 1, 2, 1] * 2


def test_layers_that_share_an_input_share_its_dropout_mask():
    model = tiny_peft(dropout=0.5)
    fuse_lora_layers(model)
    model.train()
    attention = model.get_base_model().model.layers[0].self_attn
    seen = {}
    for name in ("q_proj", "k_proj", "v_proj"):
        layer = getattr(attention, name)
        layer.register_forward_hook(lambda module, args, out, name=name: seen.__setitem__(name, (args[0], out)))
    seeds = []
    units = fused_lora.dropped_units
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fused_lora, "dropped_units", lambda n, p, seed, device: seeds.append(seed) or units(n, p, seed, device))
        with torch.no_grad():
            model(input_ids=IDS)  # learn
            seeds.clear()
            model(input_ids=IDS)
    x, _ = seen["q_proj"]
    for name in ("q_proj", "k_proj", "v_proj"):  # all three with the first draw of the layer
        layer = getattr(attention, name)
        base = layer.base_layer(x)
        wanted = reference(base, x, layer.lora_A["default"].weight, layer.lora_B["default"].weight, 0.5, seeds[0],
                           layer.scaling["default"], torch.float32)
        torch.testing.assert_close(seen[name][1], wanted, atol=1e-5, rtol=1e-5)


class _Pair(torch.nn.Module):
    """Two layers under one parent that read one input or two, as the caller says."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(16, 8), torch.nn.Linear(16, 8)

    def forward(self, x, y):
        return self.a(x) + self.b(y)


def test_a_layer_that_stops_sharing_the_input_computes_its_own(down_calls):
    torch.manual_seed(0)
    model = get_peft_model(_Pair(), LoraConfig(r=4, target_modules=["a", "b"], init_lora_weights=False))
    model.eval()
    x, other = torch.randn(5, 16), torch.randn(5, 16)
    with torch.no_grad():
        expected = {"same": model(x, x), "different": model(x, other)}
        fuse_lora_layers(model)
        for case, calls in [("same", [1, 1]), ("same", [2]), ("different", [2, 1]), ("different", [1, 1]),
                            ("same", [1, 1]), ("same", [2])]:
            down_calls.clear()
            torch.testing.assert_close(model(x, x if case == "same" else other), expected[case])
            assert down_calls == calls, case


def test_dropout_is_on_while_training_only():
    model = tiny_peft()
    model.eval()
    with torch.no_grad():
        before = model(input_ids=IDS).logits
    fuse_lora_layers(model)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS).logits, before, atol=1e-5, rtol=1e-5)
        model.train()
        assert not torch.allclose(model(input_ids=IDS).logits, before, atol=1e-3)


def test_disabled_merged_and_dora_adapters_take_peft_s_path():
    model = tiny_peft(dropout=0.0, use_dora=True)
    model.eval()
    with torch.no_grad():
        dora = model(input_ids=IDS).logits
        fuse_lora_layers(model)
        assert torch.equal(model(input_ids=IDS).logits, dora)  # DoRA: peft's own forward, bit for bit
    plain = tiny_peft(dropout=0.0)
    fuse_lora_layers(plain)
    plain.eval()
    with torch.no_grad():
        with plain.disable_adapter():
            base = plain(input_ids=IDS).logits
        adapted = plain(input_ids=IDS).logits
        plain.merge_adapter()
        torch.testing.assert_close(plain(input_ids=IDS).logits, adapted, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(base, adapted)


def test_parameters_deepspeed_zero3_gathers_per_module_take_peft_s_path(down_calls):
    model = tiny_peft(dropout=0.0)
    fuse_lora_layers(model)
    layer = model.get_base_model().model.layers[0].self_attn.k_proj
    layer.lora_A["default"].weight.ds_id = 7  # what ZeRO-3 marks its partitioned parameters with
    with torch.no_grad():
        model(input_ids=IDS)
        down_calls.clear()
        model(input_ids=IDS)
    assert down_calls == [2, 1, 2, 1] + [3, 1, 2, 1]  # q/v, o, gate/up, down; then the second layer


def test_a_trained_fused_adapter_loads_in_plain_peft(tmp_path):
    model = tiny_peft()
    fuse_lora_layers(model)
    model.train()
    model(input_ids=IDS, labels=IDS).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_peft(dropout=0.0).get_base_model(), tmp_path)
    state = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    for name, param in model.named_parameters():
        if "lora_" in name:
            assert torch.equal(state[name], param)


def test_the_same_seed_gives_the_same_gradients_with_checkpointing():
    def gradients(checkpointing):
        model = tiny_peft()
        fuse_lora_layers(model)
        if checkpointing:
            model.get_base_model().gradient_checkpointing_enable({"use_reentrant": False})
            model.enable_input_require_grads()
        model.train()
        # the first step learns the shared inputs between forward and recomputation, the second
        # uses them: both recompute what they saved
        for _ in range(2):
            model.zero_grad()
            torch.manual_seed(42)
            model(input_ids=IDS, labels=IDS).loss.backward()
            optimizer_step(model)
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain, recomputed = gradients(False), gradients(True)
    assert plain.keys() == recomputed.keys()
    for name in plain:  # the recomputed forward draws the same dropped units
        torch.testing.assert_close(recomputed[name], plain[name], atol=1e-6, rtol=1e-5)


def saved_bytes(model):
    ids = IDS.repeat(4, 8)
    model(input_ids=ids, labels=ids).loss.backward()  # the fused layers learn their shared inputs
    optimizer_step(model)
    return kept_for_backward(lambda: model(input_ids=ids, labels=ids).loss, leave_out=list(model.parameters()))


def test_no_mask_or_dropped_copy_is_kept_for_backward():
    plain = tiny_peft().train()
    fused = tiny_peft().train()
    fuse_lora_layers(fused)
    tokens, hidden, inter, layers = 4 * 64, 32, 64, 2
    # peft keeps a mask and a dropped input per adapted module (six read 32 features, down_proj 64);
    # fused, one input per group of modules that read the same tensor (q/k/v, o, gate/up, down).
    per_module = tokens * 4 * 2 * (6 * hidden + inter)
    per_group = tokens * 4 * (3 * hidden + inter)
    saved = layers * (per_module - per_group)
    # The first layer's input needs no gradient, so peft keeps no masks there for q, k and v.
    assert 0.9 * saved <= saved_bytes(plain) - saved_bytes(fused) <= saved


def test_a_deep_copy_keeps_the_grouping_and_nothing_pending():
    model = tiny_peft()
    fuse_lora_layers(model)
    model.eval()
    with torch.no_grad():
        model(input_ids=IDS)
        model(input_ids=IDS)
    copied = copy_module.deepcopy(model)
    attention = copied.get_base_model().model.layers[0].self_attn
    siblings = attention.q_proj._loratk_siblings
    assert siblings.members(attention.q_proj, None) == [attention.q_proj, attention.k_proj, attention.v_proj]
    assert siblings._pending == {} and siblings._input is None
    with torch.no_grad():
        torch.testing.assert_close(copied(input_ids=IDS).logits, model(input_ids=IDS).logits)


@pytest.mark.cuda
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_cuda_fused_layers_equal_peft_s_and_make_no_host_sync(p, tiny_model_factory):
    """A peft model on the GPU in bf16 autocast, fused and not: same outputs and adapter gradients
    (dropout off), and the fused forward synchronises with the host nowhere in loratk's code."""
    from loratk.testing import loratk_syncs, syncs_reported

    path = tiny_model_factory("llama")
    models = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16),
                               LoraConfig(r=8, lora_dropout=p, target_modules=TARGETS, init_lora_weights=False))
        if fused:
            assert fuse_lora_layers(model) == 2 * len(TARGETS)
        models.append(model.cuda().train())
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0)).cuda()
    outputs = []
    for index, model in enumerate(models):
        with torch.autocast("cuda", dtype=torch.bfloat16), syncs_reported() as syncs:
            logits = model(input_ids=ids).logits
        if index == 1:
            assert not loratk_syncs(syncs), loratk_syncs(syncs)
        logits.float().square().mean().backward()
        outputs.append(logits.float())
    if not p:
        torch.testing.assert_close(outputs[1], outputs[0], atol=0.05, rtol=0.02)
        for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters()):
            if a.requires_grad:
                torch.testing.assert_close(b.grad, a.grad, atol=0.05, rtol=0.05, msg=name)
