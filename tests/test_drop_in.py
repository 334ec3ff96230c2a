"""CrAMTrainer as a drop-in Trainer: the features users turn on, failure paths, host reads per step."""

import copy
import os
import subprocess

import pytest
import torch
import transformers
from conftest import free_port, tiny_bert_config, torchrun
from reference_cram import reference_direction
from test_cram_update import LR, InOrder, make_data, sgd_args, stack
from torch.utils.data import SequentialSampler
from transformers import (
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from cram_hf import CrAMConfig, CrAMTrainer, KeepSparsityCallback, prune
from cram_hf.diagnostics import HostReadCounter
from cram_hf.trainer import _honours_num_items_in_batch

W = "bert.encoder.layer.1.output.dense.weight"


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def expected_after_one_step(before, data, rho, level, **kw):
    d, _ = reference_direction(before, stack(data), rho=rho, level=level, **kw)
    return {n: p.detach() - LR * d[n] for n, p in before.named_parameters()}


def assert_weights(model, expected):
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n], rtol=1e-5, atol=1e-6, msg=n)


# --- 1. both passes see the same inputs ---------------------------------------------------------------


class PopsLabels(InOrder):
    """The common subclass: takes the labels out of the inputs and computes the loss itself."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        logits = model(**inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
        return (loss, logits) if return_outputs else loss


def test_a_compute_loss_that_pops_labels_gets_the_reference_update(tmp_path, tiny_config):
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_config)
    before = copy.deepcopy(model)
    data = make_data(4)
    trainer = PopsLabels(
        model=model, args=sgd_args(tmp_path, cram_rho=0.1, cram_sparsities=["0.7"]), train_dataset=data
    )
    trainer.train()
    assert_weights(model, expected_after_one_step(before, data, 0.1, 0.7))


@pytest.mark.parametrize("feature", ["label_smoothing", "compute_loss_func"])
def test_label_smoothing_and_compute_loss_func_run_both_passes(tmp_path, tiny_config, feature):
    torch.manual_seed(0)
    seen = []

    def loss_func(outputs, labels, num_items_in_batch=None):
        seen.append(num_items_in_batch)
        logits = outputs.logits
        return torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))

    args = sgd_args(tmp_path, cram_rho=0.1, cram_sparsities=["0.7"])
    args.max_steps = 2
    extra = {}
    if feature == "label_smoothing":
        args.label_smoothing_factor = 0.1
    else:
        extra["compute_loss_func"] = loss_func
    trainer = InOrder(model=BertForMaskedLM(tiny_config), args=args, train_dataset=make_data(8), **extra)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(
        h["cram_perturbation_norm"] > 0 and h["cram_compressed_loss"] > 0 for h in logs
    )
    if feature == "compute_loss_func":
        assert len(seen) == 4  # clean and compressed pass of both steps


# --- 2. bound to the model actually trained -------------------------------------------------------------


def test_model_init_trains_the_fresh_model_with_cram(tmp_path, tiny_config):
    def init():
        torch.manual_seed(0)
        return BertForMaskedLM(tiny_config)

    data = make_data(4)
    trainer = InOrder(
        model_init=init, args=sgd_args(tmp_path, cram_rho=0.1, cram_sparsities=["0.7"]), train_dataset=data
    )
    trainer.train()
    assert trainer.state.log_history[0]["cram_perturbation_norm"] > 0
    assert_weights(trainer.model, expected_after_one_step(init(), data, 0.1, 0.7))


def test_a_parameter_unfrozen_after_construction_is_perturbed(tmp_path, tiny_config):
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_config)
    param = dict(model.named_parameters())[W]
    param.requires_grad_(False)
    data = make_data(4)
    trainer = InOrder(
        model=model, args=sgd_args(tmp_path, cram_rho=1.0, cram_sparsities=["0.7"]), train_dataset=data
    )
    param.requires_grad_(True)
    before = copy.deepcopy(model)
    trainer.train()
    assert_weights(model, expected_after_one_step(before, data, 1.0, 0.7))


# --- 3. off is the stock Trainer for every model; on, token-weighted models -------------------------------


def gpt2(seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=64,
            n_positions=16,
            n_embd=16,
            n_layer=2,
            n_head=2,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )


def varying_label_data(n=8, seq=10):
    """Label tokens per example vary (2..9): token weighting differs from per-micro-batch means."""
    rows = make_data(n, seq)
    for i, row in enumerate(rows):
        row["labels"] = row["labels"].clone()
        row["labels"][: 1 + i % 8] = -100
    return rows


GPT2_TARGETS = [r"h\.\d+\.mlp\.c_fc\.weight$"]


def test_gpt2_honours_num_items_in_batch_and_bert_mlm_does_not(tiny_config):
    assert _honours_num_items_in_batch(gpt2())
    assert not _honours_num_items_in_batch(BertForMaskedLM(tiny_config))


@pytest.mark.parametrize("accumulation", [1, 2])
def test_cram_off_is_the_stock_trainer_for_a_token_weighted_model(tmp_path, accumulation):
    data = varying_label_data()
    results = []
    for cls, args_cls, extra in (
        (InOrderStock, TrainingArguments, {}),
        (InOrder, CrAMConfig, dict(cram_rho=0.0, cram_sparsities=[])),
    ):
        model = gpt2()
        args = args_cls(
            output_dir=str(tmp_path / cls.__name__),
            max_steps=2,
            learning_rate=LR,
            optim="sgd",
            per_device_train_batch_size=4 // accumulation,
            gradient_accumulation_steps=accumulation,
            lr_scheduler_type="constant",
            max_grad_norm=0.0,
            report_to=[],
            save_strategy="no",
            logging_steps=1,
            seed=3,
            **extra,
        )
        trainer = cls(model=model, args=args, train_dataset=data)
        trainer.train()
        results.append((flat(model), [h.get("loss") for h in trainer.state.log_history]))
    assert torch.equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]


class InOrderStock(Trainer):
    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


def test_token_weighted_model_gets_each_direction_weighted_by_its_label_tokens(tmp_path):
    """d = Σ_i (n_i / N) · d_i, where micro-batch i is perturbed with ρ·K·(n_i / N)·g_i: its share of the
    step's gradient, scaled as if the micro-batches were equal (then exactly ρ·g_i)."""
    model = gpt2()
    before = copy.deepcopy(model)
    data = varying_label_data()
    args = sgd_args(tmp_path, cram_rho=0.2, cram_sparsities=["0.5"], cram_targets=GPT2_TARGETS)
    args.per_device_train_batch_size, args.gradient_accumulation_steps = 2, 4
    trainer = InOrder(model=model, args=args, train_dataset=data)
    assert trainer.model_accepts_loss_kwargs  # the stock view of GPT-2, kept
    trainer.train()
    micro = [stack(data[i : i + 2]) for i in range(0, 8, 2)]
    counts = [int((b["labels"][:, 1:] != -100).sum()) for b in micro]  # causal LM: labels shift by one
    total = sum(counts)
    expected = {n: p.detach().clone() for n, p in before.named_parameters()}
    for batch, n_i in zip(micro, counts):
        weight = n_i / total
        d, masks = reference_direction(before, batch, rho=0.2 * 4 * weight, level=0.5, targets=GPT2_TARGETS)
        assert masks  # the targets are compressed
        for n in expected:
            expected[n] -= LR * weight * d[n]
    assert_weights(model, expected)
    # The per-micro-batch mean instead (what BERT-family heads get) is measurably different.
    mean_d = [reference_direction(before, b, rho=0.2, level=0.5, targets=GPT2_TARGETS)[0] for b in micro]
    name = "transformer.h.1.mlp.c_fc.weight"
    wrong = before.get_parameter(name).detach() - LR * sum(d[name] for d in mean_d) / 4
    assert not torch.allclose(model.get_parameter(name).detach(), wrong, atol=1e-5)


