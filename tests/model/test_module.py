import pytest
import torch

from detdiffusion.cli import main
from detdiffusion.heads import InstanceHead
from detdiffusion.model.module import DetDiffusionModule
from tests.model.tiny import CONF, tiny_batch, tiny_module


def test_fit_through_the_cli(tmp_path) -> None:
    main(
        [
            "fit",
            "--config",
            str(CONF),
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1",
            "--trainer.val_check_interval=2",
        ]
    )


def test_training_step_logs_both_losses_and_trains_the_head() -> None:
    module = tiny_module(head=InstanceHead(dim=16), num_classes=9)
    assert module.vae.training is False and not any(p.requires_grad for p in module.vae.parameters())
    batch = tiny_batch(module)
    losses = module._losses(batch)
    assert set(losses) >= {"loss", "loss_ldm", "loss_pa"}
    torch.testing.assert_close(losses["loss"], losses["loss_ldm"] + 0.01 * losses["loss_pa"])
    losses["loss"].backward()
    assert all(p.grad is not None for p in module.head.parameters())
    assert module.unet.conv_in.weight.grad is not None
    assert module.text_encoder.get_input_embeddings().weight.grad is not None


def test_text_encoder_is_extended_for_the_grid() -> None:
    module = tiny_module()
    rows = module.text_encoder.get_input_embeddings().weight.shape[0]
    assert rows == len(module.layout_tokenizer.tokenizer) == 49408 + 64 + 3
    ids = torch.from_numpy(module.layout_tokenizer.encode_text("")).repeat(2, 2)  # two windows each
    assert module.encode_prompts(ids).shape == (2, 154, 32)


def test_nan_loss_names_the_term_and_step() -> None:
    module = tiny_module()
    losses = {"loss_ldm": torch.tensor(float("nan")), "timesteps": torch.tensor([3, 999])}
    with pytest.raises(
        FloatingPointError, match=r"train/loss_ldm is nan at global step 0 \(timesteps \[3, 999\]\)"
    ):
        module._check_finite(losses, "train")


def test_config_mistakes_name_the_flag(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"--model\.text_encoder"):
        DetDiffusionModule(unet={"sample_size": 8})
    with pytest.raises(FileNotFoundError, match="lacks unet, vae"):
        DetDiffusionModule(pretrained_model_name_or_path=str(tmp_path))


def test_checkpoint_rebuilds_the_configured_head(tmp_path) -> None:
    main(
        [
            "fit",
            "--config",
            str(CONF),
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_checkpointing=true",
            "--trainer.limit_val_batches=0",
        ]
    )
    (ckpt,) = tmp_path.glob("**/*.ckpt")
    module = DetDiffusionModule.load_from_checkpoint(ckpt)
    assert isinstance(module.head, InstanceHead) and module.hparams.num_classes == 9  # 5 shapes + 4 stuff
    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    assert saved.keys() == module.state_dict().keys()
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in saved.items())


@pytest.mark.slow
def test_regional_compile_gives_the_same_losses() -> None:
    eager = tiny_module(head=InstanceHead(dim=8), num_classes=9)
    compiled = tiny_module(head=InstanceHead(dim=8), num_classes=9, compile=True)
    compiled.load_state_dict(eager.state_dict())
    batch = tiny_batch(eager)
    losses = []
    for module in (eager, compiled):
        torch.manual_seed(0)
        out = module._losses(batch)
        out["loss"].backward()
        losses.append(out)
    for name in ("loss_ldm", "loss_pa"):
        torch.testing.assert_close(losses[0][name], losses[1][name], rtol=1e-4, atol=1e-5)
    grads = [m.unet.conv_in.weight.grad for m in (eager, compiled)]
    torch.testing.assert_close(*grads, rtol=1e-3, atol=1e-5)


def test_a_batch_without_objects_trains_the_ldm_loss_alone() -> None:
    module = tiny_module(head=InstanceHead(dim=8), num_classes=9)
    batch = tiny_batch(module)
    empty = torch.from_numpy(module.layout_tokenizer.empty_window)
    batch.update(
        input_ids=empty.repeat(4, 1),
        object_index=torch.full((4, 77), -1),
        labels=batch["labels"][:, :0],
        boxes=batch["boxes"][:, :0],
        object_mask=batch["object_mask"][:, :0],
        masks=batch["masks"][:, :0],
    )
    losses = module._losses(batch)
    assert losses["loss_pa"] == 0 and torch.equal(losses["loss"], losses["loss_ldm"])
    losses["loss"].backward()
    assert module.unet.conv_in.weight.grad.abs().sum() > 0


def test_resuming_from_a_checkpoint_continues_exactly(tmp_path) -> None:
    import json

    def fit(name: str, steps: int, *extra: str) -> dict:
        checkpoint = {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            # Step checkpoints: Lightning replays an epoch-end checkpoint with other batch indices.
            "init_args": {"dirpath": str(tmp_path / name), "save_last": True, "every_n_train_steps": 1},
        }
        main(
            [
                "fit",
                "--config",
                str(CONF),
                f"--trainer.default_root_dir={tmp_path / name}",
                "--trainer.enable_checkpointing=true",
                f"--trainer.callbacks=[{json.dumps(checkpoint)}]",
                "--trainer.limit_val_batches=0",
                f"--trainer.max_steps={steps}",
                "--model.init_args.ema_decay=0.9",
                *extra,
            ]
        )
        return torch.load(tmp_path / name / "last.ckpt", weights_only=True)

    # The first part stops after its first epoch (2 steps) with the run's max_steps unchanged.
    # A constant lr: a cosine schedule's length depends on the run's planned steps.
    straight = fit("straight", 4, "--model.init_args.lr_schedule=constant")
    fit("resumed", 4, "--model.init_args.lr_schedule=constant", "--trainer.max_epochs=1")
    resumed = fit(
        "resumed",
        4,
        "--model.init_args.lr_schedule=constant",
        f"--ckpt_path={tmp_path / 'resumed' / 'last.ckpt'}",
    )
    assert resumed["global_step"] == straight["global_step"] == 4
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=key)
    assert any(k.startswith("ema_unet.") for k in straight["state_dict"])
