"""Agreement between a candidate and a reference on the same windows.

KL(reference ‖ candidate) averaged per token, and top-1 agreement (the fraction of positions
where both pick the same next token). For small changes (8-bit weights) these move long
before perplexity does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AgreementResult:
    kl: float            # mean KL(ref ‖ cand) per token, nats
    top1: float          # fraction of positions with the same argmax
    n_tokens: int


def kl_per_token(ref_logits: torch.Tensor, cand_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(ref) ‖ softmax(cand)) for each row of two [T, V] logit tensors.

    >>> kl_per_token(torch.zeros(2, 4), torch.zeros(2, 4)).tolist()
    [0.0, 0.0]
    """
    ref_logp = F.log_softmax(ref_logits.float(), dim=-1)
    cand_logp = F.log_softmax(cand_logits.float(), dim=-1)
    return (ref_logp.exp() * (ref_logp - cand_logp)).sum(-1).clamp_min(0.0)


class AgreementAccumulator:
    def __init__(self):
        self.kl_sum, self.same, self.n = 0.0, 0, 0

    def add(self, ref_logits: torch.Tensor, cand_logits: torch.Tensor) -> None:
        self.kl_sum += kl_per_token(ref_logits, cand_logits).sum().item()
        self.same += (ref_logits.argmax(-1) == cand_logits.argmax(-1)).sum().item()
        self.n += ref_logits.shape[0]

    def result(self) -> AgreementResult:
        return AgreementResult(kl=self.kl_sum / max(self.n, 1), top1=self.same / max(self.n, 1), n_tokens=self.n)