# --- 4. the stock step's own pieces run in both passes ----------------------------------------------------


def test_the_stock_steps_pieces_run_in_both_passes(tmp_path, tiny_config, monkeypatch):
    calls = {"cp": 0, "cache": 0}
    original = Trainer._prepare_context_parallel_inputs

    def counting_cp(self, model, inputs):
        calls["cp"] += 1
        return original(self, model, inputs)

    monkeypatch.setattr(Trainer, "_prepare_context_parallel_inputs", counting_cp)

    def count_cache():
        calls["cache"] += 1

    if hasattr(transformers.trainer, "clear_device_cache"):  # transformers 5.x
        monkeypatch.setattr(transformers.trainer, "clear_device_cache", count_cache)
    else:  # 4.57: on a machine without an accelerator it falls through to torch.cuda.empty_cache()
        monkeypatch.setattr(torch.cuda, "empty_cache", count_cache)
    args = sgd_args(tmp_path, cram_rho=0.1, cram_sparsities=["0.7"])
    args.torch_empty_cache_steps = 1
    InOrder(model=BertForMaskedLM(tiny_config), args=args, train_dataset=make_data(4)).train()
    assert calls == {"cp": 2, "cache": 2}


@pytest.mark.skipif(
    not hasattr(Trainer, "loss_is_scaled_for_ga"), reason="transformers < 5 has no such attribute"
)
def test_loss_is_scaled_for_ga_is_honoured(tmp_path, tiny_config):
    """A subclass that normalises its loss over the accumulated batch itself and says so: the stock step
    must not divide by K again. Same update as the default; without the flag it would be halved."""

    class SelfScaled(InOrder):
        def compute_loss(self, model, inputs, *args, **kwargs):
            return (
                super().compute_loss(model, inputs, *args, **kwargs) / self.args.gradient_accumulation_steps
            )

    class Declared(SelfScaled):
        loss_is_scaled_for_ga = True

    updates = []
    for cls in (InOrder, Declared, SelfScaled):
        torch.manual_seed(0)
        model = BertForMaskedLM(tiny_config)
        start = dict(model.named_parameters())[W].detach().clone()
        args = sgd_args(tmp_path, cram_rho=0.1, cram_sparsities=["0.7"])
        args.per_device_train_batch_size, args.gradient_accumulation_steps = 2, 2
        cls(model=model, args=args, train_dataset=make_data(4)).train()
        updates.append(dict(model.named_parameters())[W].detach() - start)
    torch.testing.assert_close(updates[1], updates[0], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(updates[2], updates[0], rtol=1e-2)


# --- 5. failure paths ------------------------------------------------------------------------------------


def test_out_of_memory_while_ranking_restores_weights_and_gradient(tiny_config, monkeypatch, tmp_path):
    import cram_hf.cram_step as cram_step

    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_config)
    trainer = CrAMTrainer(
        model=model,
        args=CrAMConfig(
            output_dir=str(tmp_path), report_to=[], use_cpu=True, cram_rho=0.5, cram_sparsities=["0.9"]
        ),
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    trainer.current_gradient_accumulation_steps = 2
    trainer.training_step(model, stack(make_data(4)))  # a first micro-batch: a gradient is accumulated
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated while ranking)")

    monkeypatch.setattr(cram_step, "compression_mask_stream", oom)
    with pytest.raises(torch.OutOfMemoryError):
        trainer.training_step(model, stack(make_data(4, seed=1)))
    for n, p in model.named_parameters():
        assert torch.equal(p, snapshot[n]), n
        assert torch.equal(p.grad, grads[n]), n
    assert all(not p._backward_hooks for _, p in trainer.cram.targets)


