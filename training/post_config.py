"""The `post` config section: supervised fine-tuning (`crucible sft`) and preference optimization (`crucible dpo`).

Steps, batch sizes, learning rate and layout are the usual `train.*` and `parallel.*` keys; the model is the
base checkpoint's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.ground.schema import Section

Role = Literal["system", "user", "assistant", "tool"]
LEARNED_ROLES: tuple[Role, ...] = ("assistant",)  # post.sft.learn's default


class SFTConfig(Section):
    """Supervised fine-tuning on chat JSONL (`crucible sft`); steps, batch and rate are `train.*`'s."""

    learn: list[Role] = Field(
        default_factory=lambda: list(LEARNED_ROLES),
        description="Roles whose content (and end-of-turn token) the loss counts; the other tokens are context only.",
    )
    val_fraction: float = Field(
        0.05, ge=0, lt=1, description="Conversations held out for val_loss, by a hash of the record."
    )
    seed: int = Field(0, description="Seeds the order conversations are packed into rows in.")


class DPOConfig(Section):
    """Direct preference optimization on preference JSONL (`crucible dpo`); steps, batch and rate are `train.*`'s."""

    beta: float = Field(
        0.1,
        gt=0,
        description="DPO's beta: how far the policy may move from the reference (the "
        "starting checkpoint); larger keeps it closer.",
    )
    val_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Preference pairs held out for validation (val_loss "
        "and val_rewards/accuracy), by a hash of the record.",
    )
    seed: int = Field(0, description="Seeds the order of the pairs in the rows.")


class PostConfig(Section):
    """Post-training: `sft` and `dpo`, from a checkpoint and a JSONL file."""

    sft: SFTConfig = Field(default_factory=SFTConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
