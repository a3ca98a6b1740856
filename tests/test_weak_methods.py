"""The six scribble methods: their losses on toy models, DMPLS mixing, SSCR wiring, model building."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dias_dist.methods import weak_losses as wl
from dias_dist.methods.dmpls import DMPLS, mixed_pseudo_label
from dias_dist.methods.em import EM
from dias_dist.methods.ivm import IVM
from dias_dist.methods.pce import PCE
from dias_dist.methods.rloss import RLoss
from dias_dist.methods.sscr import SSCR, DualNet, sscr_terms

B, C, T, S = 2, 3, 8, 12


class LogitsModel(nn.Module):
    """Ignores its input except for the batch size and returns learnable logits (B, C, S, S)."""

    input_layout = "frames"

    def __init__(self, logits=None, classes=C, seed=0):
        super().__init__()
        if logits is None:
            logits = torch.randn(B, classes, S, S, generator=torch.Generator().manual_seed(seed))
        self.logits = nn.Parameter(logits.clone())
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.logits + 0 * x.sum()


class DualDecoderToy(nn.Module):
    """Stand-in for unet_cct: (main, aux) in training mode, main in eval mode."""

    input_layout = "frames"

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(11)
        self.main = nn.Parameter(torch.randn(B, 2, S, S, generator=g))
        self.aux = nn.Parameter(torch.randn(B, 2, S, S, generator=g))

    def forward(self, x):
        return (self.main, self.aux) if self.training else self.main


def toy_batch(annotated_fraction=0.2, seed=1):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 2, (B, S, S), generator=g)
    target[torch.rand(B, S, S, generator=g) > annotated_fraction] = 255
    return {"image": torch.randn(B, T, S, S, generator=g), "target": target}


SINGLE_NET_METHODS = [
    PCE(), PCE(dice=False), EM(), RLoss(), RLoss(kernels=[{"weight": 1, "xy": 6, "intensity": 0.1}]),
    IVM(), IVM(intensity="argmin"),
]


@pytest.mark.parametrize("method", SINGLE_NET_METHODS, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("annotated_fraction", [0.2, 0.0])
def test_single_net_methods_give_finite_losses_even_without_annotation(method, annotated_fraction):
    model = LogitsModel()
    out = method.losses(model, toy_batch(annotated_fraction))
    assert method.target_kind == "scribble"
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.values())
    out["total"].backward()
    assert torch.isfinite(model.logits.grad).all()


def test_pce_method_gives_zero_gradient_on_unannotated_pixels_and_regularisers_do_not():
    batch = toy_batch()
    unannotated = batch["target"] == 255
    for method, expect_zero in [(PCE(), True), (PCE(dice=False), True), (EM(), False), (RLoss(), False), (IVM(), False)]:
        model = LogitsModel()
        method.losses(model, batch)["total"].backward()
        grad_BHW = model.logits.grad.abs().sum(1)
        assert bool((grad_BHW[unannotated] == 0).all()) == expect_zero, type(method).__name__


def test_total_is_sup_plus_weighted_regulariser():
    batch, model = toy_batch(), LogitsModel()
    out = EM(weight=5).losses(model, batch)
    assert torch.allclose(out["total"], out["pce"] + out["pdice"] + 5 * out["entropy"])
    out = RLoss(weight=0.1).losses(model, batch)
    assert torch.allclose(out["gated_crf"], wl.gated_crf_loss(model.logits, [{"weight": 0.1, "xy": 6}], 5))
    out = IVM(weight=0.01).losses(model, batch)
    assert torch.allclose(out["total"], out["sup"] + 0.01 * out["inter_intra"])


def test_ivm_intensity_minip_or_reference_argmin():
    x = torch.tensor([3.0, -1.0, 2.0, -0.5]).view(1, 4, 1, 1).expand(1, 4, 2, 2)
    assert wl.intensity_image(x, "minip").flatten().tolist() == [-1.0] * 4
    assert wl.intensity_image(x, "argmin").flatten().tolist() == [1.0] * 4
    assert wl.intensity_image(x.unsqueeze(1), "minip").shape == (1, 2, 2)  # sequence layout


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: PCE(dice="yes"), "method.params.dice"),
        (lambda: PCE(num_classes=4), "method.params.num_classes"),
        (lambda: EM(weight=-1), "method.params.weight"),
        (lambda: RLoss(kernels=[{"weight": 1, "rgb": 0.1}]), "method.params.kernels"),
        (lambda: RLoss(radius=0), "method.params.radius"),
        (lambda: IVM(intensity="max"), "method.params.intensity"),
        (lambda: SSCR(pseudo="both"), "method.params.pseudo"),
        (lambda: SSCR(consistency="mse"), "method.params.consistency"),
        (lambda: DMPLS(num_classes=1), "method.params.num_classes"),
    ],
)
def test_bad_method_params_are_value_errors_naming_the_key(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


# ---------------------------------------------------------------------- DMPLS


def test_dmpls_mixes_with_one_beta_per_iteration(monkeypatch):
    method, model, batch = DMPLS(), DualDecoderToy(), toy_batch()
    draws = []
    original = method.draw_beta
    monkeypatch.setattr(method, "draw_beta", lambda: draws.append(original()) or draws[-1])
    torch.manual_seed(0)
    out = method.losses(model, batch)
    assert len(draws) == 1 and out["beta"].item() == pytest.approx(draws[0])
    p1, p2 = torch.softmax(model.main, 1), torch.softmax(model.aux, 1)
    label = (draws[0] * p1 + (1 - draws[0]) * p2).argmax(1)
    expected_pls = 0.5 * (wl.pseudo_label_dice(p1, label) + wl.pseudo_label_dice(p2, label))
    assert torch.allclose(out["pls"], expected_pls)
    expected_sup = 0.5 * (F.cross_entropy(model.main, batch["target"], ignore_index=255)
                          + F.cross_entropy(model.aux, batch["target"], ignore_index=255))
    assert torch.allclose(out["sup"], expected_sup)
    assert torch.allclose(out["total"], expected_sup + 0.5 * expected_pls)
    # a new iteration draws a new beta
    method.losses(model, batch)
    assert len(draws) == 2 and draws[0] != draws[1]


def test_dmpls_mixed_pseudo_label_follows_beta_and_ignores_the_extra_channel():
    # pixel 0: main says vessel (0.9), aux says background (0.2); pixel 1 the other way round (0.4 / 0.7)
    p_main = torch.tensor([[0.1, 0.6], [0.9, 0.4], [0.0, 0.0]]).view(1, 3, 1, 2)
    p_aux = torch.tensor([[0.8, 0.3], [0.2, 0.7], [0.0, 0.0]]).view(1, 3, 1, 2)
    assert mixed_pseudo_label(p_main, p_aux, 1.0).tolist() == [[[1, 0]]]  # main's label
    assert mixed_pseudo_label(p_main, p_aux, 0.0).tolist() == [[[0, 1]]]  # aux's label
    # beta = 0.5: pixel 0 vessel 0.55 > 0.45, pixel 1 vessel 0.55 > 0.45: neither decoder's label alone
    assert mixed_pseudo_label(p_main, p_aux, 0.5).tolist() == [[[1, 1]]]
    big_extra = torch.cat([p_main[:, :2], torch.full((1, 1, 1, 2), 5.0)], 1)  # channel 2 never wins
    assert mixed_pseudo_label(big_extra, big_extra, 0.5).tolist() == [[[1, 0]]]


def test_dmpls_pseudo_label_is_a_constant_target_for_the_pls_gradient():
    model, batch = DualDecoderToy(), toy_batch(annotated_fraction=0.0)
    torch.manual_seed(5)
    out = DMPLS().losses(model, batch)
    grad_main, grad_aux = torch.autograd.grad(out["pls"], [model.main, model.aux])
    beta = out["beta"].item()
    pm, pa = torch.softmax(model.main, 1), torch.softmax(model.aux, 1)
    constant = mixed_pseudo_label(pm, pa, beta)
    # each decoder is pulled only towards the fixed label, through its own Dice term
    expected_main, = torch.autograd.grad(0.5 * wl.pseudo_label_dice(pm, constant), model.main)
    expected_aux, = torch.autograd.grad(0.5 * wl.pseudo_label_dice(pa, constant), model.aux)
    assert grad_main.abs().sum() > 0 and grad_aux.abs().sum() > 0
    assert torch.allclose(grad_main, expected_main, atol=1e-7)
    assert torch.allclose(grad_aux, expected_aux, atol=1e-7)


def test_dmpls_rejects_a_single_decoder_model():
    with pytest.raises(ValueError, match="unet_cct"):
        DMPLS().losses(LogitsModel(classes=2), toy_batch())


# ---------------------------------------------------------------------- SSCR


def confident(label, classes=C):
    """Logits (B, classes, S, S) that put +8 on channel ``label`` everywhere."""
    logits = torch.zeros(B, classes, S, S)
    logits[:, label] = 8.0
    return logits


def test_sscr_cross_wiring_sends_a_labels_to_b():
    z_a = confident(1).requires_grad_()  # A says vessel everywhere
    z_b = confident(0).requires_grad_()  # B says background everywhere
    scribble = torch.full((B, S, S), 255)
    cross = sscr_terms(z_a, z_b, scribble, pseudo="cross")
    ones, zeros = torch.ones(B, S, S, dtype=torch.long), torch.zeros(B, S, S, dtype=torch.long)
    assert torch.allclose(cross["pseudo_b"], F.cross_entropy(z_b, ones))  # B learns A's "vessel"
    assert torch.allclose(cross["pseudo_a"], F.cross_entropy(z_a, zeros))  # A learns B's "background"
    assert cross["pseudo_b"] > 5
    grad_b, = torch.autograd.grad(cross["pseudo_b"], z_b)
    assert (grad_b[:, 1] < 0).all()  # B is pushed towards vessel
    own = sscr_terms(z_a, z_b, scribble, pseudo="self")
    assert own["pseudo_b"] < 1e-2 and own["pseudo_a"] < 1e-2


def test_sscr_pseudo_labels_are_overwritten_by_scribbles_and_ignore_the_extra_channel():
    z_a = confident(2)  # extra channel largest: the limited argmax must still pick 0/1
    z_a[:, 1] = 4.0
    z_b = confident(0)
    scribble = torch.full((B, S, S), 255)
    scribble[:, 0, :] = 0  # A would say vessel here; the scribble says background
    terms = sscr_terms(z_a, z_b, scribble, pseudo="cross")
    label_from_a = torch.ones(B, S, S, dtype=torch.long)
    label_from_a[:, 0, :] = 0
    assert torch.allclose(terms["pseudo_b"], F.cross_entropy(z_b, label_from_a))


def test_sscr_soft_consistency_has_a_gradient_and_hard_has_none():
    z_a = torch.randn(B, C, S, S, requires_grad=True)
    z_b = torch.randn(B, C, S, S, requires_grad=True)
    scribble = torch.full((B, S, S), 255)
    soft = sscr_terms(z_a, z_b, scribble, consistency="soft")["consistency"]
    expected = F.mse_loss(torch.softmax(z_a[:, :2], 1)[:, 1], torch.softmax(z_b[:, :2], 1)[:, 1])
    assert torch.allclose(soft, expected)
    assert torch.autograd.grad(soft, z_a)[0].abs().sum() > 0
    hard = sscr_terms(z_a, z_b, scribble, consistency="hard")["consistency"]
    assert not hard.requires_grad
    assert hard.item() == pytest.approx(F.mse_loss(z_a[:, :2].argmax(1).float(), z_b[:, :2].argmax(1).float()).item())


def test_sscr_losses_augment_each_branch_separately_and_weight_the_terms():
    net_a, net_b = LogitsModel(seed=1), LogitsModel(seed=2)
    model, batch = DualNet(net_a, net_b), toy_batch()
    torch.manual_seed(3)
    out = SSCR().losses(model, batch)
    x_a, x_b = net_a.seen[-1], net_b.seen[-1]
    assert not torch.equal(x_a, x_b) and not torch.equal(x_a, batch["image"])
    assert torch.allclose(out["total"], out["sup"] + out["pseudo_a"] + out["pseudo_b"] + 0.5 * out["consistency"])
    out["total"].backward()
    assert net_a.logits.grad.abs().sum() > 0 and net_b.logits.grad.abs().sum() > 0
    SSCR(augment=False).losses(model, batch)
    assert torch.equal(net_a.seen[-1], batch["image"]) and torch.equal(net_b.seen[-1], batch["image"])


def test_sscr_augmentation_is_reproducible_from_the_global_seed():
    batch = toy_batch()
    seen = []
    for _ in range(2):
        net_a, net_b = LogitsModel(), LogitsModel()
        torch.manual_seed(9)
        SSCR().losses(DualNet(net_a, net_b), batch)
        seen.append((net_a.seen[-1], net_b.seen[-1]))
    assert torch.equal(seen[0][0], seen[1][0]) and torch.equal(seen[0][1], seen[1][1])


def test_dual_net_evaluates_with_network_a():
    net_a, net_b = LogitsModel(seed=1), LogitsModel(seed=2)
    model = DualNet(net_a, net_b).eval()
    x = torch.randn(B, T, S, S)
    assert torch.equal(model(x), net_a(x)) and model.input_layout == "frames"


# ---------------------------------------------------------------------- building real models


def test_methods_build_heads_of_their_class_count_with_registered_models():
    params = {"width": 4}
    model = PCE().build_model("fr_unet", params)
    assert model(torch.randn(1, T, 16, 16)).shape == (1, 3, 16, 16)
    assert PCE(num_classes=2).build_model("fr_unet", params)(torch.randn(1, T, 16, 16)).shape[1] == 2
    with pytest.raises(ValueError, match="contradicts"):
        PCE().build_model("fr_unet", {"width": 4, "num_classes": 2})
    dual = SSCR().build_model("fr_unet", params)
    a, b = dual.net_a.state_dict(), dual.net_b.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())  # independent init
    logits_a, logits_b = dual.train()(torch.randn(2, T, 16, 16), torch.randn(2, T, 16, 16))
    assert logits_a.shape == logits_b.shape == (2, 3, 16, 16)


# ---------------------------------------------------------------------- 2-process gloo DDP + resume
# One torchrun launch runs this file as a script (``ddp_worker``): for every method it trains 2 steps,
# resumes to 4 steps, and trains 4 steps uninterrupted; rank 0 writes what it found to a JSON file.

WEAK_METHODS = ("pce", "em", "rloss", "ivm", "dmpls", "sscr")


class ToyFramesNet(nn.Module):
    """frames layout (B, T, H, W) -> logits (B, num_classes, H, W)."""

    input_layout = "frames"

    def __init__(self, num_frames: int = 8, num_classes: int = 2):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(num_frames, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, num_classes, 1))

    def forward(self, x):
        return self.body(x)


class ToyDualDecoderNet(nn.Module):
    """unet_cct's contract: (main, aux) in training (aux sees channel-dropped features), main in eval."""

    input_layout = "frames"

    def __init__(self, num_frames: int = 8, num_classes: int = 2):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(num_frames, 4, 3, padding=1), nn.ReLU())
        self.main = nn.Conv2d(4, num_classes, 1)
        self.aux = nn.Conv2d(4, num_classes, 1)

    def forward(self, x):
        features = self.encoder(x)
        if not self.training:
            return self.main(features)
        return self.main(features), self.aux(F.dropout2d(features, 0.5))