def test_an_error_in_the_compressed_pass_restores_the_weights(tiny_config, tmp_path):
    class FailsSecond(CrAMTrainer):
        calls = 0

        def compute_loss(self, *args, **kwargs):
            FailsSecond.calls += 1
            if FailsSecond.calls == 2:
                raise RuntimeError("boom in the second pass")
            return super().compute_loss(*args, **kwargs)

    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_config)
    trainer = FailsSecond(
        model=model,
        args=CrAMConfig(
            output_dir=str(tmp_path), report_to=[], use_cpu=True, cram_rho=0.5, cram_sparsities=["0.9"]
        ),
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    trainer.current_gradient_accumulation_steps = 1
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match="boom"):
        trainer.training_step(model, stack(make_data(4)))
    for n, p in model.named_parameters():
        assert torch.equal(p, snapshot[n]), n
    assert all(not p._backward_hooks for _, p in trainer.cram.targets)


def test_an_interrupted_train_leaves_no_mask_hooks(tmp_path, tiny_config):
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_config)
    prune(model, 0.5)
    keep = KeepSparsityCallback.from_model(model)

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise KeyboardInterrupt

    args = sgd_args(tmp_path, cram_rho=0.1, cram_sparsities=["0.7"])
    args.max_steps = 3
    trainer = InOrder(model=model, args=args, train_dataset=make_data(12), callbacks=[keep, Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert not keep._hooks
    assert all(not p._backward_hooks for p in model.parameters())


# --- 7, 8. launch and defaults ---------------------------------------------------------------------------


@pytest.mark.slow
def test_torchrun_without_use_cpu_on_a_cpu_machine_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("with a GPU, torchrun sets up a real distributed run")
    script = tmp_path / "make_args.py"
    script.write_text(
        "import sys\nfrom cram_hf import CrAMConfig\nCrAMConfig(output_dir=sys.argv[1], report_to=[])\n"
    )
    cmd = torchrun("--nproc_per_node", 2, "--master_port", free_port(), script, tmp_path / "out")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "WORLD_SIZE=2" in output and "add --use_cpu true" in output


class NoLayerList(torch.nn.Module):
    """A model the stock Trainer trains with its defaults, with no Linear inside an nn.ModuleList."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)

    def forward(self, x, labels=None):
        logits = self.b(torch.relu(self.a(x)))
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


def test_default_args_work_for_a_model_without_a_layer_list(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gen = torch.Generator().manual_seed(0)
    data = [{"x": torch.randn(8, generator=gen), "labels": torch.tensor(i % 2)} for i in range(16)]
    trainer = CrAMTrainer(model=NoLayerList(), train_dataset=data)
    trainer.args.max_steps, trainer.args.report_to, trainer.args.save_strategy = 2, [], "no"
    trainer.train()
    assert trainer.state.global_step == 2
    assert trainer.cram.levels == [] and trainer.cram.rho > 0


# --- host reads -----------------------------------------------------------------------------------------


def step_reads(output_dir, level, scope="global", scaler=False, stock=False):
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config(num_hidden_layers=12))  # 72 targets, as many as bert-base
    levels = [level] if level else []
    args = CrAMConfig(
        output_dir=str(output_dir),
        report_to=[],
        use_cpu=True,
        cram_sparsities=levels,
        cram_scope=scope,
        cram_rho=0.05 if level else 0.0,
    )
    trainer = (Trainer if stock else CrAMTrainer)(model=model, args=args)
    if scaler:
        trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    trainer.current_gradient_accumulation_steps = 1
    batch = stack(make_data(4))
    trainer.training_step(model, batch)  # warm-up: lazily created state is not part of a step
    with HostReadCounter() as reads:
        trainer.training_step(model, batch)
    assert stock or level is None or len(trainer.cram.targets) == 72
    return reads


@pytest.fixture(scope="module")
def model_reads(tmp_path_factory):
    """Reads the model's own forward makes (transformers 5.x BERT: none; 4.57 checks its padding and
    attention mask on the host, 2 reads). A CrAM step runs two forwards and must add nothing to them."""
    return step_reads(tmp_path_factory.mktemp("reads"), None, stock=True).total


@pytest.mark.parametrize(
    "level,scope",
    [("0.7", "global"), ("0.7", "layer"), ("2:4", "global"), ("4:8", "global"), (None, "global")],
)
def test_a_cram_step_reads_nothing_back_to_the_host(level, scope, model_reads, tmp_path):
    reads = step_reads(tmp_path, level, scope)
    passes = 2 if level else 1  # CrAM off: the stock step, one forward
    assert reads.total == passes * model_reads, reads.by_op
    if transformers.__version__.startswith("5."):
        assert reads.total == 0, reads.by_op


def test_with_fp16_loss_scaling_the_finiteness_decision_is_the_only_host_read(model_reads, tmp_path):
    reads = step_reads(tmp_path, "0.7", scaler=True)
    assert reads.total == 1 + 2 * model_reads, reads.by_op


def test_the_host_read_counter_sees_what_it_counts():
    x = torch.randn(8)
    with HostReadCounter() as reads:
        float(x.sum()), x[x > 0], x.nonzero(), torch.bincount(torch.tensor([1, 2])), bool(x.any())
    assert reads.total == 5, reads.by_op


def test_perturbation_norm_combines_norms_living_on_different_devices():
    """A model spread over devices (device_map): norms are taken per device and moved before they are
    combined. Without CUDA only the combined value is checked; with it, a CPU + GPU mix too."""
    from cram_hf.cram_step import _global_norm

    tensors = [torch.randn(3, 4), torch.randn(5)]
    expected = torch.linalg.vector_norm(torch.cat([t.flatten() for t in tensors]))
    torch.testing.assert_close(_global_norm(tensors), expected)
    if torch.cuda.is_available():
        mixed = [tensors[0].cuda(), tensors[1]]
        torch.testing.assert_close(_global_norm(mixed).cpu(), expected)


@pytest.mark.parametrize("level", ["0.7", "2:4"])
def test_gradient_checkpointing_gives_the_same_update(tmp_path, tiny_config, level):
    """Recomputed activations use the weights of their own pass (θ in the clean backward, θ̂ in the
    compressed one): the step with gradient checkpointing is the step without it."""
    updates = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = BertForMaskedLM(tiny_config)
        args = sgd_args(tmp_path, cram_rho=0.2, cram_sparsities=[level])
        args.gradient_checkpointing = checkpointing
        InOrder(model=model, args=args, train_dataset=make_data(4)).train()
        updates.append(flat(model))
    torch.testing.assert_close(updates[1], updates[0], rtol=1e-5, atol=1e-7)
