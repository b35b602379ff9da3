"""Randomness keyed by (seed, sample index), and the MaskedLM / CausalLM objectives checked
against their definitions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pretrain_trainer import rng
from pretrain_trainer.data.text import TextSample
from pretrain_trainer.models.core import attention_mask
from pretrain_trainer.models.gpt import GPT, GPTConfig
from pretrain_trainer.objectives.causal_lm import CausalLanguageModeling
from pretrain_trainer.objectives.masked_lm import MaskedLanguageModeling, mask_tokens
from pretrain_trainer.tokenizer import SpecialIds

SPECIAL = SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4, eos=5, sentinels=tuple(range(6, 106)))
VOCAB = 1000


def test_draws_depend_on_the_sample_index_not_on_the_batch() -> None:
    together = rng.uniform(7, torch.tensor([10, 11, 12]), 64, stream=1)
    alone = rng.uniform(7, torch.tensor([11]), 64, stream=1)
    assert torch.equal(together[1], alone[0])
    assert not torch.equal(together[0], together[1])
    assert not torch.equal(rng.uniform(8, torch.tensor([11]), 64, stream=1), alone)
    big = rng.uniform(1, torch.arange(2000), 100, stream=3)
    assert big.min() >= 0
    assert big.max() < 1
    assert abs(big.mean().item() - 0.5) < 0.01


def ordinary_tokens(rows: int, length: int) -> torch.Tensor:
    return torch.randint(200, VOCAB, (rows, length), generator=torch.Generator().manual_seed(0))


def test_masking_statistics_follow_80_10_10() -> None:
    tokens = ordinary_tokens(512, 128)
    tokens[:, -8:] = SPECIAL.pad
    tokens[:, 0] = SPECIAL.cls
    masking = mask_tokens(tokens, torch.arange(512), 1234, 0.15, SPECIAL, VOCAB)
    eligible = tokens >= 200
    chosen = masking.chosen
    assert not chosen[~eligible].any()  # special tokens and padding are never chosen
    rate = chosen.sum().item() / eligible.sum().item()
    assert abs(rate - 0.15) < 0.005
    masked = (masking.tokens == SPECIAL.mask) & chosen
    kept = (masking.tokens == tokens) & chosen
    randomised = chosen & ~masked & ~kept
    total = chosen.sum().item()
    assert abs(masked.sum().item() / total - 0.8) < 0.01
    assert abs(kept.sum().item() / total - 0.1) < 0.01 + 1 / VOCAB  # a random draw can repeat
    assert abs(randomised.sum().item() / total - 0.1) < 0.01
    assert torch.equal(masking.tokens[~chosen], tokens[~chosen])
    assert torch.equal(masking.labels[chosen], tokens[chosen])
    assert (masking.labels[~chosen] == -100).all()


def test_masking_matches_a_reference_of_the_procedure() -> None:
    """A token-by-token reading of BERT's procedure, fed the same draws, agrees exactly."""
    tokens = ordinary_tokens(4, 32)
    tokens[0, :3] = torch.tensor([SPECIAL.cls, SPECIAL.sep, SPECIAL.eos])
    indices = torch.tensor([3, 1, 4, 1_000_000])
    masking = mask_tokens(tokens, indices, 42, 0.3, SPECIAL, VOCAB)
    choose = rng.uniform(42, indices, 32, 1)
    replace = rng.uniform(42, indices, 32, 2)
    random_tokens = rng.integers(42, indices, 32, 3, VOCAB)
    for row in range(4):
        for position in range(32):
            token = int(tokens[row, position])
            expected_input, expected_label = token, -100
            if token not in SPECIAL.all and choose[row, position] < 0.3:
                expected_label = token
                if replace[row, position] < 0.8:
                    expected_input = SPECIAL.mask
                elif replace[row, position] < 0.9:
                    expected_input = int(random_tokens[row, position])
            assert int(masking.tokens[row, position]) == expected_input
            assert int(masking.labels[row, position]) == expected_label


def test_a_sample_gets_the_same_masks_in_any_batch() -> None:
    objective = MaskedLanguageModeling(9, 0.15, SPECIAL, VOCAB)
    rows = ordinary_tokens(3, 64)
    samples = [TextSample(row, torch.zeros(64, dtype=torch.long)) for row in rows]
    batch = objective.prepare(samples, [100, 101, 102])
    alone = objective.prepare(samples[2:], [102])
    assert torch.equal(batch["input_ids"][2], alone["input_ids"][0])
    assert torch.equal(batch["labels"][2], alone["labels"][0])


def test_mlm_loss_is_taken_on_chosen_positions_only() -> None:
    class Echo(torch.nn.Module):
        """A stand-in model whose logits are a fixed function of the input ids."""

        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Embedding(VOCAB, 8)
            self.head = torch.nn.Linear(8, VOCAB)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            hidden: torch.Tensor = self.table(ids)
            return hidden

        def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
            logits: torch.Tensor = self.head(hidden)
            return logits

    model = Echo()
    objective = MaskedLanguageModeling(5, 0.15, SPECIAL, VOCAB)
    samples = [TextSample(row, torch.zeros(64, dtype=torch.long)) for row in ordinary_tokens(4, 64)]
    batch = objective.prepare(samples, [0, 1, 2, 3])
    total = objective.loss(model, batch)["loss"]
    logits = model.mlm_logits(model(batch["input_ids"]))
    reference = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="sum")
    assert objective.counts([batch]) == {"target_count": float((batch["labels"] != -100).sum())}
    torch.testing.assert_close(total, reference)


def test_causal_targets_never_cross_a_document_boundary() -> None:
    tokens = torch.arange(10, 18)
    owners = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2])
    batch = CausalLanguageModeling().prepare([TextSample(tokens, owners)], [0])
    # input i predicts token i+1; positions 2->3 and 6->7 open a new document
    assert batch["labels"].tolist() == [[11, 12, -100, 14, 15, 16, -100]]
    assert int(batch["target_count"]) == 5


def test_packed_documents_do_not_attend_to_each_other() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, hidden_size=32, layers=2, heads=2,
                          intermediate_size=64, max_positions=16)).eval()  # fmt: skip
    owners = torch.tensor([[0, 0, 0, 1, 1, 1]])
    first = torch.tensor([[5, 6, 7, 8, 9, 10]])
    second = torch.tensor([[40, 41, 42, 8, 9, 10]])  # another first document, same second one
    with torch.no_grad():
        a = model(first, documents=owners)
        b = model(second, documents=owners)
    # Positions differ (learned absolute), but the second document never sees the first.
    torch.testing.assert_close(a[0, 3:], b[0, 3:])
    assert not torch.allclose(a[0, :3], b[0, :3])
    mask = attention_mask(documents=owners, causal=True)
    assert mask is not None
    assert not mask[0, 0, 3, 2]
    assert mask[0, 0, 4, 3]
    assert not mask[0, 0, 3, 4]