STREAM_STARTS: list[int] = []  # the steps at which the trainer (re)built its data stream


def scribble_stream(cfg, sources, *, micro_batch, seed, step):
    """Deterministic per (seed, rank, step): vessels bright in frame 3, ~10 % of pixels scribbled."""
    from dias_dist import dist
    from dias_dist.data.loader import derived_seed

    STREAM_STARTS.append(step)
    gen = torch.Generator().manual_seed(derived_seed(seed, dist.rank(), step) % 2**31)
    size = cfg.patch_size_px
    while True:
        label = (torch.rand(micro_batch, size, size, generator=gen) > 0.7).long()
        image = torch.randn(micro_batch, 8, size, size, generator=gen) * 0.3
        image[:, 3] += label * 2.0
        target = torch.where(torch.rand(micro_batch, size, size, generator=gen) < 0.1, label, 255)
        yield {"image": image, "target": target, "is_pseudo": torch.zeros(micro_batch, dtype=torch.bool)}


def ddp_worker(out_dir: str) -> None:
    import json
    from pathlib import Path

    from dias_dist import dist, trainer
    from dias_dist.data import loader
    from dias_dist.config import load_config
    from dias_dist.methods import build_method
    from dias_dist.models import MODELS

    MODELS["weak_toy"] = ToyFramesNet
    MODELS["weak_toy_dual"] = ToyDualDecoderNet
    loader.train_stream = scribble_stream
    loader.default_sources = lambda cfg: []
    root = Path(__file__).resolve().parents[1]
    found = {}
    for name in WEAK_METHODS:
        model_name = "weak_toy_dual" if name == "dmpls" else "weak_toy"

        def run(run_name, steps, resume="never"):
            cfg = load_config(root / "configs" / "debug.yaml", [
                f"method.name={name}", "method.params={}", f"model.name={model_name}", "model.params={}",
                "data.target=scribble_rdfa", "data.patch_size_px=16", f"train.run_dir={out_dir}",
                f"train.run_name={name}-{run_name}", f"train.max_steps={steps}", "train.checkpoint_every_steps=2",
                "train.epochs=10", "train.steps_per_epoch=10", "train.batch_size=4", f"train.resume={resume}",
                "eval.test_split=", "eval.val_every_epochs=1000", "optim.lr=0.01"])
            result = trainer.run(cfg)
            return cfg, result

        run("resumed", 2)
        STREAM_STARTS.clear()
        cfg, resumed = run("resumed", 4, resume="auto")
        resumed_from = STREAM_STARTS[0]
        _, straight = run("straight", 4)
        if dist.is_main():
            def weights(tag):
                ckpt = torch.load(Path(out_dir) / f"{name}-{tag}" / "checkpoints" / "final.pt", weights_only=False)
                return ckpt["model"], ckpt["step"]

            (w_resumed, step_resumed), (w_straight, _) = weights("resumed"), weights("straight")
            torch.manual_seed(cfg.train.seed)  # the trainer's initialisation
            init = build_method(name).build_model(model_name, {}).state_dict()
            found[name] = {
                "world_size": dist.world_size(),
                "step_resumed": step_resumed, "resumed_from": resumed_from, "steps": [resumed["step"], straight["step"]],
                "max_diff_resumed_vs_straight": max((w_resumed[k] - w_straight[k]).abs().max().item() for k in w_straight),
                "keys": sorted(w_straight),
                "moved": {k: (w_straight[k] - init[k]).abs().max().item() for k in init},
                "logged": sorted(json.loads((Path(out_dir) / f"{name}-straight" / "metrics.jsonl")
                                            .read_text().splitlines()[0])),
            }
    if dist.is_main():
        (Path(out_dir) / "weak_ddp.json").write_text(json.dumps(found))
    dist.teardown()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    out_dir = tmp_path_factory.mktemp("weak_ddp")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", __file__, str(out_dir)],
                          env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads((out_dir / "weak_ddp.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", WEAK_METHODS)
def test_every_method_trains_under_two_process_ddp_and_resumes_exactly(ddp_results, name):
    found = ddp_results[name]
    assert found["world_size"] == 2
    assert found["steps"] == [4, 4] and found["step_resumed"] == 4
    assert found["resumed_from"] == 2  # the second run really continued from the step-2 checkpoint
    assert found["max_diff_resumed_vs_straight"] == 0.0  # resumed run == uninterrupted run
    assert all(v > 0 for v in found["moved"].values()), found["moved"]  # every weight trained
    assert "loss_total" in found["logged"] and "loss_beta" not in found["logged"]
    assert ("beta" in found["logged"]) == (name == "dmpls")  # a statistic, logged under its own name
    if name == "sscr":  # both networks live in one module, one process group, one checkpoint
        assert any(k.startswith("net_a.") for k in found["keys"]) and any(k.startswith("net_b.") for k in found["keys"])


if __name__ == "__main__":
    import sys

    ddp_worker(sys.argv[1])
