"""SpanCorruption, ReplacedTokenDetection, MaskedImage, Contrastive and ImageText against their
definitions, and the published shapes of the T5, ViT and CLIP presets."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain_operator.api import PretrainJobSpec
from pretrain_trainer import rng
from pretrain_trainer.build import build_model, build_objective
from pretrain_trainer.data.images import ImageSample, ImageTextSample
from pretrain_trainer.data.text import TextSample
from pretrain_trainer.models.clip import CLIP
from pretrain_trainer.models.core import count_parameters
from pretrain_trainer.models.vit import ViT
from pretrain_trainer.objectives.contrastive import augment, nt_xent
from pretrain_trainer.objectives.image_text import ImageTextContrastive
from pretrain_trainer.objectives.masked_image import MaskedImageModeling, visible_patches
from pretrain_trainer.objectives.replaced_token import ReplacedTokenDetection
from pretrain_trainer.objectives.span_corruption import SpanCorruption, noise_mask, span_counts
from pretrain_trainer.tokenizer import SpecialIds

SPECIAL = SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4, eos=5, sentinels=tuple(range(6, 106)))


def spec(objective: str, family: str, size: str = "tiny", **overrides: int) -> PretrainJobSpec:
    return PretrainJobSpec.model_validate({
        "objective": {"type": objective}, "model": {"family": family, "size": size,
                                                    "overrides": overrides},
        "data": {"sources": [{"uri": "file:///x"}], "sequenceLength": 64},
        "training": {"maxSteps": 1},
    })  # fmt: skip


def test_span_noise_has_the_density_and_mean_span_length() -> None:
    noise, spans = span_counts(512, 0.15, 3.0)
    assert (noise, spans) == (77, 26)
    lengths = []
    for index in range(50):
        mask = noise_mask(512, 0.15, 3.0, rng.sample_generator(1, index, 41))
        assert int(mask.sum()) == noise
        assert not mask[0]  # non-noise first
        runs = torch.diff(torch.cat([torch.tensor([0]), mask.int(), torch.tensor([0])]))
        assert int((runs == 1).sum()) == spans
        lengths.append(noise / spans)
    assert abs(sum(lengths) / len(lengths) - 3.0) < 0.05


def test_span_corruption_input_and_target_rebuild_the_sequence() -> None:
    objective = SpanCorruption(3, 0.15, 3.0, SPECIAL, 64)
    tokens = torch.arange(200, 264)
    inputs, target = objective.corrupt(tokens, index=9)
    assert target[-1] == SPECIAL.eos
    # Replacing each sentinel of the input by what follows it in the target gives the original.
    pieces: dict[int, list[int]] = {}
    current = None
    for token in target[:-1].tolist():
        if token in SPECIAL.sentinels:
            current = token
            pieces[current] = []
        else:
            assert current is not None
            pieces[current].append(token)
    rebuilt = [t for token in inputs.tolist()
               for t in (pieces.get(token, [token]))]  # fmt: skip
    assert rebuilt == tokens.tolist()
    noise, spans = span_counts(64, 0.15, 3.0)
    assert len(inputs) == 64 - noise + spans
    assert len(target) == noise + spans + 1


def test_replaced_token_detection_masks_with_mask_and_weights_terms() -> None:
    objective = ReplacedTokenDetection(4, 0.15, 50.0, SPECIAL, 300)
    rows = torch.randint(200, 300, (8, 64), generator=torch.Generator().manual_seed(1))
    batch = objective.prepare([TextSample(r, torch.zeros(64, dtype=torch.long)) for r in rows],
                              list(range(8)))  # fmt: skip
    chosen = batch["chosen"]
    assert (batch["input_ids"][chosen] == SPECIAL.mask).all()
    assert torch.equal(batch["input_ids"][~chosen], batch["original"][~chosen])
    assert batch["gumbel"].shape == (int(chosen.sum()), 300)
    assert objective.terms == {"generator": (1.0, "target_count"),
                               "discriminator": (50.0, "token_count")}  # fmt: skip
    model = build_model(spec("ReplacedTokenDetection", "electra"), vocab_size=300)
    sums = objective.loss(model, batch)
    counts = objective.counts([batch])
    total = objective.combine(sums, counts)
    expected = (
        sums["generator"] / counts["target_count"]
        + 50 * sums["discriminator"] / counts["token_count"]
    )
    torch.testing.assert_close(total, expected)


def test_mae_keeps_a_quarter_of_the_patches_and_scores_only_the_masked() -> None:
    keep = visible_patches(1, torch.arange(16), 64, 0.75)
    assert keep.shape == (16, 16)
    assert all(len(set(row.tolist())) == 16 for row in keep)
    assert not torch.equal(keep[0], keep[1])  # each image its own mask
    objective = MaskedImageModeling(1, 0.75, 64, 4)
    images = [ImageSample(torch.rand(3, 32, 32), 0) for _ in range(2)]
    batch = objective.prepare(images, [0, 1])
    assert int(batch["target_count"]) == 2 * 48

    class Oracle(torch.nn.Module):
        """Predicts the normalised pixels of visible patches exactly and zeros elsewhere."""

        def forward(self, pixels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
            from pretrain_trainer.models.vit import patchify

            target = patchify(pixels, 4)
            target = (target - target.mean(-1, keepdim=True)) / (
                target.var(-1, keepdim=True) + 1e-6
            ).sqrt()
            prediction = torch.zeros_like(target)
            where = keep.unsqueeze(-1).expand(-1, -1, 48)
            prediction.scatter_(1, where, torch.gather(target, 1, where))
            return prediction

    # Perfect on visible patches changes nothing: the loss counts masked patches only (~1 each).
    loss = objective.loss(Oracle(), batch)["loss"] / 96
    assert 0.9 < float(loss) < 1.1


def test_nt_xent_rewards_matching_views_and_is_log_2n_minus_1_when_blind() -> None:
    z = torch.randn(8, 16)
    aligned = nt_xent(torch.cat([z, z]), temperature=0.1) / 16
    assert float(aligned) < 0.1
    blind = nt_xent(torch.ones(16, 4), temperature=0.5) / 16
    assert math.isclose(float(blind), math.log(15), rel_tol=1e-5)


def test_augmented_views_are_reproducible_and_differ() -> None:
    image = torch.rand(3, 32, 32)
    one = augment(image, rng.sample_generator(1, 5, 21))
    again = augment(image, rng.sample_generator(1, 5, 21))
    other = augment(image, rng.sample_generator(1, 5, 22))
    assert torch.equal(one, again)
    assert not torch.equal(one, other)
    assert one.shape == image.shape


def test_clip_loss_is_symmetric_and_temperature_is_learned() -> None:
    model = build_model(spec("ImageText", "clip", imageSize=32, patchSize=8), vocab_size=50)
    samples = [ImageTextSample(torch.rand(3, 32, 32), torch.randint(6, 50, (64,)), 10)
               for _ in range(4)]  # fmt: skip
    batch = ImageTextContrastive().prepare(samples, [0, 1, 2, 3])
    loss = ImageTextContrastive().loss(model, batch)["loss"] / 4
    assert abs(loss.item() - math.log(4)) < 0.5  # untrained: about chance
    loss.backward()
    assert model.logit_scale.grad is not None
    assert isinstance(model, CLIP)
    assert math.isclose(model.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)


def test_vit_base_has_the_published_shape() -> None:
    model = build_model(spec("MaskedImage", "vit", "base"), vocab_size=0)
    encoder = model.encoder
    assert isinstance(encoder, ViT)
    assert (encoder.config.patches, encoder.config.hidden_size, encoder.config.layers) == (
        196,
        768,
        12,
    )
    assert count_parameters(encoder) == 85_798_656  # ViT-B/16 without a classifier head


def test_clip_base_has_the_published_parameter_count() -> None:
    base = spec("ImageText", "clip", "base")
    base = base.model_copy(update={"data": base.data.model_copy(update={"sequence_length": 77})})
    model = build_model(base, vocab_size=49408)
    assert count_parameters(model) == 151_277_313  # CLIP ViT-B/32


def samples_for(family: str) -> list[object]:
    if family in {"electra", "t5"}:
        return [TextSample(torch.randint(106, 128, (64,)), torch.zeros(64, dtype=torch.long))
                for _ in range(2)]  # fmt: skip
    if family == "clip":
        return [ImageTextSample(torch.rand(3, 32, 32), torch.randint(106, 128, (64,)), 12)
                for _ in range(2)]  # fmt: skip
    return [ImageSample(torch.rand(3, 32, 32), 0) for _ in range(2)]


FAMILIES = [("electra", "ReplacedTokenDetection"), ("t5", "SpanCorruption"),
            ("vit", "MaskedImage"), ("vit", "Contrastive"), ("clip", "ImageText")]  # fmt: skip


@pytest.mark.parametrize("size", ["tiny", "mini", "small", "base"])
@pytest.mark.parametrize(("family", "objective"), FAMILIES)
def test_every_family_and_preset_trains_through_its_objective(
    family: str, objective: str, size: str
) -> None:
    job = spec(objective, family, size, imageSize=32, patchSize=8)
    model = build_model(job, vocab_size=128)
    loss_function = build_objective(job, SPECIAL, 128)
    batch = loss_function.prepare(samples_for(family), [0, 1])
    loss = loss_function.combine(loss_function.loss(model, batch), loss_function.counts([batch]))
    assert torch.isfinite(loss)
    loss.backward()
    untouched = [n for n, p in model.named_parameters() if p.grad is None]
    assert untouched == []
