"""Registry-wide model checks (shape, no final activation, layout/length errors) and the
parameter-count table of the 2D and VSS-Net models (docs/REFERENCE.md §3-4)."""
import pytest
import torch

from dias_dist.models import MODELS, build_model, count_parameters, input_layout
from model_cases import (
    REFERENCE_PARAMS, SMALL_SIZE_PX, build_small, check_logits, check_no_final_activation, full_size_parameter_count,
    make_input, small_size_px, wrong_inputs,
)

MY_MODELS = ["vss_net", "fr_unet", "unet", "res_unet", "unet_nested", "att_unet", "cs2_net", "maa_net"]
# Res-UNet (and MAA-Net) implement the intended network where the reference has bugs (residual
# sum discarded; Res-UNet's head on the tensor before the last decoder block): that removes no
# layer, so their counts equal the reference exactly, like every other model's.


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shape_and_raw_logits(name):
    model = build_small(name)
    size_px = small_size_px(name)
    x = make_input(model, batch=2, size_px=size_px)
    with torch.no_grad():
        out = model(x)
    check_logits(out, batch=2, size_px=size_px)
    check_no_final_activation(model, x)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_wrong_layout_or_length_is_value_error(name):
    model = build_small(name)
    assert input_layout(model) in ("frames", "sequence")
    for bad in wrong_inputs(model, size_px=small_size_px(name)):
        with pytest.raises(ValueError) as err:
            model(bad)
        message = str(err.value)
        assert name in message or type(model).__name__ in message, message  # names the model
        assert str(tuple(bad.shape)) in message, message  # and the shape it got


@pytest.mark.parametrize("name", MY_MODELS)
def test_full_size_parameter_count(name):
    count = full_size_parameter_count(name)
    assert count == REFERENCE_PARAMS[name], (name, count, REFERENCE_PARAMS[name])


def test_final_activation_check_can_fail():
    class Probabilities(torch.nn.Module):
        input_layout = "frames"

        def forward(self, x):
            return torch.sigmoid(x[:, :2])

    with pytest.raises(AssertionError, match="final activation"):
        check_no_final_activation(Probabilities(), torch.randn(1, 8, 4, 4))


def test_vss_net_module_counts():
    with torch.device("meta"):
        model = build_model("vss_net")
    sfem = [model.inc, model.en1, model.en2, model.en3, model.en4]
    assert [count_parameters(m) for m in sfem] == [18_496, 129_248, 532_928, 2_130_816, 8_521_472]
    assert sum(count_parameters(m) for m in sfem) == 11_332_960
    assert count_parameters(model.decoder) == 7_182_358
    assert count_parameters(model) == 18_515_318


def test_dead_reference_layers_are_frozen_and_get_no_gradient():
    model = build_small("vss_net").train()
    out = model(make_input(model, batch=2))
    out.square().mean().backward()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen, "the reference's unused layers should be present (parameter count) and frozen"
    assert all("fuse" in n for n in frozen)
    missing_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing_grad == []


@pytest.mark.parametrize("frames", ["all", "first", "last", "first_last", "mean", "min"])
def test_vss_net_frame_selection(frames):
    model = build_small("vss_net", frames=frames)
    x = make_input(model, batch=1)
    with torch.no_grad():
        out = model(x)
        check_logits(out, batch=1)
        # frames that are not selected must not change the output
        x_changed = x.clone()
        if frames in ("first", "first_last"):
            x_changed[:, :, 3] += 5.0
        elif frames == "last":
            x_changed[:, :, 0] += 5.0
        else:
            x_changed[:, :, 3] += 5.0
        changed = model(x_changed)
    if frames in ("first", "first_last", "last"):
        torch.testing.assert_close(changed, out)
    else:
        assert not torch.allclose(changed, out)


def test_bad_options_are_value_errors():
    with pytest.raises(ValueError, match="frames option 'middle'"):
        build_model("vss_net", frames="middle")
    with pytest.raises(ValueError, match="gru_impl"):
        build_model("vss_net", gru_impl="cuda")
    model = build_small("fr_unet")
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.randn(1, 8, SMALL_SIZE_PX + 4, SMALL_SIZE_PX))


@pytest.mark.parametrize("name", MY_MODELS)
def test_full_config_builds_the_model(name):
    from pathlib import Path

    from dias_dist.config import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / "full" / f"{name}.yaml"
    cfg = load_config(path)
    assert cfg.model.name == name
    with torch.device("meta"):
        model = build_model(cfg.model.name, **cfg.model.params)
    assert count_parameters(model) == full_size_parameter_count(name)


def test_dias_models_lists_every_model(capsys):
    from dias_dist.cli import main

    assert main(["models"]) == 0
    header, *lines = capsys.readouterr().out.strip().splitlines()
    assert header.split() == ["model", "layout", "parameters"]
    table = {line.split()[0]: line.split()[1:] for line in lines}
    assert sorted(table) == sorted(MODELS)
    assert table["vss_net"] == ["sequence", "18515318"]
    assert table["fr_unet"] == ["frames", "7378774"]


def test_all_my_models_are_registered():
    assert set(MY_MODELS) <= set(MODELS)


def test_res_unet_is_the_intended_network():
    """Head on the last decoder block's output (the reference applies it one block early) and
    residual blocks that add their input (the reference discards the sum)."""
    model = build_small("res_unet")
    seen = {}
    model.decoders[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("last_decoder", o))
    model.head.register_forward_hook(lambda m, i, o: seen.__setitem__("head_input", i[0]))
    block = model.encoders[1]
    block.conv.register_forward_hook(lambda m, i, o: seen.__setitem__("body", o))
    block.register_forward_hook(lambda m, i, o: seen.__setitem__("block", (i[0], o)))
    with torch.no_grad():
        model(make_input(model, batch=1))
    assert seen["head_input"] is seen["last_decoder"]
    block_input, block_output = seen["block"]
    torch.testing.assert_close(block_output, torch.nn.functional.leaky_relu(seen["body"] + block_input, 0.1))


def test_command_line_version_help_and_entry_points(capsys):
    """`dias --version`, an example in every command's help, and the training entry point that
    accepts the DeepSpeed launcher's --local_rank."""
    from dias_dist import __version__, cli, train

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"dias {__version__}"
    _, commands = cli.build_parser()
    assert sorted(commands) == sorted(cli.COMMANDS)
    for name, parser in commands.items():
        text = parser.format_help()
        assert "example: dias " + name in text and "``" not in text and "`dias" not in text, name
    assert cli.main(["no-such-command"]) == 2
    with pytest.raises(SystemExit):
        cli.main(["train"])
    assert "required: config\n" in capsys.readouterr().err  # overrides are optional
    assert train.main(["/no/such.yaml", "--local_rank=0", "--dry-run"]) == 2  # parsed; the config is the error
    assert "config file /no/such.yaml does not exist" in capsys.readouterr().err
